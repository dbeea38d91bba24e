/**
 * NodeScope slide viewer: a full-window OpenSeadragon viewer over the tile API, with a navigator,
 * a physical scale bar and an objective-magnification readout.
 *
 * The page puts `<div id="viewer" data-tilesource-url="…" data-osd-prefix="…">` in the DOM and
 * loads this bundle; `boot()` opens the slide there. Later layers (heat-map overlay, annotation
 * tools) build on the exported functions, on `window.nodescopeViewer`, or on the
 * `nodescope:viewer-open` / `nodescope:viewer-ready` events dispatched on `document` (their
 * `detail` is `{viewer, info}`, where `info` is the tile-source JSON of the slide).
 */
import OpenSeadragon from "openseadragon";
import { mountAnnotations } from "./annotations.js";
import { mountHeatmap } from "./heatmap.js";
import { mountGradcam } from "./gradcam.js";
import { mountCam } from "./cam.js";
import { mountAttention } from "./attention.js";
import { mountWindowing } from "./windowing.js";

/** Round physical lengths the scale bar may show, in micrometres (up to 10 cm for CT images). */
export const SCALE_LENGTHS_UM = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];

/** Longest the scale bar may be drawn, in CSS pixels. */
export const SCALE_BAR_MAX_PX = 160;

// ---- tile source ------------------------------------------------------------------------------

/** Fetch the slide's tile-source JSON (session-cookie authenticated, same origin). */
export async function fetchTileSource(url) {
  const response = await fetch(url, {
    credentials: "same-origin",
    headers: { Accept: "application/json" },
  });
  if (!response.ok) {
    let detail = "";
    try {
      detail = (await response.json()).detail || "";
    } catch {
      /* not JSON */
    }
    throw new Error(`Could not open the slide (HTTP ${response.status}${detail ? `: ${detail}` : ""})`);
  }
  return response.json();
}

/**
 * An OpenSeadragon custom tile source for large-image's z/x/y scheme: z = 0 shows the whole slide
 * in one tile, z = levels - 1 is full resolution, and each level halves. OpenSeadragon gives level
 * L the scale 2^(L - maxLevel), which is exactly that scheme when minLevel = 0 and
 * maxLevel = levels - 1.
 */
export function tileSourceFor(info) {
  const template = info.tileUrl;
  // `info.tileQuery` (e.g. "?preset=lung" for a CT image, see windowing.js) is read on every call.
  return {
    width: info.width,
    height: info.height,
    tileWidth: info.tileWidth,
    tileHeight: info.tileHeight,
    tileOverlap: 0,
    minLevel: 0,
    maxLevel: Math.max(0, info.levels - 1),
    getTileUrl(level, x, y) {
      return template.replace("{z}", level).replace("{x}", x).replace("{y}", y) + (info.tileQuery || "");
    },
  };
}

// ---- scale and magnification ----------------------------------------------------------------

/** The base slide: the first item in the world (overlays such as heat maps are added after it). */
export function baseImage(viewer) {
  return viewer.world.getItemCount() > 0 ? viewer.world.getItemAt(0) : null;
}

/**
 * Screen (CSS) pixels per level-0 slide pixel at the current, animated zoom, or null before the
 * slide has opened. Uses the base image's own conversion so it stays right with several layers.
 */
export function imageZoom(viewer) {
  const item = baseImage(viewer);
  if (!item) return null;
  return item.viewportToImageZoom(viewer.viewport.getZoom(true));
}

/** Objective power at level 0: the scanner's if known, else derived from µm/px (10× ≈ 1 µm/px).
 * None for CT, ultrasound and other plain images (no objective). */
export function baseMagnification(info) {
  if (info.modality && info.modality !== "slide") return null;
  if (info.magnification) return Number(info.magnification);
  if (info.mpp) return 10 / Number(info.mpp);
  return null;
}

/** "500 µm", "1 mm", "2 mm". */
export function formatLength(um) {
  if (um >= 1000) return `${+(um / 1000).toPrecision(3)} mm`;
  return `${+um.toPrecision(3)} µm`;
}

/** "10.0×" */
export function formatMagnification(mag) {
  return `${mag.toFixed(1)}×`;
}

/**
 * The longest round length from SCALE_LENGTHS_UM that fits in maxPx at `umPerPx` micrometres per
 * screen pixel (the shortest if none fits): {um, px, label}.
 */
export function chooseScaleLength(umPerPx, maxPx = SCALE_BAR_MAX_PX) {
  let um = SCALE_LENGTHS_UM[0];
  for (const length of SCALE_LENGTHS_UM) {
    if (length / umPerPx <= maxPx) um = length;
    else break;
  }
  return { um, px: um / umPerPx, label: formatLength(um) };
}

function overlayElement(viewer, className) {
  const element = document.createElement("div");
  element.className = className;
  let dock = viewer.element.querySelector(":scope > .ns-hud");
  if (!dock) {
    dock = document.createElement("div");
    dock.className = "ns-hud";
    viewer.element.appendChild(dock);
  }
  dock.appendChild(element);
  return element;
}

/** Redraw `update` after every frame, zoom change and resize (cheap: it writes only on change). */
function followView(viewer, update) {
  for (const event of ["open", "zoom", "animation", "animation-finish", "resize", "update-viewport"]) {
    viewer.addHandler(event, update);
  }
  update();
}

/**
 * A scale bar whose width is a round physical length (10 µm … 5 mm) at the current zoom.
 * Hidden when the slide's µm/px is unknown. Returns {element, update}.
 */
export function mountScaleBar(viewer, mpp, { maxPx = SCALE_BAR_MAX_PX } = {}) {
  const element = overlayElement(viewer, "ns-scalebar");
  element.innerHTML = '<div class="ns-scalebar-label"></div><div class="ns-scalebar-bar"></div>';
  element.setAttribute("aria-label", "Scale bar");
  const label = element.querySelector(".ns-scalebar-label");
  const bar = element.querySelector(".ns-scalebar-bar");
  if (!mpp) {
    element.hidden = true;
    return { element, update() {} };
  }
  let shown = "";
  const update = () => {
    const zoom = imageZoom(viewer);
    if (!zoom) return;
    const { um, px, label: text } = chooseScaleLength(mpp / zoom, maxPx);
    const key = `${text}|${px.toFixed(1)}`;
    if (key === shown) return;
    shown = key;
    bar.style.width = `${px.toFixed(1)}px`;
    label.textContent = text;
    element.dataset.lengthUm = String(um);
  };
  followView(viewer, update);
  return { element, update };
}

/**
 * The effective objective magnification at the current zoom, e.g. "10.0×": the level-0
 * magnification times the image zoom. Hidden when neither magnification nor µm/px is known.
 */
export function mountMagnification(viewer, magnification) {
  const element = overlayElement(viewer, "ns-magnification");
  element.setAttribute("aria-label", "Magnification");
  element.setAttribute("aria-live", "off");
  if (!magnification) {
    element.hidden = true;
    return { element, update() {} };
  }
  let shown = "";
  const update = () => {
    const zoom = imageZoom(viewer);
    if (!zoom) return;
    const text = formatMagnification(magnification * zoom);
    if (text === shown) return;
    shown = text;
    element.textContent = text;
  };
  followView(viewer, update);
  return { element, update };
}

/** Zoom so that the effective magnification becomes `target` (e.g. 20 for 20×). */
export function zoomToMagnification(viewer, magnification, target, immediately = false) {
  const item = baseImage(viewer);
  if (!item || !magnification) return;
  viewer.viewport.zoomTo(item.imageToViewportZoom(target / magnification), null, immediately);
}

// ---- readiness --------------------------------------------------------------------------------

/**
 * Call `callback` once, after the first frame in which every tile the base slide needs for the
 * current view has loaded and been drawn.
 */
export function whenFirstDrawn(viewer, callback) {
  const check = () => {
    const item = baseImage(viewer);
    if (item && item.getFullyLoaded()) {
      viewer.removeHandler("update-viewport", check);
      callback();
    }
  };
  viewer.addHandler("update-viewport", check);
}

function showError(element, message) {
  const box = document.createElement("div");
  box.className = "ns-viewer-error";
  box.setAttribute("role", "alert");
  box.textContent = message;
  element.appendChild(box);
  document.body.dataset.viewerError = message;
}

// ---- the viewer -------------------------------------------------------------------------------

/** OpenSeadragon options for a slide; `overrides` win. */
export function viewerOptions(element, info, overrides = {}) {
  return {
    element,
    prefixUrl: element.dataset.osdPrefix || "/static/dist/osd-images/",
    tileSources: tileSourceFor(info),
    // The 2D canvas drawer works everywhere (WebGL is often missing in VMs and headless
    // browsers) and lets tests and tools read pixels back.
    drawer: element.dataset.drawer || "canvas",
    showNavigator: true,
    navigatorPosition: "TOP_RIGHT",
    navigatorSizeRatio: 0.18,
    navigatorAutoFade: false,
    navigatorBackground: "#f4f4f2",
    showRotationControl: true,
    showFullPageControl: true,
    autoHideControls: false,
    visibilityRatio: 0.2,
    minZoomImageRatio: 0.8,
    maxZoomPixelRatio: 2,
    zoomPerScroll: 1.4,
    animationTime: 0.6,
    springStiffness: 9,
    imageLoaderLimit: 8,
    timeout: 60000,
    preserveImageSizeOnResize: true,
    keyboardNavEnabled: true,
    // Single clicks are left free for annotation tools; double click still zooms.
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true, flickEnabled: true },
    gestureSettingsTouch: { pinchRotate: false },
    ...overrides,
  };
}

/**
 * Open the slide described by `element.dataset.tilesourceUrl` in `element` and mount the navigator,
 * scale bar and magnification readout. Resolves to the OpenSeadragon viewer; `viewer.nodescope`
 * holds {info, mpp, magnification, scaleBar, magnificationReadout}.
 */
export async function createViewer(element, { info = null, options = {} } = {}) {
  const slideInfo = info || (await fetchTileSource(element.dataset.tilesourceUrl));
  const viewer = OpenSeadragon(viewerOptions(element, slideInfo, options));
  const magnification = baseMagnification(slideInfo);
  viewer.nodescope = {
    info: slideInfo,
    mpp: slideInfo.mpp ?? null,
    magnification,
    tileErrors: 0,
  };
  viewer.nodescope.scaleBar = mountScaleBar(viewer, slideInfo.mpp);
  viewer.nodescope.magnificationReadout = mountMagnification(viewer, magnification);

  viewer.addHandler("open", () => {
    // Arrow keys, +/-, 0 (home), w/a/s/d etc. work without clicking first.
    viewer.canvas?.focus({ preventScroll: true });
  });
  viewer.addHandler("open-failed", (event) => {
    showError(element, `Could not open the slide: ${event.message || "unknown error"}`);
  });
  viewer.addHandler("tile-load-failed", () => {
    viewer.nodescope.tileErrors += 1;
    document.body.dataset.tileErrors = String(viewer.nodescope.tileErrors);
  });
  return viewer;
}

let booted = null;

/**
 * Open the page's `#viewer` element (once), expose it as `window.nodescopeViewer`, and mark
 * `document.body.dataset.viewerReady = "1"` after the first complete draw.
 */
export function boot(root = document) {
  if (booted) return booted;
  const element = root.getElementById ? root.getElementById("viewer") : root.querySelector("#viewer");
  if (!element) return Promise.resolve(null);
  booted = createViewer(element)
    .then((viewer) => {
      window.nodescopeViewer = viewer;
      const detail = { viewer, info: viewer.nodescope.info };
      document.dispatchEvent(new CustomEvent("nodescope:viewer-open", { detail }));
      viewer.nodescope.windowing = mountWindowing(viewer, viewer.nodescope.info, {
        makeTileSource: () => tileSourceFor(viewer.nodescope.info),
      });
      // Drawing tools, where the page has a toolbar for them (slides/viewer.html).
      if (document.getElementById("annotation-toolbar")) {
        mountAnnotations(viewer, { toolbar: "annotation-toolbar" }).catch((error) => console.error(error));
        mountHeatmap(viewer, viewer.nodescope.info).catch((error) => console.error(error));
        const info = viewer.nodescope.info;
        // a node image: its class activation map; a whole slide: the patch Grad-CAM tool
        const explain = info.modality && info.modality !== "slide" ? mountCam : mountGradcam;
        explain(viewer, info).catch((error) => console.error(error));
        mountAttention(viewer, viewer.nodescope.info).catch((error) => console.error(error));
      }
      whenFirstDrawn(viewer, () => {
        document.body.dataset.viewerReady = "1";
        document.dispatchEvent(new CustomEvent("nodescope:viewer-ready", { detail }));
      });
      return viewer;
    })
    .catch((error) => {
      showError(element, error.message || String(error));
      console.error(error);
      return null;
    });
  return booted;
}

if (typeof document !== "undefined") {
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", () => boot(), { once: true });
  } else {
    boot();
  }
}

export { OpenSeadragon };
