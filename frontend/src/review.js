/**
 * Keyboard-first review of a case queue (`data-page="queue"`) and of the lab lead's triage list
 * (`data-page="triage"`). The page renders the rows on the server; this script selects a row,
 * posts decisions to `/api/nodes/<id>/decisions/` with the decision the reviewer saw
 * (`based_on`), records regions opened in the viewer (`/api/nodes/<id>/viewed-regions/`) and
 * patches the rows in place.
 *
 * Keys: j / ↓ next, k / ↑ previous, n confirm negative, p confirm positive, f needs further work,
 * Enter open (queue: the viewer at the highest-scoring region; triage: the case queue),
 * r the next high-scoring region in the viewer (queue).
 *
 * On a 409 (someone else decided meanwhile) the row shows their decision and nothing of ours is
 * saved; pressing the key again decides on top of what is now shown.
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

  async recordRegion(row, region) {
    const { status, data } = await this.post(`/api/nodes/${row.dataset.nodeId}/viewed-regions/`, { region: region.key });
    if (status !== 201) {
      this.say(data.detail || `Could not record the region as viewed (HTTP ${status}).`, "error");
      return false;
    }
    region.viewed = true;
    this.refreshRegions(row);
    return true;
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
      if (await this.recordRegion(row, region)) this.say(`Opened ${node.label} at its highest-scoring region (${region.key}).`);
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
    if (await this.recordRegion(row, next.region)) {
      const required = node.regions.filter((r) => r.required);
      const left = required.filter((r) => !r.viewed).length;
      this.say(`Opened region ${next.index + 1} of ${node.regions.length} of ${node.label}${required.length ? ` (${left} at or above the threshold left to view)` : ""}.`);
    }
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

export function boot() {
  const root = document.getElementById("review-page");
  if (!root || !root.dataset.page || root.dataset.page === "metrics") return null;
  const page = new ReviewPage(root);
  page.start();
  window.nodescopeReview = page;
  return page;
}

if (typeof document !== "undefined") {
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot, { once: true });
  else boot();
}
