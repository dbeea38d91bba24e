/**
 * Keyboard-first review of a case queue (`data-page="queue"`), of the lab lead's triage list
 * (`data-page="triage"`) and of a node in the slide viewer (`data-page="viewer"`).
 *
 * Queue and triage: the page renders the rows on the server; this script selects a row, posts
 * decisions to `/api/nodes/<id>/decisions/` with the decision the reviewer saw (`based_on`) and
 * patches the rows in place. Keys: j / ↓ next, k / ↑ previous, n confirm negative, p confirm
 * positive, f needs further work, Enter open (queue: the review viewer at the highest-scoring
 * region, heat map on; triage: the case queue), r the next high-scoring region (queue).
 * On a 409 (someone else decided meanwhile) the row shows their decision and nothing of ours is
 * saved; pressing the key again decides on top of what is now shown.
 *
 * Review viewer (`ReviewViewer`): the slide viewer plus a bar. Opening a region in the viewer
 * does not count as viewing it: the viewer reports a region to `/api/nodes/<id>/viewed-regions/`
 * (with the view it showed, which the server checks again) only once its square has been at
 * least `rule.min_inside` inside the view, at `rule.min_zoom` screen px per slide px or closer,
 * with the view resting for `rule.dwell_ms` and its tiles drawn. The case queue hears of each
 * report (BroadcastChannel) and updates its "regions viewed" count. Keys: g next region, n save
 * the region in view as "not tumour" (a hard-negative annotation of the class picked in the bar,
 * through `/api/nodes/<id>/corrections/`).
 */

export const STATUS_LABELS = {
  unreviewed: "Unreviewed",
  confirmed_positive: "Confirmed positive",
  confirmed_negative: "Confirmed negative",
  needs_further_work: "Needs further work",
};

export const KEYMAP = {
  j: "next",
  ArrowDown: "next",
  k: "previous",
  ArrowUp: "previous",
  n: "negative",
  p: "positive",
  f: "further",
  Enter: "open",
  r: "region",
};

/** The viewer opens in one named window, so the queue stays where it is. */
export const VIEWER_WINDOW = "nodescope-viewer";

/** Channel on which the review viewer tells the case queue about regions viewed and corrected. */
export const REVIEW_CHANNEL = "nodescope-review";

/** Keys of the review viewer (OpenSeadragon keeps w a s d r f j k, the heat map h). */
export const VIEWER_KEYMAP = { n: "not-tumour", g: "next-region" };

function channel() {
  return typeof BroadcastChannel === "undefined" ? null : new BroadcastChannel(REVIEW_CHANNEL);
}

function isTyping(target) {
  if (!target || !target.closest) return false;
  return Boolean(target.closest("input, textarea, select, [contenteditable=''], [contenteditable=true], dialog"));
}

/** Which action a keydown means, or null (typing in a field, or with a modifier). */
export function actionFor(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return null;
  if (isTyping(event.target)) return null;
  return KEYMAP[event.key] ?? null;
}

/**
 * The region to open next for a node: the first required region not yet viewed, else the one
 * after `cursor` (cycling through all regions). Returns {region, index} or null.
 */
export function nextRegion(regions, cursor = -1) {
  if (!regions || regions.length === 0) return null;
  const unviewed = regions.findIndex((r) => r.required && !r.viewed);
  if (unviewed >= 0) return { region: regions[unviewed], index: unviewed };
  const index = (cursor + 1) % regions.length;
  return { region: regions[index], index };
}

export class ReviewPage {
  constructor(root) {
    this.root = root;
    this.kind = root.dataset.page;
    this.csrf = root.dataset.csrf;
    this.caseStatus = root.dataset.caseStatus || "open";
    this.isLead = root.dataset.isLead === "1";
    this.rows = Array.from(root.querySelectorAll("tr.review-row"));
    this.message = root.querySelector("#review-message");
    this.note = root.querySelector("#review-note");
    this.dialog = root.querySelector("#further-work-dialog");
    this.busy = false;
    this.index = -1;
    this.regionCursor = new Map();
    const data = document.getElementById("review-queue-data");
    this.data = data ? JSON.parse(data.textContent) : null;
    this.nodes = new Map((this.data?.nodes || []).map((n) => [String(n.id), n]));
  }

  start() {
    this.channel = channel();
    this.channel?.addEventListener("message", (event) => this.onViewerMessage(event.data));
    document.addEventListener("keydown", (event) => this.onKey(event));
    this.root.addEventListener("click", (event) => this.onClick(event));
    this.dialog?.querySelector("[data-close]")?.addEventListener("click", () => this.dialog.close());
    this.root.querySelector("#sign-off-button")?.addEventListener("click", () => this.signOff());
    this.root.querySelector("#reopen-button")?.addEventListener("click", () => this.reopen());
    const wanted = location.hash.startsWith("#node-") ? document.getElementById(location.hash.slice(1)) : null;
    const first = wanted ? this.rows.indexOf(wanted) : 0;
    if (this.rows.length) this.select(Math.max(0, first));
    this.refreshSignOff();
    document.body.dataset.reviewReady = "1";
  }

  // ---- selection ------------------------------------------------------------------------------

  get row() {
    return this.rows[this.index] || null;
  }

  select(index) {
    if (!this.rows.length) return;
    const clamped = Math.min(Math.max(index, 0), this.rows.length - 1);
    this.row?.setAttribute("aria-selected", "false");
    this.row?.classList.remove("selected");
    this.index = clamped;
    this.row.setAttribute("aria-selected", "true");
    this.row.classList.add("selected");
    this.row.scrollIntoView?.({ block: "nearest" });
    document.body.dataset.selectedNode = this.row.dataset.nodeId;
  }

  // ---- events ---------------------------------------------------------------------------------

  onKey(event) {
    const action = actionFor(event);
    if (!action || !this.rows.length) return;
    if (action === "open" && event.target.closest?.("a, button")) return; // let Enter follow them
    event.preventDefault();
    switch (action) {
      case "next":
        this.select(this.index + 1);
        break;
      case "previous":
        this.select(this.index - 1);
        break;
      case "negative":
        this.decide(this.row, "confirmed_negative");
        break;
      case "positive":
        this.decide(this.row, "confirmed_positive");
        break;
      case "further":
        this.askFurtherWork(this.row);
        break;
      case "open":
        this.open(this.row);
        break;
      case "region":
        this.openNextRegion(this.row);
        break;
    }
  }

  onClick(event) {
    const button = event.target.closest?.("[data-decide]");
    const row = event.target.closest?.("tr.review-row");
    if (row) this.select(this.rows.indexOf(row));
    if (button && row) {
      event.preventDefault();
      if (button.dataset.decide === "needs_further_work") this.askFurtherWork(row);
      else this.decide(row, button.dataset.decide);
      return;
    }
    const link = event.target.closest?.("a[data-open-viewer]");
    if (link && row) {
      event.preventDefault();
      this.open(row);
    }
  }

  say(text, kind = "info") {
    if (!this.message) return;
    this.message.textContent = text;
    this.message.dataset.kind = kind;
  }

  // ---- API ------------------------------------------------------------------------------------

  async post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      keepalive: true, // a region recorded as the viewer opens in this tab still arrives
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": this.csrf },
      body: JSON.stringify(body),
    });
    let data = {};
    try {
      data = await response.json();
    } catch {
      /* not JSON */
    }
    return { status: response.status, data };
  }

  // ---- decisions ------------------------------------------------------------------------------

  askFurtherWork(row) {
    if (!row || !this.dialog) return;
    const form = this.dialog.querySelector("form");
    form.reset();
    form.onsubmit = (event) => {
      event.preventDefault();
      const kind = this.dialog.querySelector("#further-work-kind").value;
      const note = this.dialog.querySelector("#further-work-note").value;
      this.dialog.close();
      this.decide(row, "needs_further_work", { further_work: kind, note });
    };
    this.dialog.showModal();
    this.dialog.querySelector("#further-work-kind").focus();
  }

  async decide(row, status, extra = {}) {
    if (!row || this.busy) return;
    const label = row.querySelector(".node-label")?.textContent.trim() || `node ${row.dataset.nodeId}`;
    const body = {
      status,
      based_on: row.dataset.decisionId ? Number(row.dataset.decisionId) : null,
      note: this.note?.value || "",
      ...extra,
    };
    if (this.caseStatus === "signed off") {
      if (!this.isLead) {
        this.say(`The case is signed off: only a lab lead can amend ${label}.`, "error");
        return;
      }
      const reason = window.prompt(`The case is signed off. Reason for amending ${label}:`);
      if (!reason) return;
      body.reason = reason;
    }
    this.busy = true;
    row.classList.add("pending");
    try {
      const { status: code, data } = await this.post(`/api/nodes/${row.dataset.nodeId}/decisions/`, body);
      if (code === 201) {
        this.applyDecision(row, data);
        if (this.note) this.note.value = "";
        this.say(`${label}: ${STATUS_LABELS[data.status].toLowerCase()}.`, "ok");
        if (this.rows.indexOf(row) === this.index) this.select(this.index + 1);
      } else if (code === 409 && data.code === "stale") {
        this.applyDecision(row, data.current);
        const who = data.current ? `${data.current.user} decided ${STATUS_LABELS[data.current.status].toLowerCase()}` : "the decision changed";
        this.say(`${label} changed meanwhile: ${who}. Yours was not saved; press again to decide on top of it.`, "warn");
      } else if (data.code === "regions_not_viewed") {
        this.say(`${data.detail} Press r to open the next region.`, "error");
      } else {
        this.say(data.detail || `Could not save the decision (HTTP ${code}).`, "error");
      }
    } catch (error) {
      this.say(`Could not save the decision: ${error.message || error}`, "error");
    } finally {
      row.classList.remove("pending");
      this.busy = false;
      document.body.dataset.reviewIdle = String(Date.now());
    }
  }

  applyDecision(row, decision) {
    row.dataset.decisionId = decision ? String(decision.id) : "";
    row.dataset.status = decision ? decision.status : "unreviewed";
    const badge = row.querySelector(".status .badge.status");
    if (badge) {
      badge.className = `badge status status-${row.dataset.status}`;
      badge.textContent = STATUS_LABELS[row.dataset.status];
    }
    const by = row.querySelector(".decided-by");
    if (by) {
      by.textContent = decision ? `${decision.user} ` : "—";
      if (decision) {
        const when = document.createElement("span");
        when.className = "muted";
        when.textContent = new Date(decision.created_at).toLocaleString();
        by.appendChild(when);
      }
    }
    const node = this.nodes.get(row.dataset.nodeId);
    if (node) {
      node.status = row.dataset.status;
      node.decision = decision;
    }
    this.refreshSignOff();
  }

  refreshSignOff() {
    const button = this.root.querySelector("#sign-off-button");
    if (!button) return;
    const settled = this.rows.length > 0 && this.rows.every((r) => ["confirmed_positive", "confirmed_negative"].includes(r.dataset.status));
    button.disabled = !settled;
  }

  // ---- viewer and regions ---------------------------------------------------------------------

  openViewer(url) {
    const win = window.open(url, VIEWER_WINDOW);
    if (!win) location.href = url; // pop-ups blocked: open it here
  }

  /** A message from a review viewer: {type: "viewed", node, region} or {type: "corrected", …}. */
  onViewerMessage(message) {
    if (!message || message.type !== "viewed") return;
    const node = this.nodes.get(String(message.node));
    const row = this.rows.find((r) => r.dataset.nodeId === String(message.node));
    const region = node?.regions.find((r) => r.key === message.region);
    if (!region || !row) return;
    region.viewed = true;
    this.refreshRegions(row);
  }

  refreshRegions(row) {
    const node = this.nodes.get(row.dataset.nodeId);
    const cell = row.querySelector(".regions-viewed");
    if (!node || !cell) return;
    const required = node.regions.filter((r) => r.required);
    cell.textContent = `${required.filter((r) => r.viewed).length}/${required.length}`;
  }

  async open(row) {
    if (!row) return;
    if (this.kind === "triage") {
      if (row.dataset.queueUrl) location.href = row.dataset.queueUrl;
      return;
    }
    const node = this.nodes.get(row.dataset.nodeId);
    if (!node) return;
    const region = node.regions[0];
    const url = region?.viewer_url || node.viewer_url;
    if (!url) {
      this.say("This node has no slide to open.", "error");
      return;
    }
    this.openViewer(url);
    if (region) {
      this.regionCursor.set(node.id, 0);
      this.say(`Opened ${node.label} at its highest-scoring region (${region.key}); it counts as viewed once the viewer has shown it.`);
    }
  }

  async openNextRegion(row) {
    if (!row || this.kind !== "queue") return;
    const node = this.nodes.get(row.dataset.nodeId);
    const next = node && nextRegion(node.regions, this.regionCursor.get(node.id) ?? -1);
    if (!next || !next.region.viewer_url) {
      this.say(`${node ? node.label : "This node"} has no high-scoring region to open.`);
      return;
    }
    this.regionCursor.set(node.id, next.index);
    this.openViewer(next.region.viewer_url);
    const required = node.regions.filter((r) => r.required);
    const left = required.filter((r) => !r.viewed).length;
    this.say(`Opened region ${next.index + 1} of ${node.regions.length} of ${node.label}${required.length ? ` (${left} at or above the threshold not yet viewed)` : ""}.`);
  }

  // ---- sign-off -------------------------------------------------------------------------------

  async signOff() {
    const caseId = this.root.dataset.caseId;
    if (!window.confirm("Sign off this case? Its decisions will be locked.")) return;
    const { status, data } = await this.post(`/api/review/cases/${caseId}/sign-off/`, { note: this.note?.value || "" });
    if (status === 201) location.reload();
    else this.say(data.detail || `Could not sign off (HTTP ${status}).`, "error");
  }

  async reopen() {
    const caseId = this.root.dataset.caseId;
    const reason = window.prompt("Reason for reopening this signed-off case:");
    if (!reason) return;
    const { status, data } = await this.post(`/api/review/cases/${caseId}/reopen/`, { reason });
    if (status === 201) location.reload();
    else this.say(data.detail || `Could not reopen (HTTP ${status}).`, "error");
  }
}

// ---- the review viewer ----------------------------------------------------------------------

/** Share (0..1) of the area of `box` inside `view`; both [x0, y0, x1, y1]. */
export function insideShare(box, view) {
  const width = Math.max(0, Math.min(box[2], view[2]) - Math.max(box[0], view[0]));
  const height = Math.max(0, Math.min(box[3], view[3]) - Math.max(box[1], view[1]));
  const area = (box[2] - box[0]) * (box[3] - box[1]);
  return area <= 0 ? 1 : (width * height) / area;
}

/**
 * The regions of `slide` that a view shows well enough to count as viewed: zoom (screen px per
 * slide px) at least `rule.min_zoom` and at least `rule.min_inside` of the region's square in
 * the view (a region without a square, the slide as a whole, only needs the zoom).
 */
export function regionsShown(regions, { slide, view, zoom, rule }) {
  if (!view || !(zoom >= rule.min_zoom)) return [];
  return regions.filter((r) => r.slide === slide && (!r.box || insideShare(r.box, view) >= rule.min_inside));
}

/** The shown region nearest the centre of the view (the one the reviewer is looking at), or null. */
export function regionInView(regions, options) {
  const { view } = options;
  const cx = view ? (view[0] + view[2]) / 2 : 0;
  const cy = view ? (view[1] + view[3]) / 2 : 0;
  let best = null;
  let bestDistance = Infinity;
  for (const r of regionsShown(regions, options)) {
    if (!r.box) continue;
    const distance = Math.hypot((r.box[0] + r.box[2]) / 2 - cx, (r.box[1] + r.box[3]) / 2 - cy);
    if (distance < bestDistance) {
      best = r;
      bestDistance = distance;
    }
  }
  return best;
}

export class ReviewViewer {
  constructor(root) {
    this.root = root;
    this.csrf = root.dataset.csrf;
    this.slide = Number(root.dataset.slideId);
    this.data = JSON.parse(document.getElementById("review-viewer-data").textContent);
    this.regions = this.data.regions;
    this.rule = this.data.rule;
    this.urls = this.data.urls;
    this.message = root.querySelector("#review-message");
    this.button = root.querySelector("#review-not-tumour");
    this.picker = root.querySelector("#review-correction-class");
    this.count = root.querySelector("#review-viewed-count");
    this.viewer = null;
    this.timer = null;
    this.pending = new Set();
    this.current = null;
    this.cursor = -1;
    this.saving = false;
  }

  start() {
    this.channel = channel();
    const remembered = window.localStorage?.getItem("nodescope-correction-class");
    if (remembered && this.picker?.querySelector(`option[value="${CSS.escape(remembered)}"]`)) this.picker.value = remembered;
    this.picker?.addEventListener("change", () => window.localStorage?.setItem("nodescope-correction-class", this.picker.value));
    this.button?.addEventListener("click", () => this.notTumour());
    this.root.querySelector("#review-regions")?.addEventListener("click", (event) => {
      const chip = event.target.closest?.("[data-region]");
      const region = chip && this.regions.find((r) => r.key === chip.dataset.region);
      if (region) this.goTo(region);
    });
    document.addEventListener("keydown", (event) => this.onKey(event));
    for (const c of this.data.corrections || []) this.markCorrected(c.region);
    this.render();
    if (window.nodescopeViewer) this.attach(window.nodescopeViewer);
    else document.addEventListener("nodescope:viewer-open", (event) => this.attach(event.detail.viewer), { once: true });
    document.body.dataset.reviewReady = "1";
  }

  attach(viewer) {
    if (this.viewer || !viewer) return;
    this.viewer = viewer;
    for (const name of ["open", "viewport-change", "resize"]) viewer.addHandler(name, () => this.schedule());
    this.schedule();
  }

  // ---- what the view shows --------------------------------------------------------------------

  /** {view: [x0, y0, x1, y1] in level-0 px, zoom: screen px per level-0 px}, or null before open. */
  currentView() {
    const item = this.viewer?.world.getItemCount() ? this.viewer.world.getItemAt(0) : null;
    if (!item) return null;
    const rect = item.viewportToImageRectangle(this.viewer.viewport.getBounds(true)).getBoundingBox();
    return {
      view: [rect.x, rect.y, rect.x + rect.width, rect.y + rect.height],
      zoom: item.viewportToImageZoom(this.viewer.viewport.getZoom(true)),
      loaded: item.getFullyLoaded(),
    };
  }

  /** The view moved: update the "not tumour" target now; report regions once it has rested. */
  schedule() {
    this.updateCurrent();
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.report(), this.rule.dwell_ms);
  }

  updateCurrent() {
    const shown = this.currentView();
    this.current = shown ? regionInView(this.regions, { slide: this.slide, rule: this.rule, ...shown }) : null;
    if (this.button) {
      this.button.disabled = !this.current || this.saving;
      this.button.title = this.current
        ? `Save region ${this.current.key} as a hard-negative annotation (n)`
        : "Pan and zoom to a high-scoring region first (g goes to the next one)";
    }
    for (const chip of this.root.querySelectorAll("[data-region]")) chip.classList.toggle("current", chip.dataset.region === this.current?.key);
  }

  async report() {
    const shown = this.currentView();
    if (!shown) return;
    if (!shown.loaded) {
      // Tiles still arriving: what is on screen is not legible yet; look again shortly.
      this.timer = setTimeout(() => this.report(), 250);
      return;
    }
    const due = regionsShown(this.regions, { slide: this.slide, rule: this.rule, ...shown }).filter((r) => r.required && !r.viewed && !this.pending.has(r.key));
    await Promise.all(due.map((region) => this.reportViewed(region, shown)));
  }

  async reportViewed(region, shown) {
    this.pending.add(region.key);
    try {
      const body = { region: region.key, slide: this.slide, viewport: shown.view.map((v) => Math.round(v * 10) / 10), zoom: shown.zoom };
      const { status, data } = await this.post(this.urls.viewed_regions, body);
      if (status === 201) {
        region.viewed = true;
        this.render();
        this.channel?.postMessage({ type: "viewed", node: this.data.node.id, region: region.key });
        const left = this.regions.filter((r) => r.required && !r.viewed).length;
        this.say(`Region ${this.indexOf(region)} viewed${left ? ` (${left} at or above the threshold still to view)` : ": every region at or above the threshold is viewed"}.`, "ok");
      } else {
        this.say(data.detail || `Could not record region ${region.key} as viewed (HTTP ${status}).`, "error");
      }
    } catch (error) {
      this.say(`Could not record the region as viewed: ${error.message || error}`, "error");
    } finally {
      this.pending.delete(region.key);
      document.body.dataset.reviewIdle = String(Date.now());
    }
  }

  // ---- actions --------------------------------------------------------------------------------

  onKey(event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || isTyping(event.target)) return;
    const action = VIEWER_KEYMAP[event.key];
    if (!action) return;
    event.preventDefault();
    if (action === "not-tumour") this.notTumour();
    else if (action === "next-region") this.nextRegion();
  }

  indexOf(region) {
    return this.regions.indexOf(region) + 1;
  }

  /** Go to the first region at or above the threshold not yet viewed, else the next one. */
  nextRegion() {
    if (!this.regions.length) {
      this.say("This node has no high-scoring region.");
      return;
    }
    const next = nextRegion(this.regions, this.cursor);
    this.cursor = next.index;
    this.goTo(next.region);
  }

  /** Fit the region's square (a third of the view) here, or open its own slide in the viewer. */
  goTo(region) {
    this.cursor = this.regions.indexOf(region);
    if (region.slide !== this.slide) {
      if (region.viewer_url) location.href = region.viewer_url;
      return;
    }
    const item = this.viewer?.world.getItemCount() ? this.viewer.world.getItemAt(0) : null;
    if (!item || !region.box) return;
    const [x0, y0, x1, y1] = region.box;
    const side = Math.max(x1 - x0, y1 - y0);
    const rect = item.imageToViewportRectangle((x0 + x1) / 2 - 1.5 * side, (y0 + y1) / 2 - 1.5 * side, 3 * side, 3 * side);
    this.viewer.viewport.fitBounds(rect);
    this.say(`Region ${this.indexOf(region)} of ${this.regions.length} (score ${region.score.toFixed(3)}).`);
  }

  async notTumour() {
    const region = this.current;
    if (!region) {
      this.say("Pan and zoom to a high-scoring region first (g goes to the next one); then n saves it as not tumour.", "warn");
      return;
    }
    if (this.saving) return;
    const cls = this.picker?.value;
    const name = this.picker?.selectedOptions[0]?.textContent || cls;
    this.saving = true;
    this.updateCurrent();
    try {
      const { status, data } = await this.post(this.urls.corrections, { label_class: cls, region: region.key });
      if (status === 201) {
        this.data.corrections.push(data);
        this.markCorrected(region.key);
        this.channel?.postMessage({ type: "corrected", node: this.data.node.id, region: region.key, annotation: data.annotation });
        this.say(`Region ${this.indexOf(region)} saved as not tumour (${name}): hard-negative annotation ${data.annotation}.`, "ok");
        document.body.dataset.lastCorrection = String(data.annotation);
        window.nodescopeAnnotations?.refresh?.();
      } else {
        this.say(data.detail || `Could not save the correction (HTTP ${status}).`, "error");
      }
    } catch (error) {
      this.say(`Could not save the correction: ${error.message || error}`, "error");
    } finally {
      this.saving = false;
      this.updateCurrent();
      document.body.dataset.reviewIdle = String(Date.now());
    }
  }

  markCorrected(key) {
    const chip = this.root.querySelector(`[data-region="${CSS.escape(key || "")}"]`);
    if (chip) {
      chip.classList.add("corrected");
      chip.title = `${chip.title.split(" · ")[0]} · saved as not tumour`;
    }
  }

  render() {
    for (const region of this.regions) {
      const chip = this.root.querySelector(`[data-region="${CSS.escape(region.key)}"]`);
      chip?.classList.toggle("viewed", Boolean(region.viewed));
      chip?.setAttribute("aria-pressed", String(Boolean(region.viewed)));
    }
    const required = this.regions.filter((r) => r.required);
    if (this.count) {
      this.count.textContent = required.length ? `${required.filter((r) => r.viewed).length}/${required.length} viewed` : "";
      this.count.dataset.left = String(required.filter((r) => !r.viewed).length);
    }
  }

  say(text, kind = "info") {
    if (!this.message) return;
    this.message.textContent = text;
    this.message.dataset.kind = kind;
  }

  async post(url, body) {
    return ReviewPage.prototype.post.call(this, url, body);
  }
}

export function boot() {
  const root = document.getElementById("review-page");
  if (!root || !root.dataset.page || root.dataset.page === "metrics") return null;
  const page = root.dataset.page === "viewer" ? new ReviewViewer(root) : new ReviewPage(root);
  page.start();
  window.nodescopeReview = page;
  return page;
}

if (typeof document !== "undefined") {
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot, { once: true });
  else boot();
}
