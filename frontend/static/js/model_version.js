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
