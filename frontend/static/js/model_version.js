// A model version's page: train a secondary model, promote to live, set the operating point.
// (A static file, not inline script: the Content-Security-Policy allows script from 'self' only.)
const postJson = (url, csrf, body) =>
  fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
    body: JSON.stringify(body),
  });

const showError = async (response, id) => {
  const answer = await response.json().catch(() => ({}));
  document.getElementById(id).textContent = answer.detail || JSON.stringify(answer);
};

document.getElementById("train-secondary")?.addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target, body = { stride: Number(f.stride.value) };
  if (f.negative_slides.value.trim()) body.negative_slides = f.negative_slides.value.split(",").map((s) => Number(s.trim()));
  const r = await postJson(f.dataset.url, f.csrfmiddlewaretoken.value, body);
  if (r.ok) { location.href = f.dataset.done; return; }
  await showError(r, "train-secondary-error");
});

document.getElementById("promote")?.addEventListener("submit", async (e) => {
  e.preventDefault();
  const question = e.submitter?.dataset.confirm;
  if (question && !window.confirm(question)) return;
  const r = await fetch(e.target.dataset.url, { method: "POST", headers: { "X-CSRFToken": e.target.csrfmiddlewaretoken.value } });
  if (r.ok) location.reload(); else alert((await r.json()).detail);
});

document.getElementById("operating-point")?.addEventListener("submit", async (e) => {
  e.preventDefault();
  const f = e.target, body = { method: f.method.value };
  if (body.method === "target") body.target_sensitivity = Number(f.target_sensitivity.value);
  const r = await postJson(f.dataset.url, f.csrfmiddlewaretoken.value, body);
  if (r.ok) { location.reload(); return; }
  await showError(r, "operating-point-error");
});

// The node threshold: show the calibration nodes and the threshold the rule would lock, score
// the nodes this model has not scored (with live progress), then lock it after a confirmation.
(() => {
  const box = document.getElementById("threshold");
  const form = document.getElementById("threshold-form");
  if (!box || !form) return;
  const csrf = form.csrfmiddlewaretoken.value;
  const el = (id) => document.getElementById(id);
  const fmt = (v) => (v == null ? "—" : Number(v).toFixed(3));
  const interval = (pair) => (pair ? `${fmt(pair[0])}–${fmt(pair[1])}` : "—");
  const query = () => {
    const params = new URLSearchParams({ target_sensitivity: form.target_sensitivity.value });
    if (form.nodes.value.trim()) params.set("nodes", form.nodes.value.split(/[\s,]+/).filter(Boolean).join(","));
    return params;
  };
  const body = () => {
    const out = { target_sensitivity: Number(form.target_sensitivity.value) };
    if (form.nodes.value.trim()) out.nodes = form.nodes.value.split(/[\s,]+/).filter(Boolean).map(Number);
    return out;
  };
  let polling = null;

  function showNodes(nodes) {
    const rows = el("threshold-nodes");
    rows.replaceChildren();
    for (const n of nodes) {
      const tr = document.createElement("tr");
      for (const text of [n.case, n.label, n.truth, n.truth_source, n.score == null ? "not scored" : fmt(n.score)]) {
        const td = document.createElement("td"); td.textContent = text; tr.append(td);
      }
      rows.append(tr);
    }
    el("threshold-nodes-box").hidden = !nodes.length;
  }

  function showPreview(point) {
    const table = el("threshold-preview");
    el("preview-threshold").textContent = Number(point.threshold).toFixed(4);
    const tbody = table.querySelector("tbody");
    tbody.replaceChildren();
    const rows = [
      ["Sensitivity", `${fmt(point.sensitivity)} (${point.tp}/${point.tp + point.fn})`, "sensitivity"],
      ["Specificity", `${fmt(point.specificity)} (${point.tn}/${point.tn + point.fp})`, "specificity"],
      ["Accuracy", fmt(point.accuracy), "accuracy"],
    ];
    for (const [name, value, key] of rows) {
      const tr = document.createElement("tr");
      for (const text of [name, value, interval(point.ci[key]), interval(point.exact_ci[key])]) {
        const td = document.createElement("td"); td.textContent = text; tr.append(td);
      }
      tbody.append(tr);
    }
    table.hidden = false;
  }

  async function refresh() {
    el("threshold-error").hidden = true;
    form.querySelectorAll(".field-error").forEach((p) => { p.hidden = true; });
    const response = await fetch(`${box.dataset.url}?${query()}`);
    const answer = await response.json().catch(() => ({}));
    const lock = el("threshold-lock");
    if (!response.ok) {
      const slot = form.querySelector(`.field-error[data-field="nodes"]`);
      slot.textContent = answer.detail || answer.nodes || JSON.stringify(answer);
      slot.hidden = false;
      lock.disabled = true;
      return;
    }
    el("threshold-source").textContent = `${answer.nodes.length} calibration nodes (${answer.positives} positive, ${answer.negatives} negative) from ${answer.source}.`;
    showNodes(answer.nodes);
    el("threshold-refused").hidden = !answer.refused;
    el("threshold-refused").textContent = answer.refused || "";
    const scoring = el("threshold-scoring");
    scoring.hidden = !(answer.missing_scores.length || answer.scoring_run);
    el("threshold-scoring-note").textContent = answer.missing_scores.length
      ? `${answer.missing_scores.length} nodes (${answer.missing_slides} slides) have no score of this model yet.` : "";
    if (answer.scoring_run) follow(answer.scoring_run);
    if (answer.preview) {
      showPreview(answer.preview);
      lock.disabled = false;
      lock.dataset.threshold = answer.preview.threshold;
    } else {
      el("threshold-preview").hidden = true;
      lock.disabled = true;
    }
  }

  function follow(runId) {
    if (polling) return;
    const bar = el("threshold-scoring").querySelector("progress");
    bar.hidden = false;
    el("threshold-score").disabled = true;
    polling = setInterval(async () => {
      const run = await (await fetch(`/api/scoring-runs/${runId}/`)).json();
      bar.value = run.fraction || 0;
      el("threshold-scoring-note").textContent = `scoring: ${run.slides_done}/${run.slides_total} slides${run.slides_failed ? `, ${run.slides_failed} failed` : ""}`;
      if (!["queued", "running"].includes(run.status)) {
        clearInterval(polling);
        polling = null;
        bar.hidden = true;
        el("threshold-score").disabled = false;
        refresh();
      }
    }, 2000);
  }

  el("threshold-refresh").addEventListener("click", refresh);
  form.addEventListener("change", refresh);
  el("threshold-score").addEventListener("click", async () => {
    const r = await postJson(box.dataset.scoringUrl, csrf, body());
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) { el("threshold-error").textContent = answer.detail || JSON.stringify(answer); el("threshold-error").hidden = false; return; }
    follow(answer.scoring_run);
  });
  el("threshold-lock").addEventListener("click", async () => {
    const t = Number(el("threshold-lock").dataset.threshold).toFixed(4);
    if (!window.confirm(`Lock the threshold at ${t}? It is fixed for this model once locked; nodes scoring at or above it are screened positive.`)) return;
    const r = await postJson(box.dataset.url, csrf, body());
    if (r.ok) { location.reload(); return; }
    const answer = await r.json().catch(() => ({}));
    el("threshold-error").textContent = answer.detail || JSON.stringify(answer);
    el("threshold-error").hidden = false;
  });
  refresh();
})();
