"""Small server-side SVG plots (ROC curve, training curves): no plotting library, no CDN."""

from __future__ import annotations

from html import escape

W, H, PAD = 360, 300, 40


def _path(
    xs: list[float], ys: list[float], x_range: tuple[float, float], y_range: tuple[float, float]
) -> str:
    (x0, x1), (y0, y1) = x_range, y_range
    sx = (W - 2 * PAD) / ((x1 - x0) or 1)
    sy = (H - 2 * PAD) / ((y1 - y0) or 1)
    points = [
        f"{PAD + (x - x0) * sx:.1f},{H - PAD - (y - y0) * sy:.1f}"
        for x, y in zip(xs, ys, strict=False)
    ]
    return "M" + " L".join(points) if points else ""


def _frame(title: str, x_label: str, y_label: str, body: str) -> str:
    return (
        f'<svg class="plot" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f'<rect x="{PAD}" y="{PAD}" width="{W - 2 * PAD}" height="{H - 2 * PAD}" fill="none" stroke="#999"/>'
        f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="13">{escape(title)}</text>'
        f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle" font-size="11">{escape(x_label)}</text>'
        f'<text x="12" y="{H / 2}" text-anchor="middle" font-size="11" transform="rotate(-90 12 {H / 2})">{escape(y_label)}</text>'
        f'<text x="{PAD}" y="{H - PAD + 14}" font-size="10">0</text><text x="{W - PAD}" y="{H - PAD + 14}" font-size="10" text-anchor="end">1</text>'
        f"{body}</svg>"
    )


def roc_svg(roc: dict, *, auc: float | None) -> str:
    """ROC curve (false-positive rate against sensitivity) with the chance diagonal."""
    fpr, tpr = list(roc.get("fpr") or []), list(roc.get("tpr") or [])
    if not fpr:
        return ""
    diagonal = _path([0, 1], [0, 1], (0, 1), (0, 1))
    curve = _path(fpr, tpr, (0, 1), (0, 1))
    title = f"ROC, validation (AUC {auc:.3f})" if auc is not None else "ROC, validation"
    body = (
        f'<path d="{diagonal}" stroke="#bbb" stroke-dasharray="4 4" fill="none"/>'
        f'<path class="roc-curve" d="{curve}" stroke="#b0306a" stroke-width="2" fill="none"/>'
    )
    return _frame(title, "1 − specificity", "sensitivity", body)


def curves_svg(curves: dict) -> str:
    """Training loss, validation loss and validation AUC per epoch."""
    epochs = list(curves.get("epoch") or [])
    if not epochs:
        return ""
    series = [("train_loss", "#4060c0"), ("val_loss", "#40a080"), ("val_auc", "#b0306a")]
    top = max([1.0] + [v for key, _ in series for v in (curves.get(key) or []) if v is not None])
    x_range = (min(epochs), max(epochs) if len(epochs) > 1 else min(epochs) + 1)
    body, legend_y = "", PAD + 12
    for key, colour in series:
        values = curves.get(key) or []
        if values:
            body += f'<path d="{_path(epochs, values, x_range, (0, top))}" stroke="{colour}" stroke-width="2" fill="none"/>'
            body += f'<text x="{W - PAD - 4}" y="{legend_y}" font-size="10" text-anchor="end" fill="{colour}">{key.replace("_", " ")}</text>'
            legend_y += 12
    return _frame("Training curves", "epoch", "value", body)
