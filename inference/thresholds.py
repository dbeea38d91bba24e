"""The node threshold: chosen on validation nodes, then locked on the ModelVersion.

Seed 002 sets the threshold to the highest value that keeps every positive development node
positive (0.6875 there): a node is screened positive when its score is at or above the threshold,
so that value is the lowest positive node's score. Scores live on a 1/16 grid (window 40, stride
10), so the threshold is snapped down onto that grid (a no-op for real node scores, and never
lowering sensitivity). An admin may ask for a lower target sensitivity instead: the threshold is
then the highest one that still keeps at least that share of positives.

Ties: a node whose score equals the threshold is positive, so a negative node with the same score
as the lowest positive one counts as a false positive at that threshold.

Metrics at the chosen threshold: sensitivity, specificity and accuracy, each with a seeded
bootstrap 95% interval (nodes resampled with replacement, threshold held fixed; resamples without
any positive, or negative, are skipped for that metric) and an exact Clopper-Pearson interval. At
100% sensitivity the bootstrap interval is [1, 1] by construction - it cannot see beyond the nodes
it has - so the exact interval is the honest one to quote for sensitivity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "PAPER_THRESHOLD",
    "OperatingPoint",
    "ThresholdError",
    "choose_threshold",
    "lock_threshold",
    "metrics_at",
    "validation_scores",
]

PAPER_THRESHOLD = 0.6875
DEFAULT_GRID = 16
_EPS = 1e-9


class ThresholdError(ValueError):
    """Validation nodes from which no threshold can be chosen (empty, one class, bad values)."""


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and how it does on the validation nodes."""

    threshold: float
    method: str
    target_sensitivity: float
    sensitivity: float
    specificity: float
    accuracy: float
    tp: int
    fn: int
    tn: int
    fp: int
    ci: dict[str, list[float]] = field(default_factory=dict)
    exact_ci: dict[str, list[float]] = field(default_factory=dict)
    n_bootstrap: int = 0
    seed: int = 0
    confidence: float = 0.95
    grid: int | None = DEFAULT_GRID

    @property
    def n_positive(self) -> int:
        return self.tp + self.fn

    @property
    def n_negative(self) -> int:
        return self.tn + self.fp

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_positive": self.n_positive, "n_negative": self.n_negative}


def _as_truth(value: Any) -> bool:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("positive", "pos", "true", "1", "tumour", "tumor"):
            return True
        if low in ("negative", "neg", "false", "0", "normal"):
            return False
        raise ThresholdError(f"cannot read {value!r} as a node's truth (positive / negative)")
    if isinstance(value, bool | np.bool_) or value in (0, 1):
        return bool(value)
    raise ThresholdError(f"cannot read {value!r} as a node's truth (positive / negative)")


def _align(
    node_scores: Mapping[Any, float] | Sequence[float] | np.ndarray,
    truths: Mapping[Any, Any] | Sequence[Any] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and truths as two arrays, from two sequences or two mappings keyed by node."""
    if isinstance(node_scores, Mapping):
        if not isinstance(truths, Mapping):
            raise ThresholdError("give truths as a mapping keyed like node_scores")
        missing = set(node_scores) - set(truths)
        if missing:
            raise ThresholdError(f"no truth for nodes {sorted(map(str, missing))[:10]}")
        keys = list(node_scores)
        scores = [node_scores[k] for k in keys]
        labels = [truths[k] for k in keys]
    else:
        scores, labels = list(node_scores), list(truths)
        if len(scores) != len(labels):
            raise ThresholdError(f"{len(scores)} scores but {len(labels)} truths")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size and not np.all(np.isfinite(s)):
        raise ThresholdError("node scores must be finite numbers")
    if s.size and (s.min() < 0 or s.max() > 1):
        raise ThresholdError("node scores must lie in [0, 1]")
    t = np.asarray([_as_truth(v) for v in labels], dtype=bool)
    return s, t


def _check_classes(truths: np.ndarray) -> None:
    if truths.size == 0:
        raise ThresholdError("no validation nodes: a threshold needs scored nodes with known truth")
    if not truths.any():
        raise ThresholdError(
            f"all {truths.size} validation nodes are negative: sensitivity is undefined, so no"
            " threshold can be chosen; add positive nodes"
        )
    if truths.all():
        raise ThresholdError(
            f"all {truths.size} validation nodes are positive: specificity is undefined, so the"
            " threshold would only be a guess; add negative nodes"
        )


def _snap_down(value: float, grid: int | None) -> float:
    if not grid:
        return float(value)
    return math.floor(value * grid + _EPS) / grid


def metrics_at(scores: np.ndarray, truths: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion counts and rates at ``threshold`` (positive when score >= threshold)."""
    called = scores >= threshold - _EPS
    tp = int(np.sum(called & truths))
    fn = int(np.sum(~called & truths))
    tn = int(np.sum(~called & ~truths))
    fp = int(np.sum(called & ~truths))
    return {
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "accuracy": (tp + tn) / max(1, tp + fn + tn + fp),
    }


def _bootstrap(
    scores: np.ndarray,
    truths: np.ndarray,
    threshold: float,
    *,
    n: int,
    seed: int,
    confidence: float,
) -> dict[str, list[float]]:
    """Percentile intervals of the three metrics over node resamples (threshold fixed)."""
    if n <= 0:
        return {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, scores.size, size=(n, scores.size))
    called = scores[idx] >= threshold - _EPS
    truth = truths[idx]
    tp = np.sum(called & truth, axis=1)
    fn = np.sum(~called & truth, axis=1)
    tn = np.sum(~called & ~truth, axis=1)
    fp = np.sum(called & ~truth, axis=1)
    return percentile_intervals(tp, fn, tn, fp, confidence=confidence)


def percentile_intervals(
    tp: np.ndarray, fn: np.ndarray, tn: np.ndarray, fp: np.ndarray, *, confidence: float
) -> dict[str, list[float]]:
    """Percentile intervals of sensitivity, specificity and accuracy over bootstrap draws, given
    each draw's confusion counts (draws where a metric is undefined are left out)."""
    alpha = (1 - confidence) / 2
    out: dict[str, list[float]] = {}
    for name, num, den in (
        ("sensitivity", tp, tp + fn),
        ("specificity", tn, tn + fp),
        ("accuracy", tp + tn, tp + fn + tn + fp),
    ):
        ok = den > 0
        values = num[ok] / den[ok]
        if values.size:
            out[name] = [float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))]
    return out


def _clopper_pearson(k: int, n: int, confidence: float) -> list[float]:
    from scipy.stats import beta

    if n == 0:
        return [float("nan"), float("nan")]
    alpha = 1 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return [low, high]


def choose_threshold(
    node_scores: Mapping[Any, float] | Sequence[float] | np.ndarray,
    truths: Mapping[Any, Any] | Sequence[Any] | np.ndarray,
    *,
    target_sensitivity: float = 1.0,
    grid: int | None = DEFAULT_GRID,
    n_bootstrap: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> OperatingPoint:
    """The highest threshold (on the 1/``grid`` score grid) whose validation sensitivity is at
    least ``target_sensitivity`` (default 1.0: the lowest positive node's score), with metrics
    and their intervals. Refuses empty, all-negative and all-positive validation sets."""
    if not 0 < target_sensitivity <= 1:
        raise ThresholdError(f"target sensitivity must be in (0, 1], not {target_sensitivity}")
    scores, truth = _align(node_scores, truths)
    _check_classes(truth)
    positives = np.sort(scores[truth])[::-1]
    needed = max(1, math.ceil(target_sensitivity * positives.size - _EPS))
    threshold = _snap_down(float(positives[needed - 1]), grid)
    at = metrics_at(scores, truth, threshold)
    if target_sensitivity >= 1:
        method = "highest threshold with 100% validation sensitivity"
    else:
        method = f"highest threshold with validation sensitivity >= {target_sensitivity:.1%}"
    return OperatingPoint(
        threshold=threshold,
        method=method,
        target_sensitivity=float(target_sensitivity),
        sensitivity=at["sensitivity"],
        specificity=at["specificity"],
        accuracy=at["accuracy"],
        tp=at["tp"],
        fn=at["fn"],
        tn=at["tn"],
        fp=at["fp"],
        ci=_bootstrap(scores, truth, threshold, n=n_bootstrap, seed=seed, confidence=confidence),
        exact_ci={
            "sensitivity": _clopper_pearson(at["tp"], at["tp"] + at["fn"], confidence),
            "specificity": _clopper_pearson(at["tn"], at["tn"] + at["fp"], confidence),
            "accuracy": _clopper_pearson(
                at["tp"] + at["tn"], at["tp"] + at["fn"] + at["tn"] + at["fp"], confidence
            ),
        },
        n_bootstrap=n_bootstrap,
        seed=seed,
        confidence=confidence,
        grid=grid,
    )


def lock_threshold(
    *,
    version,
    node_scores: Mapping[Any, float] | Sequence[float] | np.ndarray,
    truths: Mapping[Any, Any] | Sequence[Any] | np.ndarray,
    target_sensitivity: float = 1.0,
    user=None,
    replace: bool = False,
    source: dict[str, Any] | None = None,
    **kw: Any,
) -> OperatingPoint:
    """Choose the threshold on validation nodes and write it on ``version`` (threshold,
    threshold_method, threshold_metrics). A locked threshold is not changed unless
    ``replace=True``; ``source`` (e.g. the scoring run and nodes used) is kept with the metrics."""
    from django.db import transaction

    from audit.log import record

    from .records import ModelVersion

    point = choose_threshold(node_scores, truths, target_sensitivity=target_sensitivity, **kw)
    with transaction.atomic():
        current = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if current.threshold is not None and not replace:
            raise ThresholdError(
                f"model {current.name} already has a locked threshold ({current.threshold:g},"
                f" {current.threshold_method}); pass replace=True to change it"
            )
        metrics = {**point.to_dict(), "source": source or {}}
        ModelVersion.objects.filter(pk=version.pk).update(
            threshold=point.threshold,
            threshold_method=point.method[:80],
            threshold_metrics=_json_ready(metrics),
        )
        record(
            actor=user,
            action="threshold locked",
            obj=current,
            threshold=point.threshold,
            method=point.method,
            previous=current.threshold,
        )
    version.refresh_from_db()
    return point


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_ready(value.item())
    return value


def validation_scores(*, run, nodes=None) -> tuple[dict[int, float], dict[int, bool]]:
    """Node scores of a ScoringRun and the nodes' ground truths, for the nodes (default: all
    scored nodes of the run) whose truth is known."""
    from slides.models import Node

    from .records import NodeScore

    scores = NodeScore.objects.filter(scoring_run=run).exclude(
        node__ground_truth=Node.GroundTruth.UNKNOWN
    )
    if nodes is not None:
        scores = scores.filter(node__in=nodes)
    out_scores: dict[int, float] = {}
    out_truths: dict[int, bool] = {}
    for row in scores.order_by("created_at", "id").values("node_id", "score", "node__ground_truth"):
        out_scores[row["node_id"]] = row["score"]
        out_truths[row["node_id"]] = row["node__ground_truth"] == Node.GroundTruth.POSITIVE
    return out_scores, out_truths
