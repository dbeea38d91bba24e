/**
 * NodeScope annotation layer: drawing, editing and saving tumour (and other) outlines on the
 * OpenSeadragon slide viewer.
 *
 * Why our own overlay and not Annotorious: the tools a pathologist needs here are mostly ones
 * Annotorious lacks (freehand outline, brush and eraser that union into / cut from a region),
 * every shape must round-trip as GeoJSON in level-0 pixels (holes and MultiPolygons from the
 * brush included), saving is tied to the server's optimistic-concurrency `version` and its
 * soft delete/restore (which is what undo does), and a Camelyon16 slide holds thousands of
 * polygons that must be streamed by viewport and simplified when zoomed out. Doing that through
 * Annotorious's own W3C store, undo stack and WebGL renderer meant fighting it at every step, so
 * all tools live on one 2D canvas overlay: it follows the viewport (rotation included) through an
 * image → screen affine transform recomputed each frame, draws cached `Path2D`s simplified to
 * about one screen pixel, and needs no WebGL (like the viewer's canvas drawer).
 *
 * Data flow: annotations in (and around) the view are fetched with `?bbox=` (debounced after
 * pan/zoom). Zoomed out (a screen pixel covering 2 level-0 px or more) the fetch adds
 * `&simplify=` (about one screen pixel in level-0 px, a power of two so nearby zooms ask alike)
 * and the server sends outlines simplified for drawing, marked `simplified`; zooming in past
 * that fetches them again in full. A simplified outline is never edited: selecting one (which
 * every edit, brush, eraser and delete needs) first loads its full row, `GET /api/annotations/<id>/`,
 * and its version. New shapes are POSTed when finished; edits are PATCHed with the version the client
 * saw (409 → the current row is reloaded and the user told); invalid shapes (400) stay on screen
 * as a red dashed draft with the server's message until fixed, discarded or undone.
 *
 * `mountAnnotations(viewer, {toolbar})` builds the toolbar into `toolbar` and returns the layer;
 * `window.nodescopeAnnotations` exposes a small API (tool, setClass, count, undo, redo, idle…).
 */
import OpenSeadragon from "openseadragon";
import { annotationApi, ApiError } from "./annotate-api.js";
import * as G from "./annotate-geometry.js";

export const TOOLS = [
  { name: "select", key: "v", label: "Select and edit vertices", icon: '<path d="M6 3.5l12 7.2-5.3 1.4 3.2 5.6-2.2 1.3-3.2-5.6L6.6 17.3z"/>' },
  { name: "polygon", key: "p", label: "Polygon: click vertices; double-click, Enter or click the first vertex to close", icon: '<path d="M5 18.5L7.5 5.5 18 8.5 19.5 17z"/><circle cx="5" cy="18.5" r="1.6" class="fill"/><circle cx="7.5" cy="5.5" r="1.6" class="fill"/><circle cx="18" cy="8.5" r="1.6" class="fill"/><circle cx="19.5" cy="17" r="1.6" class="fill"/>' },
  { name: "freehand", key: "f", label: "Freehand outline: drag around the region", icon: '<path d="M6.5 16.5C3 13 5 6.5 10 6s4 3 7 2.5 3.5 5-.5 7.5-6.5 4-10 .5z"/>' },
  { name: "rectangle", key: "r", label: "Rectangle: drag from corner to corner", icon: '<rect x="4.5" y="6.5" width="15" height="11" rx="0.5"/>' },
  { name: "brush", key: "b", label: "Brush: paint onto the selected region (or a new one); [ and ] change the size", icon: '<path d="M19 4.5l-8.2 9.2"/><path d="M10.3 13.2c-2.4-.5-4.3 1-4.3 3.3 0 1.4-.8 2.3-1.8 2.8 3.8.8 7.6-.8 7.3-4.3z" class="fill"/>' },
  { name: "erase", key: "e", label: "Eraser: cut from the selected region; [ and ] change the size", icon: '<path d="M14.5 4.8l4.7 4.7-8.6 8.6H6.2l-2-2a1.5 1.5 0 010-2.1z"/><path d="M9.6 9.7l4.7 4.7"/><path d="M11 18.1h8"/>' },
];

const ICONS = {
  undo: '<path d="M9 14.5L4.5 10 9 5.5"/><path d="M4.5 10H15a4.5 4.5 0 010 9h-3"/>',
  redo: '<path d="M15 14.5l4.5-4.5L15 5.5"/><path d="M19.5 10H9a4.5 4.5 0 000 9h3"/>',
  delete: '<path d="M4.5 7h15"/><path d="M9.5 7V4.5h5V7"/><path d="M6.5 7l1 12.5h9l1-12.5"/><path d="M10.2 10.5v6M13.8 10.5v6"/>',
};

const DRAWING_TOOLS = new Set(["polygon", "freehand", "rectangle", "brush", "erase"]);
const CLOSE_PX = 9; // click this close to the first vertex to close a polygon
const HANDLE_PX = 7; // grab distance of a vertex handle
const MAX_HANDLES = 800; // more vertices than this in view: zoom in to edit them
const UNDO_LIMIT = 200;
const FETCH_MARGIN = 0.5; // fetch half a view beyond each edge, so short pans need no request
const FETCH_DEBOUNCE_MS = 220;
const STORE_LIMIT = 30000; // beyond this many loaded polygons, forget those far out of view

function svgIcon(body) {
  return `<svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true" focusable="false">${body}</svg>`;
}

function hexToRgb(hex) {
  const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex || "");
  return m ? [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16)] : [33, 150, 243];
}

function rgba(hex, alpha) {
  const [r, g, b] = hexToRgb(hex);
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

function el(tag, attrs = {}, html = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    node.setAttribute(k, v === true ? "" : String(v));
  }
  if (html) node.innerHTML = html;
  return node;
}

function copyParts(parts) {
  return parts.map((rings) => rings.map((ring) => ring.map((p) => [p[0], p[1]])));
}

/** Is an outline fetched at tolerance `a` finer than one at `b`? (0 = full geometry) */
function finer(a, b) {
  return b !== 0 && (a === 0 || a < b);
}

/** One annotation as the layer keeps it (from a server row; `simplify` = the fetch's tolerance). */
function itemFromRow(row, simplify = 0) {
  if (row && row.type === "Feature") row = { ...(row.properties || {}), id: row.id ?? row.properties?.id, geometry: row.geometry };
  const labelClass = row.label_class;
  const classKey = typeof labelClass === "object" && labelClass ? labelClass.key : labelClass ?? row.label_class_key ?? row.class;
  const author = row.author_username ?? (typeof row.author === "object" && row.author ? row.author.username : row.author);
  const geometry = row.geometry;
  return {
    id: row.id,
    version: row.version ?? 1,
    classKey,
    author: author ? String(author) : "",
    geometry,
    parts: G.polys(geometry),
    bbox: G.bounds(geometry),
    area: G.geometryArea(geometry),
    deleted: Boolean(row.deleted_at || row.deleted),
    // Drawn from an outline simplified at `tolerance` level-0 px (0: the stored geometry).
    simplified: Boolean(row.simplified),
    tolerance: row.simplified ? simplify : 0,
    paths: new Map(),
    touched: performance.now(),
  };
}

export class AnnotationLayer {
  constructor(viewer, { toolbar = null, slideId = null, info = null, user = "", apiBase = "/api" } = {}) {
    this.viewer = viewer;
    this.info = info || viewer.nodescope?.info || {};
    this.slideId = slideId ?? this.info.id;
    this.width = Number(this.info.width) || 0;
    this.height = Number(this.info.height) || 0;
    this.mpp = this.info.mpp ? Number(this.info.mpp) : null;
    this.user = user;
    this.api = annotationApi(this.slideId, { base: apiBase });
    this.selecting = null; // {id, promise} while a simplified annotation's full row loads
    this.toolbar = toolbar;

    this.items = new Map();
    this.tombstones = new Map(); // id → when this client deleted it (a fetch begun earlier must not revive it)
    this.classes = [];
    this.classByKey = new Map();
    this.classKey = null;
    this.toolName = "select";
    this.selected = null; // an id, "draft", or null
    this.draft = null; // {id (null for new), parts, geometry, classKey, error}
    this.drawing = null; // the shape being drawn
    this.drag = null; // a vertex being moved
    this.hover = null; // last pointer position, screen px [x, y]
    this.hiddenAuthors = new Set();
    this.visible = true;
    this.brushPx = 14; // brush radius, screen px
    this.undoStack = [];
    this.redoStack = [];
    this.queue = Promise.resolve();
    this.pending = 0;
    this.fetching = null;
    this.fetched = null;
    this.refreshTimer = null;
    this.frame = 0;
    this.transform = null;
    this.ready = false;
    this.messageTimer = null;

    this.mountCanvas();
    this.mountMessage();
    if (toolbar) this.mountToolbar(toolbar);
    this.bindViewer();
    this.bindKeyboard();
  }

  // ---- setup ----------------------------------------------------------------------------------

  async start() {
    try {
      this.classes = (await this.api.labelClasses()).slice().sort((a, b) => (a.order ?? 0) - (b.order ?? 0));
    } catch (error) {
      this.showMessage("error", `Annotations are unavailable: ${error.message}`);
      if (this.toolbar) this.toolbar.dataset.state = "unavailable";
      return this;
    }
    this.classByKey = new Map(this.classes.map((c) => [c.key, c]));
    const tumour = this.classes.find((c) => c.kind === "tumour") || this.classes[0];
    this.classKey = tumour ? tumour.key : null;
    if (this.toolbar) this.renderPalette();
    if (!this.baseItem()) await new Promise((resolve) => this.viewer.addOnceHandler("open", resolve));
    this.ready = true;
    await this.refresh({ force: true });
    this.updateUi();
    if (this.toolbar) this.toolbar.dataset.state = "ready";
    document.body.dataset.annotationsReady = "1";
    return this;
  }

  mountCanvas() {
    this.canvas = el("canvas", { class: "ns-annot-canvas", "aria-hidden": "true" });
    this.viewer.canvas.appendChild(this.canvas);
    this.ctx = this.canvas.getContext("2d");
  }

  mountMessage() {
    this.message = el("div", { class: "ns-annot-message", hidden: true });
    this.message.innerHTML = '<span class="ns-annot-message-text"></span><button type="button" class="ns-annot-message-close" aria-label="Dismiss">×</button>';
    this.message.querySelector("button").addEventListener("click", () => this.clearMessage());
    this.viewer.element.appendChild(this.message);
  }

  mountToolbar(root) {
    root.innerHTML = "";
    root.hidden = false;
    const tools = el("div", { class: "ns-annot-group ns-annot-tools", role: "group", "aria-label": "Tools" });
    for (const tool of TOOLS) {
      const button = el(
        "button",
        { type: "button", class: "ns-annot-btn", "data-tool": tool.name, title: `${tool.label} (${tool.key.toUpperCase()})`, "aria-label": tool.label, "aria-pressed": "false" },
        `${svgIcon(tool.icon)}<span class="ns-annot-key">${tool.key.toUpperCase()}</span>`,
      );
      button.addEventListener("click", () => this.tool(tool.name));
      tools.appendChild(button);
    }
    const size = el("label", { class: "ns-annot-brush", title: "Brush size ([ and ])" });
    size.innerHTML = '<span class="ns-annot-brush-dot"></span><input type="range" min="3" max="60" step="1" aria-label="Brush size in screen pixels">';
    this.brushInput = size.querySelector("input");
    this.brushInput.value = String(this.brushPx);
    this.brushInput.addEventListener("input", () => this.setBrush(Number(this.brushInput.value)));
    tools.appendChild(size);

    const edit = el("div", { class: "ns-annot-group", role: "group", "aria-label": "Edit" });
    const action = (name, label, key, fn) => {
      const b = el("button", { type: "button", class: "ns-annot-btn", "data-action": name, title: `${label} (${key})`, "aria-label": label }, svgIcon(ICONS[name]));
      b.addEventListener("click", fn);
      edit.appendChild(b);
      return b;
    };
    this.undoButton = action("undo", "Undo", "Ctrl+Z", () => this.undo());
    this.redoButton = action("redo", "Redo", "Ctrl+Shift+Z", () => this.redo());
    this.deleteButton = action("delete", "Delete the selected region", "Delete", () => this.deleteSelected());

    const classes = el("div", { class: "ns-annot-group ns-annot-classes", role: "radiogroup", "aria-label": "Label class" });
    this.palette = classes;
    this.classLabel = el("span", { class: "ns-annot-class-name" });

    this.readout = el("div", { class: "ns-annot-readout", "aria-live": "polite" });
    this.layersPanel = el("details", { class: "ns-annot-layers" });
    this.layersPanel.innerHTML = '<summary>Layers</summary><div class="ns-annot-layers-body"></div>';
    this.layersPanel.addEventListener("change", (event) => this.onLayerToggle(event));

    root.append(tools, edit, classes, this.classLabel, this.readout, this.layersPanel);
  }

  /** The key that picks a class: its own shortcut, else its position (1-9) if no class has that key. */
  shortcutFor(cls) {
    if (cls.shortcut) return cls.shortcut.toLowerCase();
    const i = this.classes.indexOf(cls);
    const digit = i >= 0 && i < 9 ? String(i + 1) : "";
    return digit && !this.classes.some((c) => c.shortcut && c.shortcut.toLowerCase() === digit) ? digit : "";
  }

  renderPalette() {
    this.palette.innerHTML = "";
    this.classes.forEach((cls) => {
      const key = this.shortcutFor(cls);
      const button = el(
        "button",
        {
          type: "button",
          role: "radio",
          class: `ns-annot-class kind-${cls.kind}`,
          "data-key": cls.key,
          "aria-checked": "false",
          "aria-label": cls.name,
          title: `${cls.name}${key ? ` (${key})` : ""}`,
          style: `--class-colour: ${cls.colour}`,
        },
        `<span class="ns-annot-swatch"></span>${key ? `<span class="ns-annot-shortcut">${key}</span>` : ""}`,
      );
      button.addEventListener("click", () => this.setClass(cls.key));
      this.palette.appendChild(button);
    });
  }

  bindViewer() {
    const v = this.viewer;
    const redraw = () => this.draw();
    // Drawn in OpenSeadragon's own frame (no lag behind the tiles); `draw` skips unchanged frames.
    for (const name of ["update-viewport", "animation", "resize", "rotate", "flip"]) v.addHandler(name, redraw);
    for (const name of ["animation-finish", "resize", "open"]) v.addHandler(name, () => this.scheduleRefresh());
    v.addHandler("canvas-press", (e) => this.onPress(e));
    v.addHandler("canvas-drag", (e) => this.onDrag(e));
    v.addHandler("canvas-drag-end", (e) => {
      // No flick (momentum pan) after a stroke or a vertex move: the view must stay put.
      if (this.ownGesture || this.drawing || this.drag) e.preventDefaultAction = true;
    });
    v.addHandler("canvas-release", (e) => this.onRelease(e));
    v.addHandler("canvas-click", (e) => this.onClick(e));
    v.addHandler("canvas-double-click", (e) => this.onDoubleClick(e));
    v.addHandler("canvas-exit", () => {
      this.hover = null;
      this.requestDraw();
    });
    v.canvas.addEventListener("pointermove", (e) => {
      this.hover = this.screenPoint(e);
      if (this.drawing?.type === "polygon" || this.toolName === "brush" || this.toolName === "erase" || this.drawing?.type === "rectangle") {
        this.requestDraw();
      }
      if (this.drawing?.type === "polygon") this.updateReadout();
    });
  }

  bindKeyboard() {
    this.onKey = (e) => this.handleKey(e);
    window.addEventListener("keydown", this.onKey, true);
  }

  // ---- public API -----------------------------------------------------------------------------

  /** Switch tool: select, polygon, freehand, rectangle, brush or erase. */
  tool(name) {
    if (!TOOLS.some((t) => t.name === name)) throw new Error(`unknown tool ${name}`);
    if (this.drawing) this.cancelDrawing();
    this.toolName = name;
    this.viewer.element.dataset.annotTool = name;
    this.updateUi();
    this.requestDraw();
    return name;
  }

  /** Pick the label class for new shapes; relabels the selected annotation too. */
  setClass(key) {
    if (!this.classByKey.has(key)) throw new Error(`unknown label class ${key}`);
    this.classKey = key;
    if (this.selected === "draft" && this.draft) this.draft.classKey = key;
    else if (this.selected !== null) {
      const item = this.items.get(this.selected);
      if (item && item.classKey !== key) this.saveUpdate(item, { label_class: key });
    }
    this.updateUi();
    this.requestDraw();
    return key;
  }

  setBrush(px) {
    this.brushPx = Math.max(3, Math.min(60, Math.round(px)));
    if (this.brushInput) this.brushInput.value = String(this.brushPx);
    this.requestDraw();
  }

  /** Live annotations loaded on the client (all authors). */
  count() {
    let n = 0;
    for (const item of this.items.values()) if (!item.deleted) n++;
    return n;
  }

  /** Resolves when every queued save and the current fetch have finished. */
  async idle() {
    for (let i = 0; i < 50; i++) {
      const queue = this.queue;
      await queue;
      if (this.fetching) await this.fetching.catch(() => {});
      if (this.selecting) await this.selecting.promise.catch(() => {});
      if (queue === this.queue && !this.fetching && !this.selecting && this.pending === 0) return;
    }
  }

  selectedInfo() {
    if (this.selected === "draft" && this.draft) {
      return { id: this.draft.id, draft: true, classKey: this.draft.classKey, error: this.draft.error, areaPx: G.geometryArea(this.draft.geometry) };
    }
    const item = this.selected === null ? null : this.items.get(this.selected);
    return item ? { id: item.id, draft: false, classKey: item.classKey, version: item.version, author: item.author, areaPx: item.area, geometry: item.geometry } : null;
  }

  /** Select an annotation (or "draft", or null). Resolves to the id once selected. */
  select(id) {
    this.selecting = null;
    const item = id === null || id === "draft" ? null : this.items.get(id);
    if (item?.simplified) return this.selectFull(id);
    this.selected = id;
    this.updateUi();
    this.requestDraw();
    return Promise.resolve(id);
  }

  /**
   * Select an annotation loaded with a simplified outline: fetch its full row (geometry and
   * version) first, so that no edit, brush, eraser or delete ever starts from the simplified
   * one. Nothing is selected meanwhile; a later click or selection wins.
   */
  selectFull(id) {
    const token = { id };
    this.selecting = token;
    this.selected = null;
    this.updateUi();
    this.requestDraw();
    token.promise = (async () => {
      let row;
      try {
        row = await this.api.get(id);
      } catch (error) {
        if (this.selecting !== token) return null;
        this.selecting = null;
        if (error instanceof ApiError && error.status === 404) this.onGone(id);
        else this.showMessage("error", `Could not load the annotation: ${error.message}`);
        return null;
      }
      if (this.selecting !== token) return null;
      this.selecting = null;
      const item = this.upsertRow(row);
      if (item.deleted || this.selected !== null) return null;
      this.selected = id;
      this.updateUi();
      this.requestDraw();
      return id;
    })();
    return token.promise;
  }

  /** The full row of a loaded annotation that another user changed (the selection). */
  reloadFull(id) {
    this.api
      .get(id)
      .then((row) => {
        const have = this.items.get(id);
        if (have && have.version >= row.version && !have.simplified) return;
        this.upsertRow(row);
        if (this.selected === id && !this.items.has(id)) this.selected = null;
        this.updateUi();
        this.requestDraw();
      })
      .catch(() => {});
  }

  /**
   * `?simplify=` for the current zoom: about one screen pixel in level-0 px, rounded down to a
   * power of two (fetches at nearby zooms ask alike; the outlines are drawn at the same
   * tolerances), once a screen pixel covers 2 level-0 px or more; 0 (full geometry) closer in.
   */
  simplifyTolerance(t = this.transform) {
    if (!t || !(t.scale > 0)) return 0;
    const level = Math.floor(Math.log2(1 / t.scale));
    return level >= 1 ? 2 ** level : 0;
  }

  // ---- coordinates ----------------------------------------------------------------------------

  baseItem() {
    return this.viewer.world.getItemCount() ? this.viewer.world.getItemAt(0) : null;
  }

  /** The image → viewer-element affine transform at the current (animated) view. */
  computeTransform() {
    const item = this.baseItem();
    if (!item) return null;
    const W = this.width || item.source.dimensions.x;
    const H = this.height || item.source.dimensions.y;
    const P = OpenSeadragon.Point;
    const o = item.imageToViewerElementCoordinates(new P(0, 0));
    const ex = item.imageToViewerElementCoordinates(new P(W, 0));
    const ey = item.imageToViewerElementCoordinates(new P(0, H));
    const a = (ex.x - o.x) / W;
    const b = (ex.y - o.y) / W;
    const c = (ey.x - o.x) / H;
    const d = (ey.y - o.y) / H;
    const det = a * d - b * c;
    return { a, b, c, d, e: o.x, f: o.y, det, scale: Math.sqrt(Math.abs(det)) };
  }

  T() {
    this.transform = this.computeTransform();
    return this.transform;
  }

  toScreen(p, t = this.transform) {
    return [t.a * p[0] + t.c * p[1] + t.e, t.b * p[0] + t.d * p[1] + t.f];
  }

  toImage(s, t = this.transform) {
    const x = s[0] - t.e;
    const y = s[1] - t.f;
    return [(t.d * x - t.c * y) / t.det, (-t.b * x + t.a * y) / t.det];
  }

  screenPoint(e) {
    const ev = e.originalEvent || e;
    const rect = this.viewer.canvas.getBoundingClientRect();
    return [ev.clientX - rect.left, ev.clientY - rect.top];
  }

  clamp(p) {
    return [Math.min(this.width, Math.max(0, p[0])), Math.min(this.height, Math.max(0, p[1]))];
  }

  imagePoint(e) {
    const t = this.T();
    return t ? this.toImage(this.screenPoint(e), t) : null;
  }

  /** Bounding box of the visible part of the slide, in image px. */
  viewBox() {
    const t = this.transform || this.T();
    if (!t) return [0, 0, this.width, this.height];
    const w = this.viewer.canvas.clientWidth;
    const h = this.viewer.canvas.clientHeight;
    return G.bounds([this.toImage([0, 0], t), this.toImage([w, 0], t), this.toImage([0, h], t), this.toImage([w, h], t)]);
  }

  // ---- fetching -------------------------------------------------------------------------------

  scheduleRefresh(delay = FETCH_DEBOUNCE_MS) {
    if (!this.ready) return;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => this.refresh(), delay);
  }

  /** Load the annotations in (and around) the view; drop those deleted elsewhere. */
  async refresh({ force = false } = {}) {
    if (!this.ready || !this.baseItem()) return;
    this.T();
    const view = this.viewBox();
    const mw = (view[2] - view[0]) * FETCH_MARGIN;
    const mh = (view[3] - view[1]) * FETCH_MARGIN;
    const box = [
      Math.max(0, Math.floor(view[0] - mw)),
      Math.max(0, Math.floor(view[1] - mh)),
      Math.min(this.width, Math.ceil(view[2] + mw)),
      Math.min(this.height, Math.ceil(view[3] + mh)),
    ];
    if (box[2] <= box[0] || box[3] <= box[1]) return;
    const clampedView = [Math.max(0, view[0]), Math.max(0, view[1]), Math.min(this.width, view[2]), Math.min(this.height, view[3])];
    const simplify = this.simplifyTolerance();
    // Outlines fetched at least as finely as this zoom draws them serve; coarser ones are
    // fetched again (zooming in past their tolerance brings the full geometry).
    const fineEnough = (tolerance) => !finer(simplify, tolerance);
    const fresh = this.fetched && performance.now() - this.fetched.at < 60000;
    if (!force && fresh && fineEnough(this.fetched.simplify) && G.boxContains(this.fetched.box, clampedView)) return;
    // A slow fetch that already covers the new view is left to finish rather than restarted.
    if (!force && this.fetching && this.fetchingBox && fineEnough(this.fetchingSimplify) && G.boxContains(this.fetchingBox, clampedView)) return;
    if (this.abort) this.abort.abort();
    const abort = new AbortController();
    this.abort = abort;
    this.fetchingBox = box;
    this.fetchingSimplify = simplify;
    const started = performance.now();
    const seen = new Set();
    const merge = (rows) => {
      for (const row of rows) {
        const fresh = itemFromRow(row, simplify);
        seen.add(fresh.id);
        const have = this.items.get(fresh.id);
        if ((this.tombstones.get(fresh.id) || 0) > started) continue;
        if (have && (have.version > fresh.version || have.touched > started)) continue;
        // The same version again: only a finer outline replaces the one loaded.
        if (have && have.version === fresh.version && !finer(fresh.tolerance, have.tolerance)) continue;
        if (fresh.deleted) continue;
        if (fresh.simplified && (fresh.id === this.selected || this.draft?.id === fresh.id)) {
          this.reloadFull(fresh.id); // changed elsewhere; what is being edited stays full
          continue;
        }
        this.items.set(fresh.id, fresh);
      }
      this.requestDraw();
    };
    const run = (async () => {
      await this.api.inView(box, { simplify, signal: abort.signal, onPage: merge });
      for (const [id, item] of this.items) {
        if (seen.has(id) || item.touched > started || this.draft?.id === id) continue;
        if (G.boxesIntersect(item.bbox, box)) this.items.delete(id);
      }
      if (this.items.size > STORE_LIMIT) {
        for (const [id, item] of this.items) {
          if (id !== this.selected && !G.boxesIntersect(item.bbox, box)) this.items.delete(id);
        }
      }
      if (this.selected !== null && this.selected !== "draft" && !this.items.has(this.selected)) this.selected = null;
      this.fetched = { box, at: performance.now(), simplify };
      this.updateUi();
      this.requestDraw();
    })();
    this.fetching = run;
    try {
      await run;
    } catch (error) {
      if (error.name !== "AbortError") this.showMessage("error", `Could not load annotations: ${error.message}`);
    } finally {
      if (this.fetching === run) {
        this.fetching = null;
        this.fetchingBox = null;
      }
    }
  }

  // ---- saving ---------------------------------------------------------------------------------

  /** Run server operations one after another, in the order the user made them. */
  enqueue(job) {
    this.pending += 1;
    const run = this.queue.then(job).catch((error) => {
      console.error(error);
      this.showMessage("error", error.message || String(error));
    });
    this.queue = run.finally(() => {
      this.pending -= 1;
      this.updateUi();
    });
    this.updateUi();
    return run;
  }

  upsertRow(row) {
    const item = itemFromRow(row);
    if (item.deleted) this.forget(item.id);
    else {
      this.tombstones.delete(item.id);
      this.items.set(item.id, item);
    }
    return item;
  }

  setGeometry(item, geometry) {
    item.geometry = geometry;
    item.parts = G.polys(geometry);
    item.bbox = G.bounds(geometry);
    item.area = G.geometryArea(geometry);
    item.paths = new Map();
  }

  /** Drop an annotation this client deleted (or learnt is gone). */
  forget(id) {
    this.items.delete(id);
    this.tombstones.set(id, performance.now());
  }

  pushUndo(entry) {
    this.undoStack.push(entry);
    if (this.undoStack.length > UNDO_LIMIT) this.undoStack.shift();
    this.redoStack = [];
    this.updateUi();
  }

  /** POST a new shape; on 400 keep it as a draft with the server's message. */
  saveNew(geometry, classKey) {
    return this.enqueue(async () => {
      let row;
      try {
        row = await this.api.create(G.roundGeometry(geometry), classKey);
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        this.keepDraft({ id: null, geometry, classKey, error: error.message });
        return null;
      }
      if (this.selected === "draft") this.selected = null;
      this.draft = null;
      const item = this.upsertRow(row);
      this.selected = item.id;
      this.pushUndo({ type: "create", id: item.id, version: item.version });
      this.clearMessage("error");
      this.updateUi();
      this.requestDraw();
      return item;
    });
  }

  /** PATCH geometry and/or class with the version we saw. */
  saveUpdate(item, changes, { undoable = true, entry = null } = {}) {
    const id = item.id;
    const before = { geometry: item.geometry, label_class: item.classKey };
    // Show the edit at once; it is put back if the server refuses it.
    if (changes.geometry && this.items.get(id) === item) {
      this.setGeometry(item, changes.geometry);
      this.requestDraw();
    }
    const revert = () => {
      if (changes.geometry && this.items.get(id) === item) this.setGeometry(item, before.geometry);
    };
    return this.enqueue(async () => {
      const current = this.items.get(id);
      const version = current ? current.version : item.version;
      const payload = { ...changes };
      if (payload.geometry) payload.geometry = G.roundGeometry(payload.geometry);
      let row;
      try {
        row = await this.api.update(id, version, payload);
      } catch (error) {
        if (!(error instanceof ApiError)) {
          revert();
          throw error;
        }
        if (error.status === 409) await this.onConflict(id, error);
        else if (error.status === 404) this.onGone(id);
        else {
          revert();
          if (changes.geometry) this.keepDraft({ id, geometry: changes.geometry, classKey: changes.label_class || item.classKey, error: error.message });
          else this.showMessage("error", error.message);
        }
        return false;
      }
      if (this.draft && this.draft.id === id) {
        this.draft = null;
        if (this.selected === "draft") this.selected = id;
      }
      const fresh = this.upsertRow(row);
      if (entry) entry.version = fresh.version;
      else if (undoable) this.pushUndo({ type: "update", id, before, after: { geometry: fresh.geometry, label_class: fresh.classKey } });
      this.clearMessage("error");
      this.updateUi();
      this.requestDraw();
      return true;
    });
  }

  /** Soft-delete (undo restores it). */
  saveDelete(id, { undoable = true, entry = null } = {}) {
    return this.enqueue(async () => {
      const item = this.items.get(id);
      const version = item ? item.version : entry?.version;
      let row;
      try {
        row = await this.api.remove(id, version);
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        if (error.status === 409) await this.onConflict(id, error);
        else if (error.status === 404) this.onGone(id);
        else this.showMessage("error", error.message);
        return false;
      }
      this.forget(id);
      if (this.selected === id) this.selected = null;
      const after = row && row.version ? row.version : (version || 0) + 1;
      if (entry) entry.version = after;
      if (undoable) this.pushUndo({ type: "delete", id, version: after });
      this.updateUi();
      this.requestDraw();
      return true;
    });
  }

  /** Restore a soft-deleted annotation (undo of a delete, redo of a creation). */
  saveRestore(id, entry) {
    return this.enqueue(async () => {
      let row;
      try {
        row = await this.api.restore(id, entry.version);
      } catch (error) {
        if (!(error instanceof ApiError)) throw error;
        if (error.status === 409) await this.onConflict(id, error);
        else if (error.status === 404) this.onGone(id);
        else this.showMessage("error", error.message);
        return false;
      }
      const item = this.upsertRow(row);
      entry.version = item.version;
      this.selected = item.id;
      this.updateUi();
      this.requestDraw();
      return true;
    });
  }

  /** Someone else changed it: take the server's row, tell the user, forget our undo for it. */
  async onConflict(id, error) {
    let row = error.body && (error.body.annotation || error.body.current);
    if (!row) {
      try {
        row = await this.api.get(id);
      } catch {
        row = null;
      }
    }
    if (this.draft && this.draft.id === id) this.draft = null;
    if (this.selected === "draft") this.selected = null;
    if (row) this.upsertRow(row);
    else this.forget(id);
    this.undoStack = this.undoStack.filter((e) => e.id !== id);
    this.redoStack = this.redoStack.filter((e) => e.id !== id);
    const gone = !row || row.deleted_at;
    this.showMessage(
      "conflict",
      gone ? "This annotation was deleted by someone else — reloaded." : "This annotation was changed by someone else — reloaded the current version.",
    );
    this.updateUi();
    this.requestDraw();
  }

  onGone(id) {
    this.forget(id);
    if (this.selected === id) this.selected = null;
    this.undoStack = this.undoStack.filter((e) => e.id !== id);
    this.redoStack = this.redoStack.filter((e) => e.id !== id);
    this.showMessage("conflict", "This annotation no longer exists.");
    this.requestDraw();
  }

  keepDraft(draft) {
    this.draft = { ...draft, parts: G.polys(draft.geometry) };
    this.selected = "draft";
    this.showMessage("error", `Not saved: ${draft.error}. Fix the outline with the select tool (V), or press Escape to discard it.`, { sticky: true });
    this.updateUi();
    this.requestDraw();
  }

  discardDraft() {
    if (!this.draft) return;
    const id = this.draft.id;
    this.draft = null;
    this.selected = id ?? null;
    this.clearMessage("error");
    this.updateUi();
    this.requestDraw();
  }

  /** Save a changed geometry of the selection (an annotation or the draft). */
  commitGeometry(target, geometry) {
    if (target === "draft") {
      const d = { ...this.draft, geometry, parts: G.polys(geometry) };
      this.draft = d;
      this.requestDraw();
      if (d.id === null) return this.saveNew(geometry, d.classKey);
      const item = this.items.get(d.id);
      if (!item) return this.discardDraft();
      return this.saveUpdate(item, { geometry, label_class: d.classKey !== item.classKey ? d.classKey : undefined });
    }
    const item = this.items.get(target);
    if (item) return this.saveUpdate(item, { geometry });
    return null;
  }

  deleteSelected() {
    if (this.drawing) return this.cancelDrawing();
    if (this.selected === "draft") return this.discardDraft();
    if (this.selected === null) return null;
    return this.saveDelete(this.selected);
  }

  // ---- undo and redo --------------------------------------------------------------------------

  undo() {
    if (this.drawing?.type === "polygon" && this.drawing.points.length > 1) {
      this.drawing.points.pop();
      this.requestDraw();
      return null;
    }
    if (this.drawing) return this.cancelDrawing();
    if (this.draft) return this.discardDraft();
    const entry = this.undoStack.pop();
    if (!entry) return null;
    this.updateUi();
    return this.enqueue(async () => {
      const ok = await this.replay(entry, "undo");
      if (ok) this.redoStack.push(entry);
    });
  }

  redo() {
    if (this.drawing) return null;
    const entry = this.redoStack.pop();
    if (!entry) return null;
    this.updateUi();
    return this.enqueue(async () => {
      const ok = await this.replay(entry, "redo");
      if (ok) this.undoStack.push(entry);
    });
  }

  /** Apply an undo entry backwards or forwards; runs inside the queue (awaits nested saves). */
  async replay(entry, direction) {
    const id = entry.id;
    if (entry.type === "create" || entry.type === "delete") {
      const remove = (entry.type === "create") === (direction === "undo");
      return remove ? this.directDelete(id, entry) : this.directRestore(id, entry);
    }
    if (entry.type === "update") {
      const state = direction === "undo" ? entry.before : entry.after;
      return this.directUpdate(id, state, entry);
    }
    return false;
  }

  async directDelete(id, entry) {
    const item = this.items.get(id);
    try {
      const row = await this.api.remove(id, item ? item.version : entry.version);
      entry.version = row && row.version ? row.version : (entry.version || 0) + 1;
    } catch (error) {
      return this.replayFailed(id, error);
    }
    this.forget(id);
    if (this.selected === id) this.selected = null;
    this.updateUi();
    this.requestDraw();
    return true;
  }

  async directRestore(id, entry) {
    try {
      const row = await this.api.restore(id, entry.version);
      const item = this.upsertRow(row);
      entry.version = item.version;
      this.selected = id;
    } catch (error) {
      return this.replayFailed(id, error);
    }
    this.updateUi();
    this.requestDraw();
    return true;
  }

  async directUpdate(id, state, entry) {
    let item = this.items.get(id);
    if (!item) {
      try {
        item = this.upsertRow(await this.api.get(id));
      } catch (error) {
        return this.replayFailed(id, error);
      }
    }
    try {
      const row = await this.api.update(id, item.version, { geometry: state.geometry, label_class: state.label_class });
      this.upsertRow(row);
      entry.version = row.version;
      this.selected = id;
    } catch (error) {
      return this.replayFailed(id, error);
    }
    this.updateUi();
    this.requestDraw();
    return true;
  }

  async replayFailed(id, error) {
    if (!(error instanceof ApiError)) throw error;
    if (error.status === 409) await this.onConflict(id, error);
    else if (error.status === 404) this.onGone(id);
    else this.showMessage("error", `Could not undo: ${error.message}`);
    return false;
  }

  // ---- pointer input --------------------------------------------------------------------------

  isDrawingTool() {
    return DRAWING_TOOLS.has(this.toolName);
  }

  onPress(e) {
    this.ownGesture = false;
    if (!this.ready) return;
    const t = this.T();
    if (!t) return;
    const s = this.screenPoint(e);
    const p = this.toImage(s, t);
    const tool = this.toolName;
    if (tool === "freehand") this.drawing = { type: "freehand", points: [this.clamp(p)] };
    else if (tool === "rectangle") this.drawing = { type: "rectangle", start: this.clamp(p), end: this.clamp(p) };
    else if (tool === "brush" || tool === "erase") {
      if (tool === "erase" && !this.brushTarget()) {
        this.showMessage("info", "Select a region first, then erase from it.");
        return;
      }
      this.drawing = { type: tool, points: [p], radius: this.brushPx / t.scale, scale: t.scale };
    } else if (tool === "select") {
      const handle = this.handleAt(s);
      if (handle) {
        const parts = copyParts(this.selectedParts());
        if (handle.kind === "mid") {
          parts[handle.part][handle.ring].splice(handle.index + 1, 0, this.clamp(p));
          handle.index += 1;
        }
        this.drag = { target: this.selected, parts, handle, moved: handle.kind === "mid" };
      }
    }
    this.ownGesture = Boolean(this.drag || (this.drawing && this.drawing.type !== "polygon"));
    this.requestDraw();
  }

  onDrag(e) {
    if (!this.drawing && !this.drag) return;
    if (this.drawing?.type === "polygon") return; // dragging pans while placing polygon vertices
    e.preventDefaultAction = true;
    const t = this.T();
    const s = this.screenPoint(e);
    const p = this.toImage(s, t);
    this.hover = s;
    const d = this.drawing;
    if (this.drag) {
      const { part, ring, index } = this.drag.handle;
      this.drag.parts[part][ring][index] = this.clamp(p);
      this.drag.moved = true;
    } else if (d.type === "freehand") {
      const last = this.toScreen(d.points[d.points.length - 1], t);
      if (Math.hypot(s[0] - last[0], s[1] - last[1]) >= 2) d.points.push(this.clamp(p));
    } else if (d.type === "rectangle") {
      d.end = this.clamp(p);
    } else if (d.type === "brush" || d.type === "erase") {
      const last = this.toScreen(d.points[d.points.length - 1], t);
      if (Math.hypot(s[0] - last[0], s[1] - last[1]) >= 2) d.points.push(p);
    }
    this.updateReadout();
    this.requestDraw();
  }

  onRelease() {
    if (this.drag) {
      const drag = this.drag;
      this.drag = null;
      if (drag.moved) this.commitGeometry(drag.target, G.toGeoJSON(drag.parts));
      this.requestDraw();
      return;
    }
    const d = this.drawing;
    if (!d || d.type === "polygon") return;
    this.drawing = null;
    const t = this.T();
    if (d.type === "freehand") {
      const ring = G.dedupe(G.simplifyLine(d.points, 0.6 / t.scale));
      if (ring.length >= 3 && Math.abs(G.ringSignedArea(ring)) * t.scale * t.scale >= 16) this.finishShape(G.polygonFromRing(ring));
    } else if (d.type === "rectangle") {
      const [x0, x1] = [Math.min(d.start[0], d.end[0]), Math.max(d.start[0], d.end[0])];
      const [y0, y1] = [Math.min(d.start[1], d.end[1]), Math.max(d.start[1], d.end[1])];
      if ((x1 - x0) * t.scale >= 3 && (y1 - y0) * t.scale >= 3) {
        this.finishShape(G.polygonFromRing([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]));
      }
    } else if (d.type === "brush" || d.type === "erase") {
      this.applyBrushStroke(d);
    }
    this.updateReadout();
    this.requestDraw();
  }

  onClick(e) {
    if (!this.ready) return;
    e.preventDefaultAction = true;
    if (!e.quick) return;
    const t = this.T();
    const s = this.screenPoint(e);
    const p = this.toImage(s, t);
    if (this.toolName === "polygon") {
      const d = this.drawing;
      if (!d) {
        this.drawing = { type: "polygon", points: [this.clamp(p)] };
      } else {
        const first = this.toScreen(d.points[0], t);
        const last = this.toScreen(d.points[d.points.length - 1], t);
        if (d.points.length >= 3 && Math.hypot(s[0] - first[0], s[1] - first[1]) <= CLOSE_PX) {
          this.finishPolygon();
        } else if (Math.hypot(s[0] - last[0], s[1] - last[1]) > 1.5) {
          d.points.push(this.clamp(p));
        }
      }
      this.updateUi();
      this.requestDraw();
    } else if (this.toolName === "select") {
      if (e.originalEvent?.altKey) {
        const handle = this.handleAt(s);
        if (handle?.kind === "vertex") return this.removeVertex(handle);
      }
      this.select(this.hitTest(p, t));
    }
    return undefined;
  }

  onDoubleClick(e) {
    if (this.drawing?.type === "polygon") {
      e.preventDefaultAction = true;
      const t = this.T();
      const pts = this.drawing.points;
      // The double click's own clicks may have added a vertex where it ends: drop near-duplicates.
      while (pts.length > 1) {
        const a = this.toScreen(pts[pts.length - 1], t);
        const b = this.toScreen(pts[pts.length - 2], t);
        if (Math.hypot(a[0] - b[0], a[1] - b[1]) <= 4) pts.pop();
        else break;
      }
      if (pts.length >= 3) this.finishPolygon();
      else this.cancelDrawing();
      return;
    }
    if (this.isDrawingTool()) e.preventDefaultAction = true;
  }

  finishPolygon() {
    const d = this.drawing;
    this.drawing = null;
    if (!d || d.points.length < 3) return this.requestDraw();
    this.finishShape(G.polygonFromRing(G.dedupe(d.points)));
    this.updateReadout();
    this.requestDraw();
    return undefined;
  }

  finishShape(geometry) {
    if (this.draft && this.draft.id === null) this.draft = null;
    this.saveNew(geometry, this.classKey);
  }

  cancelDrawing() {
    this.drawing = null;
    this.drag = null;
    this.updateReadout();
    this.requestDraw();
  }

  /** The region the brush paints into / erases from: the selection, if any. */
  brushTarget() {
    if (this.selected === "draft" && this.draft) return "draft";
    if (this.selected !== null && this.items.has(this.selected)) return this.selected;
    return null;
  }

  applyBrushStroke(d) {
    const target = this.brushTarget();
    const mode = d.type === "brush" ? "add" : "erase";
    const base = target === "draft" ? this.draft.geometry : target !== null ? this.items.get(target).geometry : null;
    let result;
    try {
      result = G.applyBrush(base, d.points, d.radius, mode, { width: this.width, height: this.height, minArea: (1.5 / d.scale) ** 2 });
    } catch (error) {
      console.error(error);
      this.showMessage("error", "The brush stroke could not be combined with this region.");
      return;
    }
    if (target === null) {
      if (result) this.finishShape(result);
    } else if (!result) {
      if (target === "draft") this.discardDraft();
      else this.saveDelete(target);
    } else if (target === "draft") {
      this.draft = { ...this.draft, geometry: result, parts: G.polys(result) };
      this.commitGeometry("draft", result);
    } else {
      this.commitGeometry(target, result);
    }
  }

  removeVertex(handle) {
    const parts = copyParts(this.selectedParts());
    const ring = parts[handle.part][handle.ring];
    if (ring.length <= 3) {
      this.showMessage("info", "A ring needs at least three vertices.");
      return;
    }
    ring.splice(handle.index, 1);
    this.commitGeometry(this.selected, G.toGeoJSON(parts));
  }

  /** The smallest visible annotation under p (or within a few screen px of its outline). */
  hitTest(p, t) {
    const tol = 4 / t.scale;
    let best = null;
    let bestArea = Infinity;
    const consider = (id, parts, bbox, area) => {
      if (p[0] < bbox[0] - tol || p[0] > bbox[2] + tol || p[1] < bbox[1] - tol || p[1] > bbox[3] + tol) return;
      if (!G.pointInParts(p[0], p[1], parts) && G.distanceToParts(p, parts) > tol) return;
      if (area < bestArea) {
        best = id;
        bestArea = area;
      }
    };
    if (this.draft) consider("draft", this.draft.parts, G.bounds(this.draft.geometry), G.geometryArea(this.draft.geometry));
    if (this.visible) {
      for (const item of this.items.values()) {
        if (this.hiddenAuthors.has(item.author) || (this.draft && this.draft.id === item.id)) continue;
        consider(item.id, item.parts, item.bbox, item.area);
      }
    }
    return best;
  }

  selectedParts() {
    if (this.drag) return this.drag.parts;
    if (this.selected === "draft") return this.draft ? this.draft.parts : [];
    const item = this.selected === null ? null : this.items.get(this.selected);
    return item ? item.parts : [];
  }

  /** Vertex and edge-midpoint handles of the selection that are on screen. */
  handles(t) {
    if (this.toolName !== "select" || this.selected === null) return [];
    const parts = this.selectedParts();
    const w = this.viewer.canvas.clientWidth;
    const h = this.viewer.canvas.clientHeight;
    const out = [];
    const on = (s) => s[0] >= -10 && s[1] >= -10 && s[0] <= w + 10 && s[1] <= h + 10;
    parts.forEach((rings, part) =>
      rings.forEach((ring, r) => {
        const screen = ring.map((p) => this.toScreen(p, t));
        screen.forEach((s, i) => {
          if (on(s)) out.push({ kind: "vertex", part, ring: r, index: i, s });
          const n = screen[(i + 1) % screen.length];
          if (Math.hypot(n[0] - s[0], n[1] - s[1]) >= 28) {
            const m = [(s[0] + n[0]) / 2, (s[1] + n[1]) / 2];
            if (on(m)) out.push({ kind: "mid", part, ring: r, index: i, s: m });
          }
        });
      }),
    );
    return out.filter((hd) => hd.kind === "vertex").length > MAX_HANDLES ? [] : out;
  }

  handleAt(s) {
    const t = this.transform || this.T();
    let best = null;
    let bestD = Infinity;
    for (const hd of this.handles(t)) {
      const d = Math.hypot(hd.s[0] - s[0], hd.s[1] - s[1]);
      const reach = hd.kind === "vertex" ? HANDLE_PX : HANDLE_PX - 1;
      if (d <= reach && (d < bestD || (best?.kind === "mid" && hd.kind === "vertex" && d <= bestD + 2))) {
        best = hd;
        bestD = d;
      }
    }
    return best ? { ...best } : null;
  }

  // ---- keyboard -------------------------------------------------------------------------------

  handleKey(e) {
    if (!this.ready || e.defaultPrevented) return;
    const target = e.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
      if (!(target.type === "range" || target.type === "checkbox")) return;
    }
    const key = e.key;
    const lower = key.length === 1 ? key.toLowerCase() : key;
    const mod = e.ctrlKey || e.metaKey;
    let handled = true;
    if (mod && !e.altKey && lower === "z") {
      if (e.shiftKey) this.redo();
      else this.undo();
    } else if (mod && !e.altKey && lower === "y") {
      this.redo();
    } else if (mod || e.altKey) {
      handled = false;
    } else if (key === "Escape") {
      if (this.drawing || this.drag) this.cancelDrawing();
      else if (this.draft) this.discardDraft();
      else if (this.selected !== null) this.select(null);
      else handled = false;
    } else if (key === "Enter") {
      if (this.drawing?.type === "polygon") this.finishPolygon();
      else handled = false;
    } else if (key === "Delete" || key === "Backspace") {
      if (this.drawing?.type === "polygon" && key === "Backspace") this.undo();
      else this.deleteSelected();
    } else if (key === "Home") {
      this.viewer.viewport.goHome();
    } else if (key === "[" || key === "]") {
      this.setBrush(this.brushPx + (key === "]" ? 2 : -2));
    } else {
      const cls = this.classes.find((c) => this.shortcutFor(c) === lower);
      const tool = TOOLS.find((tl) => tl.key === lower);
      if (cls) this.setClass(cls.key);
      else if (tool && !e.shiftKey) this.tool(tool.name);
      else handled = false;
    }
    if (handled) {
      e.preventDefault();
      e.stopPropagation();
    }
  }

  // ---- layers and UI --------------------------------------------------------------------------

  authors() {
    const counts = new Map();
    for (const item of this.items.values()) counts.set(item.author, (counts.get(item.author) || 0) + 1);
    if (this.user && !counts.has(this.user)) counts.set(this.user, 0);
    return [...counts.entries()].sort((a, b) => (a[0] === this.user ? -1 : b[0] === this.user ? 1 : a[0].localeCompare(b[0])));
  }

  /** Show or hide one author's annotations ("" is imported, authorless). */
  setAuthorVisible(author, shown) {
    if (shown) this.hiddenAuthors.delete(author);
    else this.hiddenAuthors.add(author);
    const item = this.selected !== null && this.selected !== "draft" ? this.items.get(this.selected) : null;
    if (item && this.hiddenAuthors.has(item.author)) this.selected = null;
    this.updateUi();
    this.requestDraw();
  }

  setVisible(shown) {
    this.visible = shown;
    if (!shown && this.selected !== "draft") this.selected = null;
    this.updateUi();
    this.requestDraw();
  }

  onLayerToggle(event) {
    const input = event.target;
    if (input.name === "all") this.setVisible(input.checked);
    else if (input.dataset.author !== undefined) this.setAuthorVisible(input.dataset.author, input.checked);
  }

  renderLayers() {
    if (!this.layersPanel) return;
    const body = this.layersPanel.querySelector(".ns-annot-layers-body");
    const authors = this.authors();
    const key = JSON.stringify([this.visible, authors, [...this.hiddenAuthors]]);
    if (key === this.layersKey) return;
    this.layersKey = key;
    body.innerHTML = "";
    const all = el("label", { class: "ns-annot-layer ns-annot-layer-all" });
    all.innerHTML = `<input type="checkbox" name="all"${this.visible ? " checked" : ""}> <span>Show annotations</span>`;
    body.appendChild(all);
    for (const [author, n] of authors) {
      const row = el("label", { class: "ns-annot-layer" });
      const name = author ? (author === this.user ? `${author} (you)` : author) : "Imported";
      row.innerHTML = `<input type="checkbox" data-author=""${this.hiddenAuthors.has(author) ? "" : " checked"}${this.visible ? "" : " disabled"}> <span class="ns-annot-layer-name"></span> <span class="ns-annot-layer-count">${n}</span>`;
      row.querySelector("input").dataset.author = author;
      row.querySelector(".ns-annot-layer-name").textContent = name;
      body.appendChild(row);
    }
    const hidden = !this.visible || this.hiddenAuthors.size > 0;
    this.layersPanel.querySelector("summary").textContent = hidden ? "Layers (filtered)" : "Layers";
  }

  updateUi() {
    if (!this.toolbar) return;
    for (const b of this.toolbar.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", String(b.dataset.tool === this.toolName));
    for (const b of this.toolbar.querySelectorAll(".ns-annot-class")) b.setAttribute("aria-checked", String(b.dataset.key === this.classKey));
    const cls = this.classByKey.get(this.classKey);
    if (this.classLabel) {
      this.classLabel.textContent = cls ? cls.name : "";
      this.classLabel.style.setProperty("--class-colour", cls ? cls.colour : "transparent");
    }
    this.toolbar.dataset.tool = this.toolName;
    const brushy = this.toolName === "brush" || this.toolName === "erase";
    this.toolbar.querySelector(".ns-annot-brush")?.toggleAttribute("hidden", !brushy);
    if (this.undoButton) this.undoButton.disabled = !this.undoStack.length && !this.drawing && !this.draft;
    if (this.redoButton) this.redoButton.disabled = !this.redoStack.length;
    if (this.deleteButton) this.deleteButton.disabled = this.selected === null;
    this.toolbar.dataset.saving = this.pending > 0 ? "1" : "0";
    this.updateReadout();
    this.renderLayers();
  }

  /** Class, area in mm² and author of the selection, or the live area of the shape being drawn. */
  updateReadout() {
    if (!this.readout) return;
    let text = "";
    let area = null;
    let classKey = null;
    let state = "idle";
    const d = this.drawing;
    if (d && (d.type === "polygon" || d.type === "freehand" || d.type === "rectangle")) {
      const ring = d.type === "rectangle" ? [d.start, [d.end[0], d.start[1]], d.end, [d.start[0], d.end[1]]] : d.points.slice();
      if (d.type === "polygon" && this.hover && this.transform) ring.push(this.clamp(this.toImage(this.hover)));
      area = ring.length >= 3 ? Math.abs(G.ringSignedArea(ring)) : 0;
      classKey = this.classKey;
      state = "drawing";
      text = "Drawing";
    } else {
      const info = this.selectedInfo();
      if (info) {
        area = info.areaPx;
        classKey = info.classKey;
        state = info.draft ? "draft" : "selected";
        text = info.draft ? "Not saved" : info.author ? `by ${info.author}` : "imported";
      }
    }
    if (state === "idle") {
      this.readout.dataset.state = "idle";
      delete this.readout.dataset.areaMm2;
      this.readout.textContent = this.ready ? `${this.count()} annotation${this.count() === 1 ? "" : "s"} loaded` : "";
      return;
    }
    const mm2 = G.areaMm2(area, this.mpp);
    const cls = this.classByKey.get(classKey);
    this.readout.dataset.state = state;
    if (mm2 !== null) this.readout.dataset.areaMm2 = String(mm2);
    else delete this.readout.dataset.areaMm2;
    this.readout.dataset.areaPx = String(area);
    this.readout.innerHTML = "";
    const swatch = el("span", { class: "ns-annot-swatch", style: `--class-colour: ${cls ? cls.colour : "#999"}` });
    const name = el("span", { class: "ns-annot-readout-class" });
    name.textContent = cls ? cls.name : classKey || "";
    const areaEl = el("strong", { class: "ns-annot-area" });
    if (state === "draft" && !(area > 0)) areaEl.textContent = "no area";
    else areaEl.textContent = mm2 !== null ? G.formatArea(mm2) : `${Math.round(area).toLocaleString()} px² (scale unknown)`;
    const who = el("span", { class: "ns-annot-readout-meta" });
    who.textContent = text;
    this.readout.append(swatch, name, areaEl, who);
  }

  showMessage(kind, text, { sticky = false } = {}) {
    clearTimeout(this.messageTimer);
    this.message.dataset.kind = kind;
    this.message.setAttribute("role", kind === "info" ? "status" : "alert");
    this.message.querySelector(".ns-annot-message-text").textContent = text;
    this.message.hidden = false;
    if (!sticky && kind !== "error") this.messageTimer = setTimeout(() => this.clearMessage(), kind === "conflict" ? 9000 : 4000);
  }

  clearMessage(kind = null) {
    if (kind && this.message.dataset.kind !== kind) return;
    clearTimeout(this.messageTimer);
    this.message.hidden = true;
  }

  // ---- drawing --------------------------------------------------------------------------------

  requestDraw() {
    this.dirty = true;
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  /**
   * The item's outline as a Path2D simplified for `level` (tolerance 2^level px; 0 = exact),
   * cached. Past this frame's build budget an outline cached at a neighbouring level stands in
   * and the next frame carries on, so crossing a zoom level never stalls an animation.
   */
  pathFor(item, level, tolerance) {
    let path = item.paths.get(level);
    if (!path && item.paths.size && performance.now() > this.buildDeadline) {
      let nearest = Infinity;
      for (const [k, cached] of item.paths) {
        if (Math.abs(k - level) < nearest) {
          nearest = Math.abs(k - level);
          path = cached;
        }
      }
      this.incomplete = true;
      return path;
    }
    if (!path) {
      path = new Path2D();
      for (const rings of G.simplifyParts(item.parts, tolerance)) {
        for (const ring of rings) {
          path.moveTo(ring[0][0], ring[0][1]);
          for (let i = 1; i < ring.length; i++) path.lineTo(ring[i][0], ring[i][1]);
          path.closePath();
        }
      }
      if (item.paths.size > 6) item.paths.clear();
      item.paths.set(level, path);
    }
    return path;
  }

  classStyle(key) {
    const cls = this.classByKey.get(key);
    const colour = cls ? cls.colour : "#2196f3";
    return { colour, kind: cls ? cls.kind : "", fill: rgba(colour, 0.16), fillSelected: rgba(colour, 0.3) };
  }

  draw() {
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = this.viewer.canvas.clientWidth;
    const h = this.viewer.canvas.clientHeight;
    let resized = false;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
      resized = true;
    }
    const t = this.T();
    // Several viewer events can fire in one frame: redraw only when the view or the state changed.
    const key = t ? `${t.a},${t.b},${t.c},${t.d},${t.e},${t.f}` : "";
    if (!resized && !this.dirty && key === this.drawnKey) return;
    this.drawnKey = key;
    this.dirty = false;
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!t || !this.ready) return;
    this.buildDeadline = performance.now() + 8;
    this.incomplete = false;
    const s = t.scale;
    const view = this.viewBox();
    const level = Math.floor(Math.log2(1 / s));
    const tolerance = level >= 1 ? 2 ** level : 0;
    ctx.setTransform(dpr * t.a, dpr * t.b, dpr * t.c, dpr * t.d, dpr * t.e, dpr * t.f);
    ctx.lineJoin = "round";
    ctx.lineCap = "round";

    let drawn = 0;
    let selectedItem = null;
    if (this.visible) {
      for (const item of this.items.values()) {
        if (this.hiddenAuthors.has(item.author) || (this.draft && this.draft.id === item.id)) continue;
        if (!G.boxesIntersect(item.bbox, view)) continue;
        if (item.id === this.selected) {
          selectedItem = item;
          continue;
        }
        const style = this.classStyle(item.classKey);
        drawn++;
        const size = Math.max(item.bbox[2] - item.bbox[0], item.bbox[3] - item.bbox[1]) * s;
        if (size < 3) {
          ctx.fillStyle = style.colour;
          const m = 1.5 / s;
          ctx.fillRect(item.bbox[0] - m, item.bbox[1] - m, item.bbox[2] - item.bbox[0] + 2 * m, item.bbox[3] - item.bbox[1] + 2 * m);
          continue;
        }
        const path = this.pathFor(item, tolerance ? level : 0, tolerance);
        ctx.fillStyle = style.fill;
        ctx.fill(path, "evenodd");
        ctx.strokeStyle = style.colour;
        ctx.lineWidth = 1.75 / s;
        ctx.setLineDash(style.kind === "exclude" ? [6 / s, 4 / s] : []);
        ctx.stroke(path);
      }
    }
    ctx.setLineDash([]);
    if (selectedItem) {
      const path = this.pathFor(selectedItem, tolerance ? level : 0, tolerance);
      this.strokeSelected(ctx, path, this.classStyle(selectedItem.classKey), s, this.drag && this.drag.target === selectedItem.id);
      drawn++;
    }
    if (this.draft) {
      const parts = this.drag && this.drag.target === "draft" ? this.drag.parts : this.draft.parts;
      const path = new Path2D();
      for (const rings of parts) for (const ring of rings) this.tracePath(path, ring, true);
      ctx.fillStyle = "rgba(211, 47, 47, 0.14)";
      ctx.fill(path, "evenodd");
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 4 / s;
      ctx.stroke(path);
      ctx.strokeStyle = "#c62828";
      ctx.lineWidth = 2 / s;
      ctx.setLineDash([7 / s, 4 / s]);
      ctx.stroke(path);
      ctx.setLineDash([]);
    }
    if (this.drag && this.drag.target !== "draft" && selectedItem && this.drag.target === selectedItem.id) {
      const path = new Path2D();
      for (const rings of this.drag.parts) for (const ring of rings) this.tracePath(path, ring, true);
      this.strokeSelected(ctx, path, this.classStyle(selectedItem.classKey), s, false);
    }
    this.drawInProgress(ctx, t, dpr);
    this.drawHandles(ctx, t, dpr);
    this.drawBrushCursor(ctx, t, dpr);
    this.canvas.dataset.drawn = String(drawn);
    if (this.incomplete) this.requestDraw();
  }

  tracePath(path, ring, close) {
    if (!ring.length) return;
    path.moveTo(ring[0][0], ring[0][1]);
    for (let i = 1; i < ring.length; i++) path.lineTo(ring[i][0], ring[i][1]);
    if (close) path.closePath();
  }

  strokeSelected(ctx, path, style, s, faded) {
    ctx.fillStyle = faded ? style.fill : style.fillSelected;
    ctx.fill(path, "evenodd");
    ctx.strokeStyle = "rgba(255, 255, 255, 0.95)";
    ctx.lineWidth = 4.5 / s;
    ctx.stroke(path);
    ctx.strokeStyle = style.colour;
    ctx.lineWidth = 2.25 / s;
    ctx.setLineDash(style.kind === "exclude" ? [6 / s, 4 / s] : []);
    ctx.stroke(path);
    ctx.setLineDash([]);
  }

  drawInProgress(ctx, t, dpr) {
    const d = this.drawing;
    if (!d) return;
    const s = t.scale;
    const style = this.classStyle(this.classKey);
    if (d.type === "brush" || d.type === "erase") {
      const path = new Path2D();
      this.tracePath(path, d.points, false);
      if (d.points.length === 1) path.lineTo(d.points[0][0] + 0.01, d.points[0][1]);
      ctx.strokeStyle = d.type === "brush" ? rgba(style.colour, 0.45) : "rgba(255, 255, 255, 0.55)";
      ctx.lineWidth = 2 * d.radius;
      ctx.stroke(path);
      return;
    }
    let ring;
    let close = true;
    if (d.type === "rectangle") ring = [d.start, [d.end[0], d.start[1]], d.end, [d.start[0], d.end[1]]];
    else if (d.type === "freehand") ring = d.points;
    else {
      ring = d.points.slice();
      if (this.hover) ring.push(this.toImage(this.hover, t));
      close = false;
    }
    const path = new Path2D();
    this.tracePath(path, ring, close);
    if (close || ring.length >= 3) {
      const fillPath = new Path2D();
      this.tracePath(fillPath, ring, true);
      ctx.fillStyle = style.fill;
      ctx.fill(fillPath);
    }
    ctx.strokeStyle = "rgba(255, 255, 255, 0.9)";
    ctx.lineWidth = 4 / s;
    ctx.stroke(path);
    ctx.strokeStyle = style.colour;
    ctx.lineWidth = 2 / s;
    ctx.stroke(path);
    if (d.type === "polygon") {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      const first = this.toScreen(d.points[0], t);
      const near = this.hover && d.points.length >= 3 && Math.hypot(this.hover[0] - first[0], this.hover[1] - first[1]) <= CLOSE_PX;
      d.points.forEach((p, i) => {
        const [x, y] = this.toScreen(p, t);
        ctx.beginPath();
        ctx.arc(x, y, i === 0 ? (near ? 7 : 5) : 3.5, 0, 2 * Math.PI);
        ctx.fillStyle = i === 0 && near ? style.colour : "#ffffff";
        ctx.fill();
        ctx.lineWidth = 1.5;
        ctx.strokeStyle = style.colour;
        ctx.stroke();
      });
      ctx.setTransform(dpr * t.a, dpr * t.b, dpr * t.c, dpr * t.d, dpr * t.e, dpr * t.f);
    }
  }

  drawHandles(ctx, t, dpr) {
    if (this.toolName !== "select" || this.selected === null || this.drawing) return;
    const handles = this.handles(t);
    if (!handles.length) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const style = this.selected === "draft" ? { colour: "#c62828" } : this.classStyle(this.items.get(this.selected)?.classKey);
    const active = this.drag ? this.drag.handle : null;
    for (const hd of handles) {
      const [x, y] = hd.s;
      if (hd.kind === "mid") {
        ctx.beginPath();
        ctx.arc(x, y, 3, 0, 2 * Math.PI);
        ctx.fillStyle = "rgba(255, 255, 255, 0.75)";
        ctx.fill();
        ctx.lineWidth = 1;
        ctx.strokeStyle = style.colour;
        ctx.stroke();
      } else {
        const isActive = active && active.part === hd.part && active.ring === hd.ring && active.index === hd.index;
        ctx.fillStyle = isActive ? style.colour : "#ffffff";
        ctx.fillRect(x - 4, y - 4, 8, 8);
        ctx.lineWidth = 1.5;
        ctx.strokeStyle = style.colour;
        ctx.strokeRect(x - 4, y - 4, 8, 8);
      }
    }
  }

  drawBrushCursor(ctx, t, dpr) {
    if ((this.toolName !== "brush" && this.toolName !== "erase") || !this.hover) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const [x, y] = this.hover;
    ctx.beginPath();
    ctx.arc(x, y, this.brushPx, 0, 2 * Math.PI);
    ctx.lineWidth = 3;
    ctx.strokeStyle = "rgba(255, 255, 255, 0.8)";
    ctx.stroke();
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = this.toolName === "erase" ? "#37474f" : this.classStyle(this.classKey).colour;
    ctx.stroke();
  }

  destroy() {
    window.removeEventListener("keydown", this.onKey, true);
    this.canvas.remove();
    this.message.remove();
  }
}

/**
 * Mount the annotation layer on an open viewer: toolbar into `toolbar` (an element or its id),
 * `window.nodescopeAnnotations` for tests and scripts. Resolves to the layer.
 */
export async function mountAnnotations(viewer, { toolbar = "annotation-toolbar", user = null, apiBase = "/api" } = {}) {
  const root = typeof toolbar === "string" ? document.getElementById(toolbar) : toolbar;
  const layer = new AnnotationLayer(viewer, {
    toolbar: root,
    info: viewer.nodescope?.info,
    slideId: Number(root?.dataset.slideId) || viewer.nodescope?.info?.id,
    user: user ?? root?.dataset.user ?? "",
    apiBase: root?.dataset.apiBase || apiBase,
  });
  viewer.nodescope = { ...(viewer.nodescope || {}), annotations: layer };
  window.nodescopeAnnotations = {
    layer,
    tool: (name) => layer.tool(name),
    setClass: (key) => layer.setClass(key),
    count: () => layer.count(),
    undo: () => layer.undo(),
    redo: () => layer.redo(),
    idle: () => layer.idle(),
    selected: () => layer.selectedInfo(),
    select: (id) => layer.select(id),
    /** How annotation `id` is loaded: {simplified, tolerance, version, vertices}, or null. */
    loaded: (id) => {
      const item = layer.items.get(id);
      return item ? { simplified: item.simplified, tolerance: item.tolerance, version: item.version, vertices: G.vertexCount(item.geometry) } : null;
    },
    deleteSelected: () => layer.deleteSelected(),
    refresh: () => layer.refresh({ force: true }),
    showAuthor: (author, shown = true) => layer.setAuthorVisible(author, shown),
    /** An OpenSeadragon.Point (the bundle does not put OpenSeadragon on window). */
    point: (x, y) => new OpenSeadragon.Point(x, y),
    draft: () => (layer.draft ? { id: layer.draft.id, error: layer.draft.error, geometry: layer.draft.geometry } : null),
  };
  await layer.start();
  document.dispatchEvent(new CustomEvent("nodescope:annotations-ready", { detail: { viewer, layer } }));
  return layer;
}
