"""ROC curve, AUC and accuracy in numpy (no scikit-learn), with tied scores handled exactly.

Tied scores form one threshold: the ROC moves diagonally across them, so the trapezoidal area
equals the Mann-Whitney statistic with ties counted as one half (``auc_by_ranks`` computes it
independently, from mid-ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["RocCurve", "accuracy", "auc_by_ranks", "roc_auc", "roc_curve"]


@dataclass(frozen=True)
class RocCurve:
    """ROC points ordered by decreasing threshold; point i counts ``score >= thresholds[i]`` as
    positive. The first point is (0, 0) at threshold +inf."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    @property
    def auc(self) -> float:
        return _trapezoid(self.fpr, self.tpr)

    def to_dict(self) -> dict[str, list[float | None]]:
        """JSON-ready lists (the +inf threshold becomes None)."""
        thr = [None if not np.isfinite(t) else float(t) for t in self.thresholds]
        return {"fpr": self.fpr.tolist(), "tpr": self.tpr.tolist(), "thresholds": thr}


def _binary_inputs(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    values = np.unique(y)
    if not np.all(np.isin(values, (0, 1))):
        raise ValueError(f"labels must be 0/1 (or bool), got {values[:5].tolist()}")
    return y.astype(bool), s


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def roc_curve(y_true: ArrayLike, scores: ArrayLike, *, drop_intermediate: bool = False) -> RocCurve:
    """ROC of ``scores`` (higher = more positive) for binary ``y_true``.

    One point per distinct score. ``drop_intermediate`` removes points on a straight segment
    between their neighbours (the area is unchanged), to store a compact curve. Raises
    ``ValueError`` unless both classes are present.
    """
    y, s = _binary_inputs(y_true, scores)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs at least one positive and one negative")
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last]]
    if drop_intermediate and fpr.size > 2:
        # keep a point unless it lies on the segment joining its neighbours
        d1x, d1y = fpr[1:-1] - fpr[:-2], tpr[1:-1] - tpr[:-2]
        d2x, d2y = fpr[2:] - fpr[1:-1], tpr[2:] - tpr[1:-1]
        collinear = np.isclose(d1x * d2y - d1y * d2x, 0.0, atol=1e-12)
        keep = np.r_[True, ~collinear, True]
        fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    return RocCurve(fpr=fpr, tpr=tpr, thresholds=thresholds)


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, _ = _binary_inputs(y_true, scores)
    if y.all() or not y.any():
        return float("nan")
    return roc_curve(y_true, scores).auc


def auc_by_ranks(y_true: ArrayLike, scores: ArrayLike) -> float:
    """AUC as the Mann-Whitney U statistic over mid-ranks: P(score+ > score-) + P(tie) / 2."""
    y, s = _binary_inputs(y_true, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    s_sorted = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    ends = np.r_[starts[1:], s.size]
    mid = (starts + ends + 1) / 2.0  # 1-based mid-rank of each tie block
    ranks[order] = np.repeat(mid, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Share of predictions equal to the labels."""
    t, p = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"{t.size} labels but {p.size} predictions")
    if t.size == 0:
        return float("nan")
    return float(np.mean(t == p))
