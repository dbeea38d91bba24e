/**
 * Display window (window/level) for CT node images in the viewer.
 *
 * The tile-source JSON of a node image says whether its values need a window (`windowed`), its
 * default window (`window: {center, width}`) and, for CT, the presets (`windowPresets`). For
 * those, `mountWindowing(viewer, info)` puts a preset selector (plus custom centre/width) in the
 * viewer bar; choosing one sets `info.tileQuery` (`?preset=lung` or `?window=40,400`), which the
 * tile source appends to every tile URL, and reloads the image (`makeTileSource`, from viewer.js).
 * Ultrasound and other plain images get no selector.
 */

/** The tile-URL query for a preset name or a custom {center, width}; "" for the default. */
export function windowQuery(choice) {
  if (!choice) return "";
  if (typeof choice === "string") return `?preset=${encodeURIComponent(choice)}`;
  return `?window=${encodeURIComponent(`${choice.center},${choice.width}`)}`;
}

/**
 * Reload the base image with the new tile URLs: OpenSeadragon keeps each tile's URL once made, so
 * the base item (index 0, under any overlays) is replaced by a fresh one from `makeTileSource()`
 * (the navigator follows). Resolves when the new item is in the world.
 */
function reloadTiles(viewer, makeTileSource) {
  return new Promise((resolve, reject) => {
    viewer.addTiledImage({
      tileSource: makeTileSource(),
      index: 0,
      replace: true,
      success: (event) => resolve(event.item),
      error: (event) => reject(new Error(event.message || "could not reload the image")),
    });
  });
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

/**
 * Mount the window selector for a CT image; returns {element, set(choice)} or null when the image
 * has no presets (ultrasound, 8-bit images, whole slides).
 */
export function mountWindowing(viewer, info, { makeTileSource, host = null } = {}) {
  const presets = info.windowed ? info.windowPresets || [] : [];
  if (!presets.length) return null;
  const bar = host || document.querySelector(".viewer-bar") || viewer.element;
  const form = el("form", { class: "ns-window", "aria-label": "CT window", id: "window-controls" });
  const label = el("label", { for: "window-preset" }, "Window");
  const select = el("select", { id: "window-preset", name: "preset" });
  const fallback = info.window ? ` (${info.window.center}/${info.window.width})` : "";
  select.appendChild(el("option", { value: "" }, `Image default${fallback}`));
  for (const preset of presets) {
    select.appendChild(el("option", { value: preset.name }, `${preset.name.replace("-", " ")} (${preset.center}/${preset.width})`));
  }
  select.appendChild(el("option", { value: "custom" }, "Custom…"));
  const center = el("input", { type: "number", id: "window-center", name: "center", step: "any", "aria-label": "Window centre (HU)", title: "Centre (HU)" });
  const width = el("input", { type: "number", id: "window-width", name: "width", step: "any", min: "1", "aria-label": "Window width (HU)", title: "Width (HU)" });
  const apply = el("button", { type: "submit", class: "ns-window-apply" }, "Apply");
  const custom = el("span", { class: "ns-window-custom" });
  custom.append(center, width, apply);
  custom.hidden = true;
  if (info.window) {
    center.value = String(info.window.center);
    width.value = String(info.window.width);
  }
  form.append(label, select, custom);
  bar.appendChild(form);

  const set = (choice) => {
    const query = windowQuery(choice);
    if (query === (info.tileQuery || "")) return;
    info.tileQuery = query;
    reloadTiles(viewer, makeTileSource)
      .then(() => {
        document.body.dataset.window = query || "default";
      })
      .catch((error) => console.error(error));
  };
  select.addEventListener("change", () => {
    custom.hidden = select.value !== "custom";
    if (select.value === "custom") return;
    set(select.value || null);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const c = Number(center.value);
    const w = Number(width.value);
    if (!Number.isFinite(c) || !Number.isFinite(w) || w <= 0) {
      width.setCustomValidity("Width must be a number above 0");
      width.reportValidity();
      return;
    }
    width.setCustomValidity("");
    set({ center: c, width: w });
  });
  document.body.dataset.window = "default";
  return { element: form, set };
}
