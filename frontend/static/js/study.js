// A reader study's page: while the model's answers are queued or running, follow them in place
// and show the results once they are done (one reload, then polling stops).
(() => {
  const page = document.getElementById("study-page");
  if (!page || !["queued", "running"].includes(page.dataset.modelStatus)) return;
  const labels = { queued: "Queued", running: "Running", done: "Done", failed: "Failed" };
  const tick = async () => {
    const response = await fetch(`/api/studies/${page.dataset.study}/`);
    if (!response.ok) return;
    const study = await response.json();
    document.getElementById("study-model-status").textContent = labels[study.model_status] || study.model_status;
    if (["queued", "running"].includes(study.model_status)) setTimeout(tick, 2000);
    else location.reload();
  };
  setTimeout(tick, 2000);
})();
