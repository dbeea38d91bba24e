// The models page: launch and cancel training runs, and follow their progress.
// (A static file, not inline script: the Content-Security-Policy allows script from 'self' only.)
(() => {
  const csrf = document.querySelector("[name=csrfmiddlewaretoken]").value;
  const post = (url, body) => fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "X-CSRFToken": csrf}, body: JSON.stringify(body || {})});
  const form = document.getElementById("launch-form");
  if (form) form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = document.getElementById("launch-error");
    let dataset, recipe;
    try { dataset = JSON.parse(form.elements.dataset.value); recipe = JSON.parse(form.recipe.value || "{}"); }
    catch (e) { error.textContent = "Dataset and recipe must be JSON: " + e.message; return; }
    const response = await post("/api/training-runs/", {dataset_source: dataset, architecture: form.architecture.value, stage: form.stage.value, recipe});
    if (response.ok) { location.reload(); return; }
    const body = await response.json().catch(() => ({}));
    error.textContent = body.detail || JSON.stringify(body);
  });
  document.querySelectorAll("button.cancel").forEach((b) => b.addEventListener("click", async () => {
    await post(`/api/training-runs/${b.dataset.run}/cancel/`); location.reload();
  }));
  // Promote and roll back (platform operators only: the live model is the same for every lab).
  const changeLive = async (url, body) => {
    const response = await post(url, body);
    if (response.ok) { location.reload(); return; }
    const answer = await response.json().catch(() => ({}));
    const error = document.getElementById("promote-error");
    error.textContent = answer.detail || JSON.stringify(answer);
    error.hidden = false;
  };
  const confirmed = (b) => !b.dataset.confirm || window.confirm(b.dataset.confirm);
  document.querySelectorAll("button.promote[data-version]").forEach((b) => b.addEventListener("click", () =>
    confirmed(b) && changeLive(`/api/model-versions/${b.dataset.version}/promote/`)));
  document.querySelectorAll("button.rollback").forEach((b) => b.addEventListener("click", () =>
    confirmed(b) && changeLive("/api/model-versions/rollback/", {stage: b.dataset.stage})));
  // Live progress: poll the unfinished runs.
  const live = [...document.querySelectorAll("tr[data-run]")].filter((r) => ["queued", "running"].includes(r.dataset.status));
  if (!live.length) return;
  const tick = async () => {
    let pending = 0;
    for (const row of live) {
      const run = await (await fetch(`/api/training-runs/${row.dataset.run}/`)).json();
      const p = run.progress || {};
      row.querySelector("progress").value = p.fraction || 0;
      row.querySelector(".status .badge").textContent = run.status;
      row.querySelector(".reason").textContent = run.status_reason || "";
      if (p.phase === "mining") {
        row.querySelector(".detail").textContent = `mining hard negatives: slide ${p.slides_done}/${p.slides_total} · ${p.hard_negatives} found`;
      } else if (p.epoch) {
        const eta = p.eta_s != null ? ` · ${Math.round(p.eta_s)} s left` : "";
        const auc = p.val_auc != null ? ` · val AUC ${p.val_auc.toFixed(3)}` : "";
        row.querySelector(".detail").textContent = `epoch ${p.epoch}/${p.max_epochs} · step ${p.step}/${p.steps_per_epoch} · loss ${p.loss}${auc}${eta}`;
      }
      if (["queued", "running"].includes(run.status)) pending++; else if (row.dataset.status !== run.status) { row.dataset.status = run.status; }
    }
    if (pending) setTimeout(tick, 2000); else location.reload();
  };
  setTimeout(tick, 2000);
})();
