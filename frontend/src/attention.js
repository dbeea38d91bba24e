/**
 * MIL attention overlay in the slide viewer (issue 8): how much weight the case's multiple-instance
 * model gave each patch of the outlined cancer areas, painted over the patches (viridis, brightest
 * = the slide's most-attended patch, transparent where the bag has no patch).
 *
 * Opened from the case page: `?attention=<model version id>` in the viewer's URL mounts a panel
 * (top left) with a "MIL attention" toggle, an opacity slider, "Jump to top patch", the model's
 * name and how many of the case's patches lie on this slide. Without the parameter nothing is
 * mounted (the overlay is computed on request, so it is only asked for when wanted).
 *
 * The tile source comes from GET /api/slides/<id>/mil-attention/?model_version=<id>; its tiles
 * share the slide's z/x/y grid (served by the heat-map tile renderer), so they are added as a
 * second tiled image exactly like the heat map. Resolves to a controller
 * {overlay, item, panel, setVisible, toggle, setOpacity, jumpToTop, destroy}, or null when the
 * page URL names no model.
 */
import { baseImage, fetchJson, fitAround, heatmapTileSource, whenOpen } from "./heatmap.js";

/** Opacity of the overlay when it is first shown. */
export const ATTENTION_OPACITY = 0.6;

/** How many patches "Jump to top patch" fits across the view. */
export const TOP_VIEW_PATCHES = 8;

/** The attention tile-source URL of a slide for a MIL model version. */
export function attentionUrl(slideId, versionId) {
  return `/api/slides/${slideId}/mil-attention/?model_version=${versionId}`;
}

/** `?attention=<id>` of a query string: a positive integer, or null. */
export function attentionParam(search) {
  const raw = new URLSearchParams(search || "").get("attention");
  if (raw === null || !/^\d+$/.test(raw.trim())) return null;
  const value = Number(raw);
  return Number.isSafeInteger(value) && value > 0 ? value : null;
}

function addOverlayImage(viewer, overlay, opacity) {
  return new Promise((resolve, reject) => {
    const bounds = baseImage(viewer).getBounds();
    viewer.addTiledImage({
      tileSource: heatmapTileSource(overlay),
      index: viewer.world.getItemCount(),
      opacity,
      x: bounds.x,
      y: bounds.y,
      width: bounds.width,
      success: (event) => resolve(event.item),
      error: (event) => reject(new Error(event.message || "could not add the attention overlay")),
    });
  });
}

function buildPanel(viewer) {
  const panel = document.createElement("section");
  panel.className = "ns-attention-panel";
  panel.setAttribute("aria-label", "MIL attention");
  panel.innerHTML = `
    <button type="button" class="ns-attention-toggle" aria-pressed="false" disabled
      title="Show the weight the case's MIL model gave each patch">MIL attention</button>
    <div class="ns-attention-status" role="status" aria-live="polite">loading…</div>
    <div class="ns-attention-controls" hidden>
      <label class="ns-attention-row">Opacity <input type="range" class="ns-attention-opacity" min="0" max="100"
        step="5" value="${Math.round(ATTENTION_OPACITY * 100)}" aria-label="Attention opacity"></label>
      <button type="button" class="ns-attention-jump">Jump to top patch</button>
      <div class="ns-attention-legend" aria-hidden="true"><div class="ns-attention-legend-bar"></div>
        <div class="ns-attention-legend-labels"><span>low</span><span>slide's highest</span></div></div>
    </div>`;
  // clicks and drags on the panel must not pan the slide
  for (const type of ["pointerdown", "mousedown", "touchstart", "wheel", "dblclick"]) {
    panel.addEventListener(type, (event) => event.stopPropagation());
  }
  viewer.element.appendChild(panel);
  return panel;
}

/**
 * Mount the attention overlay on an open viewer of slide `info.id` when the page URL (or
 * `options.search`) has `?attention=<model version id>`.
 */
export async function mountAttention(viewer, info = {}, options = {}) {
  const search = options.search ?? (typeof window !== "undefined" ? window.location.search : "");
  const versionId = attentionParam(search);
  if (versionId === null) return null;
  const slideId = viewer.element.dataset.slideId || info.id;
  const panel = buildPanel(viewer);
  const toggle = panel.querySelector(".ns-attention-toggle");
  const status = panel.querySelector(".ns-attention-status");
  const controls = panel.querySelector(".ns-attention-controls");
  const opacityInput = panel.querySelector(".ns-attention-opacity");
  const controller = {
    overlay: null,
    item: null,
    panel,
    visible: false,
    opacity: options.opacity ?? ATTENTION_OPACITY,
    setVisible() {},
    toggle() {},
    setOpacity() {},
    jumpToTop() {},
    destroy() {
      panel.remove();
    },
  };
  viewer.nodescope = viewer.nodescope || {};
  viewer.nodescope.attention = controller;

  let overlay;
  try {
    overlay = await fetchJson(attentionUrl(slideId, versionId));
  } catch (error) {
    status.textContent = error.message || String(error);
    panel.dataset.state = "error";
    return controller;
  }
  controller.overlay = overlay;
  const model = overlay.modelVersion?.name ?? `model ${versionId}`;
  if (!overlay.patches) {
    status.textContent = `No patch of the case's bag lies on this slide (${model}).`;
    panel.dataset.state = "none";
    return controller;
  }
  await new Promise((resolve) => whenOpen(viewer, resolve));
  const item = await addOverlayImage(viewer, overlay, 0);
  controller.item = item;

  controller.setOpacity = (value) => {
    controller.opacity = Math.min(1, Math.max(0, Number(value)));
    opacityInput.value = String(Math.round(controller.opacity * 100));
    if (controller.visible) item.setOpacity(controller.opacity);
    panel.dataset.opacity = controller.opacity.toFixed(2);
  };
  controller.setVisible = (on) => {
    controller.visible = Boolean(on);
    toggle.setAttribute("aria-pressed", String(controller.visible));
    item.setOpacity(controller.visible ? controller.opacity : 0);
    panel.dataset.visible = controller.visible ? "1" : "0";
  };
  controller.toggle = () => controller.setVisible(!controller.visible);
  controller.jumpToTop = (immediately = false) => {
    const top = overlay.top;
    if (top) fitAround(viewer, top.x + top.size / 2, top.y + top.size / 2, top.size * TOP_VIEW_PATCHES, immediately);
  };

  toggle.addEventListener("click", () => controller.toggle());
  opacityInput.addEventListener("input", () => controller.setOpacity(Number(opacityInput.value) / 100));
  panel.querySelector(".ns-attention-jump").addEventListener("click", () => controller.jumpToTop());
  const stops = (overlay.legend || []).map((entry, i, all) => {
    const [r, g, b] = entry.rgba;
    return `rgb(${r} ${g} ${b}) ${((i / Math.max(1, all.length - 1)) * 100).toFixed(1)}%`;
  });
  if (stops.length) {
    panel.querySelector(".ns-attention-legend-bar").style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  }
  const share = overlay.casePatches ? ` of ${overlay.casePatches}` : "";
  status.textContent = `${overlay.patches}${share} patches on this slide; top weight ${overlay.maxWeight.toFixed(3)} (${model}).`;
  toggle.disabled = false;
  controls.hidden = false;
  panel.dataset.state = "ready";
  panel.dataset.version = String(overlay.modelVersion?.id ?? versionId);
  controller.setOpacity(controller.opacity);
  controller.setVisible(true);

  controller.destroy = () => {
    viewer.world.removeItem(item);
    panel.remove();
  };
  document.dispatchEvent(new CustomEvent("nodescope:attention-ready", { detail: { viewer, overlay } }));
  return controller;
}
