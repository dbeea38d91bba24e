/**
 * Class activation maps over a node image (CT, ultrasound, other) in the viewer: where in the
 * whole image the node-image classifier's "metastatic" decision comes from.
 *
 * `mountCam(viewer, info)` adds a small panel (bottom left) to the viewer of a node image (not of a
 * whole slide, which has the patch Grad-CAM tool instead): a "CAM" toggle (keyboard C), a method
 * picker (CAM, global average pooling, or Grad-CAM) and an opacity slider. Turning it on asks
 * POST /api/slides/<id>/cam/ {method} (the newest node-image model), polls the record at its
 * Grad-CAM URL until it is done, and lays its PNG overlay over the whole image as an
 * OpenSeadragon image, so it follows pan, zoom and rotation. Each method's overlay is kept once
 * fetched; switching method shows the other one. Resolves to a controller
 * {panel, overlays, setVisible, toggle, setMethod, setOpacity, destroy}.
 */
import { addImage, jsonRequest, waitForGradcam } from "./gradcam.js";

/** Keyboard shortcut that shows and hides the map. */
export const CAM_KEY = "c";

/** Opacity of the map when it is first shown. */
export const CAM_OPACITY = 0.6;

/** The methods the server knows, with their labels. */
export const CAM_METHODS = [
  ["cam", "CAM (global average pooling)"],
  ["grad-cam", "Grad-CAM"],
];

/** The CAM API URL of a node image. */
export function camUrl(slideId) {
  return `/api/slides/${slideId}/cam/`;
}

function buildPanel(viewer) {
  const panel = document.createElement("section");
  panel.className = "ns-cam-panel";
  panel.setAttribute("aria-label", "Class activation map");
  const options = CAM_METHODS.map(([value, label]) => `<option value="${value}">${label}</option>`).join("");
  panel.innerHTML = `
    <button type="button" class="ns-cam-toggle" aria-pressed="false"
      title="Class activation map: where in the image the classifier's metastatic decision comes from">
      CAM <kbd>C</kbd></button>
    <label class="ns-cam-row">Method <select class="ns-cam-method" aria-label="CAM method">${options}</select></label>
    <label class="ns-cam-row">Opacity <input type="range" class="ns-cam-opacity" min="0" max="100" step="5"
      value="${Math.round(CAM_OPACITY * 100)}" aria-label="CAM opacity"></label>
    <div class="ns-cam-status" role="status" aria-live="polite"></div>`;
  viewer.element.appendChild(panel);
  return panel;
}

/** Mount the CAM panel on an open viewer of a node image (`info.modality` other than "slide"). */
export async function mountCam(viewer, info = {}) {
  if (!info.modality || info.modality === "slide") return null;
  const slideId = viewer.element.dataset.slideId || info.id;
  const panel = buildPanel(viewer);
  const toggle = panel.querySelector(".ns-cam-toggle");
  const methodInput = panel.querySelector(".ns-cam-method");
  const opacityInput = panel.querySelector(".ns-cam-opacity");
  const status = panel.querySelector(".ns-cam-status");
  const controller = {
    panel,
    overlays: {}, // method -> {record, item}
    visible: false,
    method: methodInput.value,
    opacity: CAM_OPACITY,
    request: 0,
  };
  const say = (text, state = "") => {
    status.textContent = text;
    panel.dataset.state = state;
  };
  const apply = () => {
    for (const [method, overlay] of Object.entries(controller.overlays)) {
      overlay.item.setOpacity(controller.visible && method === controller.method ? controller.opacity : 0);
    }
    toggle.setAttribute("aria-pressed", String(controller.visible));
    panel.dataset.method = controller.method;
    const shown = controller.overlays[controller.method];
    panel.dataset.shown = controller.visible && shown ? String(shown.record.id) : "";
  };

  /** Fetch (once) and show the map of the current method. */
  const load = async () => {
    const method = controller.method;
    if (controller.overlays[method]) {
      apply();
      const { record } = controller.overlays[method];
      say(describe(record), "ready");
      return record;
    }
    const ticket = ++controller.request;
    say("Computing the map…", "busy");
    try {
      const record = await waitForGradcam(await jsonRequest("POST", camUrl(slideId), { method }));
      if (!controller.overlays[method]) {
        const item = await addImage(viewer, record, 0);
        controller.overlays[method] = { record, item };
      }
      if (ticket === controller.request) say(describe(record), "ready");
      apply();
      document.dispatchEvent(new CustomEvent("nodescope:cam-ready", { detail: { viewer, cam: record } }));
      return record;
    } catch (error) {
      if (ticket === controller.request) say(error.message || String(error), "error");
      throw error;
    }
  };
  const describe = (record) => {
    const p = record.maxProbability;
    const label = CAM_METHODS.find(([value]) => value === record.method)?.[1] || record.method;
    return `${label}: metastatic ${p === null ? "–" : p.toFixed(2)} (${record.modelVersion.name}).`;
  };

  controller.setVisible = (on) => {
    controller.visible = Boolean(on);
    apply();
    if (controller.visible) return load();
    if (panel.dataset.state !== "error") say("");
    return Promise.resolve(null);
  };
  controller.toggle = () => controller.setVisible(!controller.visible);
  controller.setMethod = (method) => {
    controller.method = method;
    methodInput.value = method;
    apply();
    return controller.visible ? load() : Promise.resolve(null);
  };
  controller.setOpacity = (value) => {
    controller.opacity = Math.min(1, Math.max(0, value));
    opacityInput.value = String(Math.round(controller.opacity * 100));
    apply();
  };

  toggle.addEventListener("click", () => controller.toggle().catch(() => {}));
  methodInput.addEventListener("change", () => controller.setMethod(methodInput.value).catch(() => {}));
  opacityInput.addEventListener("input", () => controller.setOpacity(Number(opacityInput.value) / 100));
  const onKey = (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
      if (!(target.type === "range" || target.type === "checkbox")) return;
    }
    if (event.key && event.key.toLowerCase() === CAM_KEY) {
      controller.toggle().catch(() => {});
      event.preventDefault();
    }
  };
  window.addEventListener("keydown", onKey);
  controller.destroy = () => {
    window.removeEventListener("keydown", onKey);
    for (const overlay of Object.values(controller.overlays)) viewer.world.removeItem(overlay.item);
    controller.overlays = {};
    panel.remove();
  };
  apply();
  panel.dataset.state = "";
  if (viewer.nodescope) viewer.nodescope.cam = controller;
  return controller;
}
