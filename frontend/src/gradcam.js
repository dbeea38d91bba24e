/**
 * Grad-CAM on demand in the slide viewer: where in a patch the live model's tumour decision comes
 * from (seed 000 used it to check that the decision rests on the tumour cells).
 *
 * `mountGradcam(viewer, slideInfo)` adds a small panel (bottom left) with a "Grad-CAM" tool
 * button (keyboard C). While the tool is on:
 *   - a click asks for the map of the classifier window under the cursor;
 *   - Shift + drag draws a box and asks for the map over the box (cut into windows server-side).
 * The request goes to POST /api/slides/<id>/gradcam/ ({x, y} or {x, y, width, height}, level-0
 * px); the record is polled at GET …/gradcam/<id>/ until it is done, and its PNG overlay
 * (…/overlay.png) is laid over exactly its region as an OpenSeadragon image, so it follows pan,
 * zoom and rotation. The panel has show/hide, opacity and "Clear". Resolves to a controller
 * {panel, overlays, setActive, toggle, request, setVisible, setOpacity, clear, destroy}.
 */
import { csrfToken, errorMessage } from "./annotate-api.js";

/** Keyboard shortcut that turns the Grad-CAM tool on and off. */
export const GRADCAM_KEY = "c";

/** Opacity of a Grad-CAM overlay when it is first shown. */
export const GRADCAM_OPACITY = 0.7;

/** How often to ask whether a map is done, and for how long at most. */
export const POLL_MS = 600;
export const POLL_LIMIT_MS = 180000;

/** At most this many overlays stay on the slide (the oldest go first). */
export const MAX_OVERLAYS = 12;

/** The Grad-CAM API URL of a slide. */
export function gradcamUrl(slideId) {
  return `/api/slides/${slideId}/gradcam/`;
}

/** A box from two level-0 corners: {x, y, width, height} with integer, non-negative sides. */
export function boxFrom(a, b) {
  const x0 = Math.max(0, Math.round(Math.min(a.x, b.x)));
  const y0 = Math.max(0, Math.round(Math.min(a.y, b.y)));
  const x1 = Math.round(Math.max(a.x, b.x));
  const y1 = Math.round(Math.max(a.y, b.y));
  return { x: x0, y: y0, width: Math.max(1, x1 - x0), height: Math.max(1, y1 - y0) };
}

function baseImage(viewer) {
  return viewer.world.getItemCount() > 0 ? viewer.world.getItemAt(0) : null;
}

/** A JSON request with the CSRF token; a non-2xx answer throws an Error with the server's
 * message and `status`. */
export async function jsonRequest(method, url, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
  const response = await fetch(url, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let parsed = null;
  try {
    parsed = await response.json();
  } catch {
    /* not JSON */
  }
  if (!response.ok) {
    const error = new Error(errorMessage(parsed, response.status));
    error.status = response.status;
    throw error;
  }
  return parsed;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll a record until it is `succeeded` or `failed` (or the limit passes). */
export async function waitForGradcam(record, { pollMs = POLL_MS, limitMs = POLL_LIMIT_MS } = {}) {
  const started = Date.now();
  let current = record;
  while (current.status !== "succeeded" && current.status !== "failed") {
    if (Date.now() - started > limitMs) throw new Error("The Grad-CAM map is taking too long; try again later.");
    await sleep(pollMs);
    current = await jsonRequest("GET", current.url);
  }
  if (current.status === "failed") throw new Error(current.statusReason || "The Grad-CAM map could not be computed.");
  return current;
}

/** Lay a map record's overlay PNG over its region of the base image (`record.region`, level-0
 * px); resolves to the tiled image. Shared by the Grad-CAM tool and the CAM of node images. */
export function addImage(viewer, record, opacity) {
  return new Promise((resolve, reject) => {
    const base = baseImage(viewer);
    const { x, y, width, height } = record.region;
    const rect = base.imageToViewportRectangle(x, y, width, height);
    viewer.addTiledImage({
      tileSource: { type: "image", url: record.overlayUrl, buildPyramid: false },
      index: viewer.world.getItemCount(),
      opacity,
      x: rect.x,
      y: rect.y,
      width: rect.width,
      success: (event) => resolve(event.item),
      error: (event) => reject(new Error(event.message || "could not show the map")),
    });
  });
}

function buildPanel(viewer) {
  const panel = document.createElement("section");
  panel.className = "ns-gradcam-panel";
  panel.setAttribute("aria-label", "Grad-CAM");
  panel.innerHTML = `
    <button type="button" class="ns-gradcam-tool" aria-pressed="false"
      title="Grad-CAM: click a patch (or Shift + drag a box) to see where the model's tumour decision comes from">
      Grad-CAM <kbd>C</kbd></button>
    <div class="ns-gradcam-status" role="status" aria-live="polite"></div>
    <div class="ns-gradcam-controls" hidden>
      <label class="ns-gradcam-row"><input type="checkbox" class="ns-gradcam-show" checked> Show maps</label>
      <label class="ns-gradcam-row">Opacity <input type="range" class="ns-gradcam-opacity" min="0" max="100" step="5"
        value="${Math.round(GRADCAM_OPACITY * 100)}" aria-label="Grad-CAM opacity"></label>
      <button type="button" class="ns-gradcam-clear">Clear</button>
    </div>`;
  viewer.element.appendChild(panel);
  return panel;
}

/** Mount the Grad-CAM tool on an open viewer of slide `info.id` (or the element's data-slide-id). */
export async function mountGradcam(viewer, info = {}) {
  const slideId = viewer.element.dataset.slideId || info.id;
  const panel = buildPanel(viewer);
  const tool = panel.querySelector(".ns-gradcam-tool");
  const status = panel.querySelector(".ns-gradcam-status");
  const controls = panel.querySelector(".ns-gradcam-controls");
  const show = panel.querySelector(".ns-gradcam-show");
  const opacityInput = panel.querySelector(".ns-gradcam-opacity");
  const rubber = document.createElement("div");
  rubber.className = "ns-gradcam-box";
  rubber.hidden = true;
  viewer.element.appendChild(rubber);

  const controller = {
    panel,
    overlays: [],
    active: false,
    visible: true,
    opacity: GRADCAM_OPACITY,
    pending: 0,
  };
  const say = (text, state = "") => {
    status.textContent = text;
    panel.dataset.state = state;
  };

  controller.setActive = (on) => {
    controller.active = Boolean(on);
    tool.setAttribute("aria-pressed", String(controller.active));
    viewer.element.classList.toggle("ns-gradcam-active", controller.active);
    if (controller.active && !controller.pending) say("Click a patch, or Shift + drag a box.");
    else if (!controller.pending && panel.dataset.state !== "error") say("");
  };
  controller.toggle = () => controller.setActive(!controller.active);
  controller.setVisible = (on) => {
    controller.visible = Boolean(on);
    show.checked = controller.visible;
    for (const overlay of controller.overlays) overlay.item.setOpacity(controller.visible ? controller.opacity : 0);
  };
  controller.setOpacity = (value) => {
    controller.opacity = Math.min(1, Math.max(0, value));
    opacityInput.value = String(Math.round(controller.opacity * 100));
    if (controller.visible) for (const overlay of controller.overlays) overlay.item.setOpacity(controller.opacity);
  };
  controller.clear = () => {
    for (const overlay of controller.overlays) viewer.world.removeItem(overlay.item);
    controller.overlays = [];
    controls.hidden = true;
    panel.dataset.gradcams = "";
    say(controller.active ? "Click a patch, or Shift + drag a box." : "");
  };

  /** Ask for the map of `region` ({x, y} or {x, y, width, height}, level-0 px) and show it. */
  controller.request = async (region) => {
    controller.pending += 1;
    say("Computing the Grad-CAM map…", "busy");
    try {
      const record = await waitForGradcam(await jsonRequest("POST", gradcamUrl(slideId), region));
      const existing = controller.overlays.find((overlay) => overlay.record.id === record.id);
      if (!existing) {
        const item = await addImage(viewer, record, controller.visible ? controller.opacity : 0);
        controller.overlays.push({ record, item });
        while (controller.overlays.length > MAX_OVERLAYS) viewer.world.removeItem(controller.overlays.shift().item);
      }
      controls.hidden = false;
      panel.dataset.gradcams = controller.overlays.map((overlay) => overlay.record.id).join(",");
      const p = record.maxProbability;
      say(
        `${record.windows} window${record.windows === 1 ? "" : "s"}, tumour probability up to ${p === null ? "–" : p.toFixed(2)} (${record.modelVersion.name}).`,
        "ready",
      );
      document.dispatchEvent(new CustomEvent("nodescope:gradcam-ready", { detail: { viewer, gradcam: record } }));
      return record;
    } catch (error) {
      say(error.message || String(error), "error");
      throw error;
    } finally {
      controller.pending -= 1;
    }
  };

  const imagePoint = (position) => baseImage(viewer)?.viewerElementToImageCoordinates(position);
  let dragStart = null;
  const onClick = (event) => {
    if (!controller.active || !event.quick || event.shift) return;
    event.preventDefaultAction = true;
    const point = imagePoint(event.position);
    if (!point) return;
    controller.request({ x: Math.round(point.x), y: Math.round(point.y) }).catch(() => {});
  };
  const onPress = (event) => {
    dragStart = controller.active && event.originalEvent?.shiftKey ? event.position : null;
  };
  const onDrag = (event) => {
    if (!dragStart) return;
    event.preventDefaultAction = true; // no panning while a box is drawn
    const a = dragStart;
    const b = event.position;
    Object.assign(rubber.style, {
      left: `${Math.min(a.x, b.x)}px`,
      top: `${Math.min(a.y, b.y)}px`,
      width: `${Math.abs(b.x - a.x)}px`,
      height: `${Math.abs(b.y - a.y)}px`,
    });
    rubber.hidden = false;
  };
  const onRelease = (event) => {
    if (!dragStart) return;
    const a = imagePoint(dragStart);
    const b = imagePoint(event.position);
    dragStart = null;
    rubber.hidden = true;
    if (!a || !b || (Math.abs(a.x - b.x) < 2 && Math.abs(a.y - b.y) < 2)) return;
    controller.request(boxFrom(a, b)).catch(() => {});
  };
  viewer.addHandler("canvas-click", onClick);
  viewer.addHandler("canvas-press", onPress);
  viewer.addHandler("canvas-drag", onDrag);
  viewer.addHandler("canvas-release", onRelease);

  tool.addEventListener("click", () => controller.toggle());
  show.addEventListener("change", () => controller.setVisible(show.checked));
  opacityInput.addEventListener("input", () => controller.setOpacity(Number(opacityInput.value) / 100));
  panel.querySelector(".ns-gradcam-clear").addEventListener("click", () => controller.clear());

  const onKey = (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
      if (!(target.type === "range" || target.type === "checkbox")) return;
    }
    if (event.key && event.key.toLowerCase() === GRADCAM_KEY) {
      controller.toggle();
      event.preventDefault();
    }
  };
  window.addEventListener("keydown", onKey);

  controller.destroy = () => {
    window.removeEventListener("keydown", onKey);
    viewer.removeHandler("canvas-click", onClick);
    viewer.removeHandler("canvas-press", onPress);
    viewer.removeHandler("canvas-drag", onDrag);
    viewer.removeHandler("canvas-release", onRelease);
    controller.clear();
    rubber.remove();
    panel.remove();
  };
  panel.dataset.state = "";
  if (viewer.nodescope) viewer.nodescope.gradcam = controller;
  return controller;
}
