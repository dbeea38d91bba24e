/**
 * Small helpers for ordinary NodeScope pages (optional: include `dist/main.js` as a module).
 *
 * - `data-confirm="Question?"` on a form, button or link asks before submitting / following.
 */

export function installConfirm(root = document) {
  root.addEventListener("submit", (event) => {
    if (event.defaultPrevented) return; // the page's own script handled it (and asked, if needed)
    const form = event.target;
    const question = event.submitter?.dataset.confirm || form.dataset?.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
  root.addEventListener("click", (event) => {
    if (event.defaultPrevented) return;
    const link = event.target.closest?.("a[data-confirm]");
    if (link && !window.confirm(link.dataset.confirm)) event.preventDefault();
  });
}

if (typeof document !== "undefined") installConfirm();
