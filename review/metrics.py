"""Diagnostic metrics of each model version against reviewers' confirmed decisions.

Truth is a node's current decision: confirmed positive = positive, confirmed negative = negative
(other nodes are not evaluated). Each model version is judged by its latest score of each node, at
its locked threshold (a node is screened positive at or above it): sensitivity, specificity,
accuracy, the ROC curve and its AUC (Mann-Whitney, ties counted one half), each with a 95%
percentile-bootstrap confidence interval from a seeded generator (so a page shows the same
numbers twice). Also the workload saved (share of the version's scored nodes screened negative)
and the missed positives (screened negative, confirmed positive), by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

import numpy as np
from django.db.models import QuerySet

from inference.metrics import auc_by_ranks, roc_curve
from inference.records import ModelVersion, NodeScore
from slides.models import Node

from .models import FINAL_STATUSES, ReviewStatus
from .queues import with_review_state

DEFAULT_BOOTSTRAP = 1000
DEFAULT_SEED = 20261122


@dataclass
class Estimate:
    value: float | None
    low: float | None = None
    high: float | None = None

    def as_dict(self) -> dict:
        return {"value": self.value, "ci95": [self.low, self.high]}


@dataclass
class VersionMetrics:
    version: ModelVersion
    threshold: float | None
    evaluated: int
    positives: int
    negatives: int
    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    sensitivity: Estimate = field(default_factory=lambda: Estimate(None))
    specificity: Estimate = field(default_factory=lambda: Estimate(None))
    accuracy: Estimate = field(default_factory=lambda: Estimate(None))
    auc: Estimate = field(default_factory=lambda: Estimate(None))
    roc: dict = field(default_factory=dict)
    scored: int = 0
    screened_negative: int = 0
    missed_positives: list[dict] = field(default_factory=list)

    @property
    def estimates(self) -> list[tuple[str, Estimate]]:
        return [
            ("Sensitivity", self.sensitivity),
            ("Specificity", self.specificity),
            ("Accuracy", self.accuracy),
            ("AUC", self.auc),
        ]

    @property
    def workload_saved(self) -> float | None:
        return self.screened_negative / self.scored if self.scored else None

    def as_dict(self) -> dict:
        return {
            "model_version": {
                "id": self.version.pk,
                "name": self.version.name,
                "stage": self.version.stage,
                "is_live": self.version.is_live,
            },
            "threshold": self.threshold,
            "evaluated": self.evaluated,
            "positives": self.positives,
            "negatives": self.negatives,
            "confusion": {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn},
            "sensitivity": self.sensitivity.as_dict(),
            "specificity": self.specificity.as_dict(),
            "accuracy": self.accuracy.as_dict(),
            "auc": self.auc.as_dict(),
            "roc": self.roc,
            "workload_saved": {
                "scored": self.scored,
                "screened_negative": self.screened_negative,
                "share": self.workload_saved,
            },
            "missed_positives": self.missed_positives,
        }


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def _ci(values: list[float]) -> tuple[float | None, float | None]:
    clean = [v for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return None, None
    low, high = np.percentile(clean, [2.5, 97.5])
    return float(low), float(high)


def _weighted_auc(
    order: np.ndarray, groups: np.ndarray, n_groups: int, y: np.ndarray, w: np.ndarray
) -> float | None:
    """Mann-Whitney AUC with ties = 1/2 for a sample given as multiplicities `w` (one sort, reused)."""
    wp = np.bincount(groups, weights=(w * y)[order], minlength=n_groups)
    wn = np.bincount(groups, weights=(w * ~y)[order], minlength=n_groups)
    p, n = wp.sum(), wn.sum()
    if p == 0 or n == 0:
        return None
    below = np.cumsum(wn) - wn  # negatives with strictly lower scores
    return float(np.sum(wp * (below + 0.5 * wn)) / (p * n))


def evaluate(
    y: np.ndarray, s: np.ndarray, threshold: float | None, *, n_boot: int, seed: int
) -> dict[str, Estimate | dict | int]:
    """Point estimates and bootstrap CIs for truths `y` (bool) and scores `s`."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    out: dict = {}
    n = y.size
    has_both = bool(y.any() and (~y).any())
    if threshold is not None:
        pred = s >= threshold
        tp, fp = int(np.sum(pred & y)), int(np.sum(pred & ~y))
        tn, fn = int(np.sum(~pred & ~y)), int(np.sum(~pred & y))
        out.update(tp=tp, fp=fp, tn=tn, fn=fn)
    if threshold is not None and n:
        out["sensitivity"] = Estimate(_ratio(tp, tp + fn))
        out["specificity"] = Estimate(_ratio(tn, tn + fp))
        out["accuracy"] = Estimate(_ratio(tp + tn, n))
    if has_both:
        order = np.argsort(s, kind="mergesort")
        groups = np.r_[0, np.cumsum(np.diff(s[order]) != 0)]
        n_groups = int(groups[-1]) + 1
        out["auc"] = Estimate(auc_by_ranks(y, s))
        out["roc"] = roc_curve(y, s, drop_intermediate=True).to_dict()
    if n == 0 or n_boot == 0:
        return out
    # Percentile bootstrap over nodes: each resample is a vector of multiplicities `w`, so every
    # statistic is a weighted sum (no copies of the data) and the AUC reuses one sort.
    rng = np.random.default_rng(seed)
    yf = y.astype(np.float64)
    samples: dict[str, list] = {"sensitivity": [], "specificity": [], "accuracy": [], "auc": []}
    if threshold is not None:
        tp_f, tn_f = (pred & y).astype(np.float64), (~pred & ~y).astype(np.float64)
    for _ in range(n_boot):
        w = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        if threshold is not None:
            pos = float(w @ yf)
            samples["sensitivity"].append(_ratio(float(w @ tp_f), pos))
            samples["specificity"].append(_ratio(float(w @ tn_f), n - pos))
            samples["accuracy"].append(float(w @ tp_f + w @ tn_f) / n)
        if has_both:
            samples["auc"].append(_weighted_auc(order, groups, n_groups, y, w))
    for key, values in samples.items():
        if key in out and values:
            out[key].low, out[key].high = _ci(values)
    return out


def truths(nodes: QuerySet[Node]) -> dict[int, tuple[bool, str, str, int]]:
    """{node id: (confirmed positive?, node label, case accession, case id)} for settled nodes."""
    rows = (
        with_review_state(nodes, version=None)
        .filter(rv_status__in=FINAL_STATUSES)
        .values_list("pk", "rv_status", "label", "case__accession_number", "case_id")
    )
    return {
        pk: (status == ReviewStatus.CONFIRMED_POSITIVE, label, accession, case_id)
        for pk, status, label, accession, case_id in rows
    }


def latest_scores(nodes: QuerySet[Node]) -> dict[int, dict[int, tuple[float, float | None]]]:
    """{model version id: {node id: (score, score's threshold)}}: each version's latest score."""
    rows = (
        NodeScore.objects.filter(node__in=nodes.values("pk"))
        .order_by("model_version_id", "node_id", "-created_at", "-id")
        .values_list("model_version_id", "node_id", "score", "threshold")
    )
    out: dict[int, dict[int, tuple[float, float | None]]] = {}
    for version_id, node_id, score, threshold in rows:
        out.setdefault(version_id, {}).setdefault(node_id, (score, threshold))
    return out


def review_metrics(
    *, nodes: QuerySet[Node], n_boot: int = DEFAULT_BOOTSTRAP, seed: int = DEFAULT_SEED
) -> list[VersionMetrics]:
    """Metrics of every model version that scored any of `nodes`, newest version first."""
    truth = truths(nodes)
    scores = latest_scores(nodes)
    versions = ModelVersion.objects.filter(pk__in=list(scores)).order_by(
        "-is_live", "-created_at", "-id"
    )
    results = []
    for version in versions:
        by_node = scores[version.pk]
        thresholds = {t for _, t in by_node.values() if t is not None}
        threshold = version.threshold
        if threshold is None and len(thresholds) == 1:
            threshold = thresholds.pop()
        evaluated = sorted(n for n in by_node if n in truth)
        y = np.array([truth[n][0] for n in evaluated], dtype=bool)
        s = np.array([by_node[n][0] for n in evaluated], dtype=np.float64)
        metrics = VersionMetrics(
            version=version,
            threshold=threshold,
            evaluated=len(evaluated),
            positives=int(y.sum()),
            negatives=int((~y).sum()),
        )
        for key, value in evaluate(y, s, threshold, n_boot=n_boot, seed=seed).items():
            setattr(metrics, key, value)
        if threshold is not None:
            metrics.scored = len(by_node)
            metrics.screened_negative = sum(1 for score, _ in by_node.values() if score < threshold)
            metrics.missed_positives = [
                {
                    "node": n,
                    "label": truth[n][1],
                    "case": truth[n][2],
                    "case_id": truth[n][3],
                    "score": by_node[n][0],
                }
                for n in evaluated
                if truth[n][0] and by_node[n][0] < threshold
            ]
        else:
            metrics.scored = len(by_node)
        results.append(metrics)
    return results


# ---- plot ---------------------------------------------------------------------------------------

W, H, PAD = 360, 300, 40


def roc_svg(metrics: VersionMetrics) -> str:
    """The ROC curve against confirmed decisions, with the chance diagonal and the operating point."""
    fpr, tpr = metrics.roc.get("fpr") or [], metrics.roc.get("tpr") or []
    if not fpr:
        return ""
    span = W - 2 * PAD, H - 2 * PAD

    def point(x: float, y: float) -> str:
        return f"{PAD + x * span[0]:.1f},{H - PAD - y * span[1]:.1f}"

    curve = "M" + " L".join(point(x, y) for x, y in zip(fpr, tpr, strict=True))
    auc = metrics.auc
    title = f"ROC, {metrics.version.name} (AUC {auc.value:.3f}"
    if auc.low is not None:
        title += f", 95% CI {auc.low:.3f}–{auc.high:.3f}"
    title += ")"
    marker = ""
    if metrics.sensitivity.value is not None and metrics.specificity.value is not None:
        cx, cy = point(1 - metrics.specificity.value, metrics.sensitivity.value).split(",")
        marker = (
            f'<circle class="operating-point" cx="{cx}" cy="{cy}" r="4" fill="#1e6fd9">'
            f"<title>threshold {metrics.threshold:.4g}</title></circle>"
        )
    return (
        f'<svg class="plot" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">'
        f'<rect x="{PAD}" y="{PAD}" width="{span[0]}" height="{span[1]}" fill="none" stroke="#999"/>'
        f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="12">{escape(title)}</text>'
        f'<text x="{W / 2}" y="{H - 8}" text-anchor="middle" font-size="11">1 − specificity</text>'
        f'<text x="12" y="{H / 2}" text-anchor="middle" font-size="11" transform="rotate(-90 12 {H / 2})">sensitivity</text>'
        f'<text x="{PAD}" y="{H - PAD + 14}" font-size="10">0</text>'
        f'<text x="{W - PAD}" y="{H - PAD + 14}" font-size="10" text-anchor="end">1</text>'
        f'<path d="M{point(0, 0)} L{point(1, 1)}" stroke="#bbb" stroke-dasharray="4 4" fill="none"/>'
        f'<path class="roc-curve" d="{curve}" stroke="#b0306a" stroke-width="2" fill="none"/>'
        f"{marker}</svg>"
    )
