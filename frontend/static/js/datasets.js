// The Datasets page: preview and create a snapshot, follow its extraction without reloading.
// (A static file, not inline script: the Content-Security-Policy allows script from 'self' only.)
(() => {
  const form = document.getElementById("dataset-form");
  const csrfField = document.querySelector("[name=csrfmiddlewaretoken]");
  const post = (url, body) => fetch(url, {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-CSRFToken": csrfField ? csrfField.value : ""},
    body: JSON.stringify(body),
  });
  const ids = (text) => text.split(/[\s,]+/).filter(Boolean).map((t) => (/^\d+$/.test(t) ? Number(t) : t));

  function request(preview) {
    const body = {
      name: form.name.value.trim(),
      lab: form.lab.value,
      project_type: form.project_type.value,
      val_fraction: Number(form.val_fraction.value),
      seed: Number(form.seed.value || 0),
      balanced: form.balanced.checked,
      preview,
    };
    if (form.cases.value.trim()) body.cases = ids(form.cases.value);
    if (form.max_per_class.value) body.max_per_class = Number(form.max_per_class.value);
    return body;
  }

  function showErrors(answer) {
    form.querySelectorAll(".field-error").forEach((p) => { p.hidden = true; p.textContent = ""; });
    const general = document.getElementById("dataset-error");
    general.hidden = true;
    const rest = [];
    for (const [field, messages] of Object.entries(answer || {})) {
      const text = Array.isArray(messages) ? messages.join(" ") : String(messages);
      const slot = form.querySelector(`.field-error[data-field="${field}"]`);
      if (slot) { slot.textContent = text; slot.hidden = false; }
      else if (field !== "code") rest.push(text);
    }
    if (rest.length) { general.textContent = rest.join(" "); general.hidden = false; }
  }

  function showPreview(p) {
    const box = document.getElementById("dataset-preview-result");
    document.getElementById("preview-summary").textContent =
      `${p.total_patches} patches of ${p.patch_px} px at ${p.target_mpp} µm/px from ${p.slides.length} slides of lab ${p.lab}.`;
    const rows = document.getElementById("preview-sides");
    rows.replaceChildren();
    for (const side of ["train", "val"]) {
      const s = p.split[side];
      const tr = document.createElement("tr");
      const cells = [
        side === "train" ? "Training" : "Validation",
        s.cases.map((c) => c.accession).join(", "),
        String(s.patches),
        Object.entries(s.training_counts || {}).map(([k, v]) => `${k} ${v}`).join(" · "),
      ];
      for (const text of cells) { const td = document.createElement("td"); td.textContent = text; tr.append(td); }
      rows.append(tr);
    }
    box.hidden = false;
  }

  if (form) {
    const create = document.getElementById("dataset-create");
    form.addEventListener("input", () => { create.disabled = true; create.title = "Preview first"; });
    document.getElementById("dataset-preview").addEventListener("click", async () => {
      const response = await post("/api/datasets/", request(true));
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) { showErrors(answer); document.getElementById("dataset-preview-result").hidden = true; return; }
      showErrors({});
      showPreview(answer);
      create.disabled = false;
      create.title = "";
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const response = await post("/api/datasets/", request(false));
      const answer = await response.json().catch(() => ({}));
      if (!response.ok) { showErrors(answer); return; }
      location.reload();
    });
  }

  // Live extraction progress: poll the unfinished snapshots until they are ready or failed.
  const rows = [...document.querySelectorAll("tr[data-dataset]")]
    .filter((r) => ["pending", "extracting"].includes(r.dataset.status));
  if (!rows.length) return;
  const tick = async () => {
    let unfinished = 0;
    for (const row of rows) {
      if (!["pending", "extracting"].includes(row.dataset.status)) continue;
      const response = await fetch(`/api/datasets/${row.dataset.dataset}/`);
      if (!response.ok) continue;
      const d = await response.json();
      row.dataset.status = d.status;
      row.querySelector(".status .badge").textContent = d.status;
      row.querySelector(".status .reason").textContent = d.status_reason || "";
      row.querySelector(".extracted").textContent = d.extracted_patches;
      const bar = row.querySelector("progress");
      bar.value = d.total_patches ? d.extracted_patches / d.total_patches : 0;
      bar.hidden = !["pending", "extracting"].includes(d.status);
      if (!bar.hidden) unfinished += 1;
    }
    if (unfinished) setTimeout(tick, 2000);
  };
  setTimeout(tick, 1500);
})();
