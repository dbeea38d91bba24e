// The models page: launch and cancel training runs, and follow their progress.
// (A static file, not inline script: the Content-Security-Policy allows script from 'self' only.)
(() => {
  const csrf = document.querySelector("[name=csrfmiddlewaretoken]").value;
  const post = (url, body) => fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "X-CSRFToken": csrf}, body: JSON.stringify(body || {})});
  // The launch form: fields, not JSON. Each error is shown beside the field the server names.
  const form = document.getElementById("launch-form");
  if (form) {
    const secondary = () => form.stage.value.startsWith("secondary:");
    const extras = () => {
      form.querySelectorAll(".source-extra[data-for]").forEach((box) => {
        box.hidden = secondary() || box.dataset.for !== form.source.value;
      });
      form.querySelectorAll(".source-extra[data-for-stage]").forEach((box) => { box.hidden = !secondary(); });
      form.source.disabled = secondary();
    };
    form.source.addEventListener("change", extras);
    form.stage.addEventListener("change", extras);
    extras();
    const clearErrors = () => {
      form.querySelectorAll(".field-error").forEach((p) => { p.hidden = true; p.textContent = ""; });
      form.querySelectorAll(".field-error.added").forEach((p) => p.remove());
      document.getElementById("launch-error").textContent = "";
    };
    const showError = (field, message) => {
      let slot = form.querySelector(`.field-error[data-field="${field}"]`);
      if (!slot && field.startsWith("recipe.")) {
        const input = form.querySelector(`[name="${field.slice(7)}"]`);
        if (input) {
          slot = document.createElement("p");
          slot.className = "error field-error added";
          slot.dataset.field = field;
          input.closest("label").after(slot);
        }
      }
      if (!slot && field.startsWith("recipe")) slot = form.querySelector('.field-error[data-field="recipe"]');
      if (!slot) { document.getElementById("launch-error").textContent = message; return; }
      slot.textContent = message;
      slot.hidden = false;
    };
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors();
      const [kind, value] = form.source.value.split(":");
      let dataset;
      if (kind === "snapshot") dataset = {kind, id: Number(value)};
      else if (kind === "node-images") dataset = {kind, modality: value};
      else if (kind === "patch-folder") {
        dataset = {kind, path: form.patch_path.value.trim(), mpp: Number(form.patch_mpp.value), label_rule: form.label_rule.value};
        dataset.crop = form.crop.value ? Number(form.crop.value) : null;
      }
      else dataset = {kind, path: form.folder_path.value.trim(), size: Number(form.folder_size.value)};
      const jitter = Number(form.jitter.value);
      const recipe = {
        max_epochs: Number(form.max_epochs.value),
        batch_size: Number(form.batch_size.value),
        learning_rate: Number(form.learning_rate.value),
        lr_step_epochs: Number(form.lr_step_epochs.value),
        early_stopping_patience: Number(form.early_stopping_patience.value),
        seed: Number(form.seed.value),
        brightness: jitter, contrast: jitter, saturation: jitter,
        hue: Number(form.hue.value),
        dihedral: form.dihedral.checked,
      };
      const start = form.start_from.selectedOptions[0];
      if (start && start.value) {
        // fine-tune: the same network as the model started from, initialised with its weights
        recipe.pretrained_weights = start.dataset.weights;
        recipe.model_kwargs = JSON.parse(start.dataset.kwargs || "{}");
        form.architecture.value = start.dataset.architecture;
      }
      if (form.advanced.value.trim()) {
        try { Object.assign(recipe, JSON.parse(form.advanced.value)); }
        catch (e) { showError("recipe", `Advanced overrides must be a JSON object: ${e.message}`); return; }
      }
      const response = secondary()
        ? await post(`/api/model-versions/${form.stage.value.split(":")[1]}/train-secondary/`, {stride: Number(form.stride.value), recipe})
        : await post("/api/training-runs/", {dataset_source: dataset, architecture: form.architecture.value, stage: "primary", recipe});
      if (response.ok) { location.reload(); return; }
      const body = await response.json().catch(() => ({}));
      const text = (v) => (Array.isArray(v) ? v.join(" ") : String(v));
      if (body.detail) showError(text(body.field || ""), text(body.detail));
      for (const [key, value] of Object.entries(body)) {
        if (!["detail", "field"].includes(key)) showError(key, text(value));
      }
    });
  }
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
