// Scoring runs update in place: each unfinished run is polled until it has finished, so a page
// opened at promotion shows the slides being rescored and then "succeeded" without a reload.
(() => {
  const rows = () => [...document.querySelectorAll("tr[data-scoring-run]")]
    .filter((r) => ["queued", "running"].includes(r.dataset.status));
  if (!rows().length) return;
  const tick = async () => {
    for (const row of rows()) {
      const response = await fetch(`/api/scoring-runs/${row.dataset.scoringRun}/`);
      if (!response.ok) continue;
      const run = await response.json();
      row.dataset.status = run.status;
      row.querySelector(".badge").textContent = run.status;
      const bar = row.querySelector("progress");
      bar.max = 1;
      bar.value = run.fraction || 0;
      row.querySelector(".progress-cell .muted").textContent =
        `${run.slides_done}/${run.slides_total}${run.slides_failed ? ` · ${run.slides_failed} failed` : ""}`;
    }
    if (rows().length) setTimeout(tick, 2000);
  };
  setTimeout(tick, 1000);
})();
