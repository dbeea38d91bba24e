/**
 * NodeScope heat-map overlay for the slide viewer.
 *
 * `mountHeatmap(viewer, slideInfo)` adds the latest heat map of the live model (or the one named
 * by `?heatmap=<id>` in the page URL) as a second OpenSeadragon tiled image over the slide, with:
 *   - a panel (bottom right): show/hide toggle (keyboard H), opacity slider, "outline at the
 *     threshold" toggle, "Jump to maximum" button, the maximum score and the model's threshold;
 *   - the outlines of the regions scoring at or above the locked threshold, drawn as an SVG layer
 *     that follows pan, zoom, rotation and flips;
 *   - `?x=&y=&zoom=` in the page URL (level-0 slide pixels; zoom = screen pixels per slide pixel,
 *     1 = full resolution): the viewer jumps there once the slide is open. The node page links
 *     to the maximum this way.
 *
 * The overlay tiles come from GET /api/slides/<id>/heatmap/tiles/<z>/<x>/<y>.png (same z/x/y grid
 * as the slide's own tiles), described by GET /api/slides/<id>/heatmap/tilesource/; outlines from
 * GET /api/slides/<id>/heatmap/regions/. Resolves to a controller
 * {heatmap, item, panel, outline, setVisible, toggle, setOpacity, jumpToMaximum, destroy}
 * (heatmap is null, and the panel says so, when the slide has no heat map yet).
 */
import OpenSeadragon from "openseadragon";

const SVG_NS = "http://www.w3.org/2000/svg";

/** Keyboard shortcut that shows or hides the overlay. */
export const HEATMAP_KEY = "h";

/** Opacity of the overlay when it is first shown. */
export const DEFAULT_OPACITY = 0.6;

/** How many classifier windows "Jump to maximum" fits across the view. */
export const MAXIMUM_VIEW_WINDOWS = 12;

/** The heat-map API URLs of a slide. */
export function heatmapUrls(slideId) {
  const base = `/api/slides/${slideId}/heatmap`;
  return { tilesource: `${base}/tilesource/`, regions: `${base}/regions/` };
}

/** `?x=&y=&zoom=&heatmap=` of a URL's query string; missing or bad numbers come back null. */
export function parseViewParams(search) {
  const params = new URLSearchParams(search || "");
  const number = (name) => {
    const raw = params.get(name);
    if (raw === null || raw.trim() === "") return null;
    const value = Number(raw);
    return Number.isFinite(value) ? value : null;
  };
  const zoom = number("zoom");
  const heatmap = number("heatmap");
  return {
    x: number("x"),
    y: number("y"),
    zoom: zoom !== null && zoom > 0 ? zoom : null,
    heatmap: heatmap !== null && Number.isInteger(heatmap) && heatmap > 0 ? heatmap : null,
  };
}

/** An OpenSeadragon tile source for the overlay: the slide's large-image z/x/y pyramid. */
export function heatmapTileSource(heatmap) {
  const template = heatmap.tileUrl;
  return {
    width: heatmap.width,
    height: heatmap.height,
    tileWidth: heatmap.tileWidth,
    tileHeight: heatmap.tileHeight,
    tileOverlap: 0,
    minLevel: 0,
    maxLevel: Math.max(0, heatmap.levels - 1),
    getTileUrl(level, x, y) {
      return template.replace("{z}", level).replace("{x}", x).replace("{y}", y);
    },
  };
}

/** "0.6875" -> "0.69 (11/16)". */
export function formatScore(score, denominator = 16) {
  if (score === null || score === undefined) return "–";
  const steps = Math.round(score * denominator);
  const exact = Math.abs(steps / denominator - score) < 1e-9;
  return exact ? `${score.toFixed(2)} (${steps}/${denominator})` : score.toFixed(3);
}

/** SVG path data of a GeoJSON Polygon or MultiPolygon (rings closed; holes via even-odd). */
export function pathData(geometry) {
  const polygons = geometry.type === "MultiPolygon" ? geometry.coordinates : [geometry.coordinates];
  const parts = [];
  for (const rings of polygons) {
    for (const ring of rings) {
      if (!ring.length) continue;
      parts.push(`M${ring.map(([x, y]) => `${+x.toFixed(1)} ${+y.toFixed(1)}`).join("L")}Z`);
    }
  }
  return parts.join("");
}

/** The slide's own tiled image (the first in the world), or null before it opens. */
export function baseImage(viewer) {
  return viewer.world.getItemCount() > 0 ? viewer.world.getItemAt(0) : null;
}

/** Run `callback` once the base slide is open (now, if it already is). */
export function whenOpen(viewer, callback) {
  if (baseImage(viewer)) {
    callback();
    return;
  }
  const once = () => {
    viewer.removeHandler("open", once);
    callback();
  };
  viewer.addHandler("open", once);
}

/**
 * GET a JSON answer; a non-2xx answer throws an Error carrying `status` and the server's words
 * (its `detail`, or every field error of a 400 joined).
 */
export async function fetchJson(url) {
  const response = await fetch(url, {
    credentials: "same-origin",
    headers: { Accept: "application/json" },
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON */
  }
  if (!response.ok) {
    const detail =
      body?.detail || (body && typeof body === "object" ? Object.values(body).flat().join(" ") : "");
    const error = new Error(detail || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

/**
 * Centre the view on level-0 point (x, y); with `zoom` (screen px per slide px) zoom there too.
 */
export function jumpTo(viewer, x, y, zoom = null, immediately = false) {
  const item = baseImage(viewer);
  if (!item) return;
  const point = item.imageToViewportCoordinates(new OpenSeadragon.Point(x, y));
  if (zoom) viewer.viewport.zoomTo(item.imageToViewportZoom(zoom), null, immediately);
  viewer.viewport.panTo(point, immediately);
}

/** Fit a box `size` slide px wide around level-0 point (x, y). */
export function fitAround(viewer, x, y, size, immediately = false) {
  const item = baseImage(viewer);
  if (!item) return;
  const rect = item.imageToViewportRectangle(x - size / 2, y - size / 2, size, size);
  viewer.viewport.fitBounds(rect, immediately);
}

function addOverlayImage(viewer, heatmap, opacity) {
  return new Promise((resolve, reject) => {
    const base = baseImage(viewer);
    const bounds = base.getBounds();
    viewer.addTiledImage({
      tileSource: heatmapTileSource(heatmap),
      index: viewer.world.getItemCount(),
      opacity,
      x: bounds.x,
      y: bounds.y,
      width: bounds.width,
      success: (event) => resolve(event.item),
      error: (event) => reject(new Error(event.message || "could not add the heat map")),
    });
  });
}

/**
 * An SVG layer over the viewer canvas holding the outlines (in level-0 px); its group transform
 * maps slide pixels to screen pixels and is updated on every viewport change.
 */
export function mountOutlineLayer(viewer) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("class", "ns-heatmap-outline");
  svg.setAttribute("aria-hidden", "true");
  // the layout that makes it an overlay lives here, so outlines work even without heatmap.css
  Object.assign(svg.style, {
    position: "absolute",
    left: "0",
    top: "0",
    width: "100%",
    height: "100%",
    overflow: "visible",
    pointerEvents: "none",
  });
  const group = document.createElementNS(SVG_NS, "g");
  svg.appendChild(group);
  viewer.canvas.appendChild(svg);
  let shown = "";
  const update = () => {
    const item = baseImage(viewer);
    if (!item || svg.style.display === "none") return;
    const size = item.getContentSize();
    const P = OpenSeadragon.Point;
    const o = item.imageToViewerElementCoordinates(new P(0, 0));
    const ex = item.imageToViewerElementCoordinates(new P(size.x, 0));
    const ey = item.imageToViewerElementCoordinates(new P(0, size.y));
    const m = [
      (ex.x - o.x) / size.x,
      (ex.y - o.y) / size.x,
      (ey.x - o.x) / size.y,
      (ey.y - o.y) / size.y,
      o.x,
      o.y,
    ];
    const transform = `matrix(${m.map((v) => +v.toFixed(6)).join(" ")})`;
    if (transform === shown) return;
    shown = transform;
    group.setAttribute("transform", transform);
  };
  for (const event of ["open", "animation", "animation-finish", "update-viewport", "resize", "rotate", "flip"]) {
    viewer.addHandler(event, update);
  }
  return {
    svg,
    group,
    update,
    setVisible(visible) {
      svg.style.display = visible ? "" : "none";
      if (visible) {
        shown = "";
        update();
      }
    },
    setFeatures(features) {
      group.replaceChildren();
      for (const feature of features) {
        const path = document.createElementNS(SVG_NS, "path");
        path.setAttribute("d", pathData(feature.geometry));
        path.setAttribute("class", "ns-heatmap-region");
        path.setAttribute("fill", "none"); // presentation defaults; heatmap.css may restyle
        path.setAttribute("stroke", "#ff2d95");
        path.setAttribute("stroke-width", "2");
        path.setAttribute("fill-rule", "evenodd");
        path.setAttribute("vector-effect", "non-scaling-stroke");
        path.dataset.maxScore = String(feature.properties?.max_score ?? "");
        group.appendChild(path);
      }
      shown = "";
      update();
    },
    destroy() {
      for (const event of ["open", "animation", "animation-finish", "update-viewport", "resize", "rotate", "flip"]) {
        viewer.removeHandler(event, update);
      }
      svg.remove();
    },
  };
}

function createPanel(viewer) {
  const panel = document.createElement("section");
  panel.className = "ns-heatmap-panel";
  panel.setAttribute("aria-label", "Heat map");
  panel.innerHTML = `
    <div class="ns-heatmap-title">Heat map <span class="ns-heatmap-status" role="status"></span></div>
    <div class="ns-heatmap-controls" hidden>
      <label class="ns-heatmap-row"><input type="checkbox" name="show" checked>
        <span>Show <kbd>H</kbd></span></label>
      <label class="ns-heatmap-row"><span>Opacity</span>
        <input type="range" name="opacity" min="0" max="100" step="5" aria-label="Heat-map opacity"></label>
      <label class="ns-heatmap-row"><input type="checkbox" name="outline" checked>
        <span>Outline ≥ <span class="ns-heatmap-threshold"></span></span></label>
      <button type="button" class="ns-heatmap-jump" name="jump">Jump to maximum</button>
      <div class="ns-heatmap-facts"></div>
      <div class="ns-heatmap-legend" aria-hidden="true"></div>
    </div>`;
  // clicks and drags on the panel must not pan the slide
  for (const type of ["pointerdown", "mousedown", "touchstart", "wheel", "dblclick"]) {
    panel.addEventListener(type, (event) => event.stopPropagation());
  }
  viewer.element.appendChild(panel);
  return panel;
}

function renderLegend(element, legend) {
  element.replaceChildren();
  const bar = document.createElement("div");
  bar.className = "ns-heatmap-legend-bar";
  const stops = (legend || []).map((entry, i, all) => {
    const [r, g, b] = entry.rgba;
    return `rgb(${r} ${g} ${b}) ${((i / Math.max(1, all.length - 1)) * 100).toFixed(1)}%`;
  });
  if (stops.length) bar.style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  const labels = document.createElement("div");
  labels.className = "ns-heatmap-legend-labels";
  labels.innerHTML = "<span>1/16</span><span>0.5</span><span>1</span>";
  element.append(bar, labels);
}

/**
 * Mount the heat-map overlay on an OpenSeadragon `viewer` of the slide `slideInfo` (the tile-source
 * JSON of the slide: at least `id`). Options: `search` (query string, default the page's),
 * `opacity`, `urls` ({tilesource, regions} to override the API).
 */
export async function mountHeatmap(viewer, slideInfo, options = {}) {
  const search = options.search ?? (typeof window !== "undefined" ? window.location.search : "");
  const params = parseViewParams(search);
  const urls = { ...heatmapUrls(slideInfo.id), ...(options.urls || {}) };
  const panel = createPanel(viewer);
  const status = panel.querySelector(".ns-heatmap-status");
  const controls = panel.querySelector(".ns-heatmap-controls");
  const controller = {
    heatmap: null,
    item: null,
    panel,
    outline: null,
    visible: true,
    opacity: options.opacity ?? DEFAULT_OPACITY,
    setVisible() {},
    toggle() {},
    setOpacity() {},
    jumpToMaximum() {},
    destroy() {
      panel.remove();
    },
  };
  viewer.nodescope = viewer.nodescope || {};
  viewer.nodescope.heatmap = controller;

  // ?x=&y=&zoom= : where the node page wants us, whether or not there is a heat map
  if (params.x !== null && params.y !== null) {
    whenOpen(viewer, () => jumpTo(viewer, params.x, params.y, params.zoom ?? 0.5, true));
  }

  status.textContent = "loading…";
  const url = params.heatmap ? `${urls.tilesource}?heatmap=${params.heatmap}` : urls.tilesource;
  let heatmap;
  try {
    heatmap = await fetchJson(url);
  } catch (error) {
    status.textContent = error.status === 404 ? "none yet" : "unavailable";
    panel.dataset.state = "none";
    panel.title = error.message;
    return controller;
  }
  if (heatmap.id === null) {
    status.textContent = "none yet";
    panel.dataset.state = "none";
    panel.title = heatmap.detail || "";
    return controller;
  }
  controller.heatmap = heatmap;
  await new Promise((resolve) => whenOpen(viewer, resolve));
  const item = await addOverlayImage(viewer, heatmap, controller.opacity);
  controller.item = item;

  const outline = mountOutlineLayer(viewer);
  controller.outline = outline;
  const regionsUrl = heatmap.regionsUrl || `${urls.regions}?heatmap=${heatmap.id}`;
  fetchJson(regionsUrl)
    .then((geojson) => {
      outline.setFeatures(geojson.features || []);
      panel.dataset.regions = String((geojson.features || []).length);
      const shownThreshold = geojson.properties?.threshold;
      if (shownThreshold !== undefined) {
        panel.querySelector(".ns-heatmap-threshold").textContent = formatScore(shownThreshold, heatmap.denominator);
      }
    })
    .catch((error) => console.error("heat-map outlines:", error));

  const show = panel.querySelector('input[name="show"]');
  const opacity = panel.querySelector('input[name="opacity"]');
  const outlineToggle = panel.querySelector('input[name="outline"]');
  const jump = panel.querySelector('button[name="jump"]');

  controller.setOpacity = (value) => {
    controller.opacity = Math.min(1, Math.max(0, Number(value)));
    opacity.value = String(Math.round(controller.opacity * 100));
    if (controller.visible) item.setOpacity(controller.opacity);
    panel.dataset.opacity = controller.opacity.toFixed(2);
  };
  controller.setVisible = (visible) => {
    controller.visible = Boolean(visible);
    show.checked = controller.visible;
    item.setOpacity(controller.visible ? controller.opacity : 0);
    outline.setVisible(controller.visible && outlineToggle.checked);
    panel.dataset.visible = controller.visible ? "1" : "0";
  };
  controller.toggle = () => controller.setVisible(!controller.visible);
  controller.jumpToMaximum = (immediately = false) => {
    fitAround(viewer, heatmap.max.x, heatmap.max.y, heatmap.windowPx * MAXIMUM_VIEW_WINDOWS, immediately);
  };

  show.addEventListener("change", () => controller.setVisible(show.checked));
  opacity.addEventListener("input", () => controller.setOpacity(Number(opacity.value) / 100));
  outlineToggle.addEventListener("change", () => outline.setVisible(controller.visible && outlineToggle.checked));
  jump.addEventListener("click", () => controller.jumpToMaximum());

  const onKey = (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
      if (!(target.type === "range" || target.type === "checkbox")) return;
    }
    if (event.key && event.key.toLowerCase() === HEATMAP_KEY) {
      controller.toggle();
      event.preventDefault();
    }
  };
  window.addEventListener("keydown", onKey);

  const denominator = heatmap.denominator || 16;
  panel.querySelector(".ns-heatmap-threshold").textContent = formatScore(heatmap.threshold ?? 0.6875, denominator);
  const facts = panel.querySelector(".ns-heatmap-facts");
  const verdict =
    heatmap.screenedPositive === null || heatmap.screenedPositive === undefined
      ? "no locked threshold"
      : heatmap.screenedPositive
        ? "at or above the threshold"
        : "below the threshold";
  facts.textContent = `Max ${formatScore(heatmap.maxScore, denominator)} – ${verdict}. ${heatmap.modelVersion?.name ?? ""}`;
  renderLegend(panel.querySelector(".ns-heatmap-legend"), heatmap.legend);
  status.textContent = "";
  controls.hidden = false;
  panel.dataset.state = "ready";
  panel.dataset.heatmap = String(heatmap.id);
  controller.setOpacity(controller.opacity);
  controller.setVisible(true);

  controller.destroy = () => {
    window.removeEventListener("keydown", onKey);
    outline.destroy();
    viewer.world.removeItem(item);
    panel.remove();
  };
  document.dispatchEvent(new CustomEvent("nodescope:heatmap-ready", { detail: { viewer, heatmap } }));
  return controller;
}
