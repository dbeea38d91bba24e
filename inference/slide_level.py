"""Slide-level classifier on reconstructed probability maps (seed 000), compared with the
max-score rule.

Seed 000 classified whole slides in two stages: the patch classifier scanned each slide, its patch
probabilities were "reconstructed into images with a smaller size", and a second model trained on
those images gave the slide probability. Here:

1. **The image.** A scoring run stores each slide's heat map (one score per stride cell, 0 outside
   tissue). :func:`reconstruct` pads it to a square (top left, so a slide's aspect ratio is kept)
   and max-pools it to ``size`` x ``size`` (64): each output pixel is the highest score of the
   cells it covers, so a small focus of high scores survives, as in the viewer's overview.
2. **The model.** ``SlideNet``, a small CNN (three 3x3 convolutions, global max and mean pools,
   one linear layer; under a thousand parameters) trained full-batch with Adam and weight decay,
   each step in one of the eight rotations and flips, seeded; it predicts the mean over the
   eight. About a second per training on a CPU for a few dozen slides.
3. **The comparison.** Slides with a known node truth (``Node.ground_truth``) are split into
   ``folds`` folds by case (no patient in two folds); each fold's slides get the probability of a
   model trained on the other folds (out of fold), so every slide is scored by a model that never
   saw it. The AUC of these probabilities and the AUC of the max-score rule (the heat map's
   maximum: the node score of seed 002) are computed on the same slides, with percentile bootstrap
   95% CIs over paired resamples of cases, and the CI of their difference.

A slide takes the truth of its node: a node with several slides, only some holding tumour, would
label its other slides positive too; with one slide per node (the usual case here) they agree.

The result (and a model trained on all slides) is written atomically to
``RESULTS_DIR/slide-level/model-<version>.json`` (and ``.pt``): run
``manage.py slide_level_classifier <version>``; the model page shows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings
from django.utils import timezone

from config.files import write_atomically

from .metrics import auc_by_ranks

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .heatmaps import Raster
    from .records import ModelVersion, ScoringRun

IMAGE_SIZE = 64
FOLDS = 5
BOOTSTRAP = 2000
STEPS = 150


class SlideLevelError(ValueError):
    """Not enough (or unusable) slides for a slide-level classifier, with the reason."""


# ---- the image -------------------------------------------------------------------------------


def reconstruct(scores: np.ndarray, *, size: int = IMAGE_SIZE) -> np.ndarray:
    """A (size, size) float32 image of a (rows, cols) score map: padded to a square with zeros
    (bottom and right), then each output pixel is the maximum of the cells it covers (nearest
    cell when the map is smaller than ``size``)."""
    scores = np.nan_to_num(np.asarray(scores, np.float32))
    if scores.ndim != 2 or scores.size == 0:
        raise SlideLevelError("a heat map must be a non-empty 2-D raster")
    side = max(scores.shape)
    square = np.zeros((side, side), np.float32)
    square[: scores.shape[0], : scores.shape[1]] = scores
    if side < size:
        index = ((np.arange(size) + 0.5) * side / size).astype(np.int64)
        return square[np.ix_(index, index)]
    edges = (np.arange(size) * side) // size  # strictly increasing when side >= size
    pooled = np.maximum.reduceat(square, edges, axis=0)
    return np.maximum.reduceat(pooled, edges, axis=1)


def raster_image(raster: Raster, *, size: int = IMAGE_SIZE) -> np.ndarray:
    """The reconstructed image of a stored heat map (scores = counts / denominator)."""
    return reconstruct(raster.scores, size=size)


# ---- the model ---------------------------------------------------------------------------------


def _slide_net() -> torch.nn.Module:
    import torch
    from torch import nn

    class SlideNet(nn.Module):
        """Three 3x3 convolutions with ReLU (two max-pools between), then the global max and mean
        of the last maps, and one linear layer: the slide's tumour logit."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(4, 8, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(8, 8, 3, padding=1),
                nn.ReLU(),
            )
            self.head = nn.Linear(16, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features(x)
            pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)
            return self.head(pooled).squeeze(1)

    return SlideNet()


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0 ... 7) of the eight rotations and flips of (N, C, H, W) images."""
    import torch

    if k >= 4:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k % 4, dims=(2, 3))


@dataclass
class SlideClassifier:
    """A trained SlideNet: ``predict`` gives the tumour probability of reconstructed images."""

    net: Any
    size: int = IMAGE_SIZE
    history: list[float] = field(default_factory=list)

    def predict(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = torch.as_tensor(np.asarray(images, np.float32))[:, None]
        self.net.eval()
        with torch.inference_mode():
            # the mean over the eight rotations and flips: the answer does not depend on them
            logits = torch.stack([self.net(_dihedral(x, k)) for k in range(8)]).mean(0)
        return torch.sigmoid(logits).numpy().astype(np.float64)


def train_slide_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = STEPS,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> SlideClassifier:
    """Train a SlideNet on (N, size, size) images and 0/1 labels: full batch, each step in one of
    the eight rotations and flips (in turn), Adam, classes weighted to balance, seeded."""
    import torch

    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        raise SlideLevelError(
            "training a slide classifier needs positive and negative slides;"
            f" these {labels.size} are all {'positive' if labels.any() else 'negative'}"
        )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        net = _slide_net()
        x = torch.as_tensor(np.asarray(images, np.float32))[:, None]
        y = torch.as_tensor(labels.astype(np.float32))
        positives = float(labels.sum())
        pos_weight = torch.tensor((labels.size - positives) / positives)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        optimiser = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        history = []
        net.train()
        for step in range(steps):
            optimiser.zero_grad()
            loss = loss_fn(net(_dihedral(x, step % 8)), y)
            loss.backward()
            optimiser.step()
            history.append(float(loss.detach()))
    finally:
        torch.random.set_rng_state(generator_state)
    return SlideClassifier(net=net.eval(), size=images.shape[-1], history=history)


# ---- the comparison ------------------------------------------------------------------------------


def case_folds(groups: np.ndarray, labels: np.ndarray, *, folds: int, seed: int) -> np.ndarray:
    """Fold of each slide: cases shuffled (seeded) and dealt to folds, positive cases (any positive
    slide) and negative cases separately so every fold gets both where possible."""
    groups = np.asarray(groups)
    labels = np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    fold_of_case: dict[Any, int] = {}
    cases = np.unique(groups)
    positive_cases = {g for g in cases if labels[groups == g].any()}
    offset = 0
    for subset in (
        [g for g in cases if g in positive_cases],
        [g for g in cases if g not in positive_cases],
    ):
        order = rng.permutation(len(subset))
        for i, k in enumerate(order):
            fold_of_case[subset[k]] = (offset + i) % folds
        offset += len(subset)
    return np.array([fold_of_case[g] for g in groups], np.int64)


def bootstrap_aucs(
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    groups: np.ndarray,
    *,
    n: int = BOOTSTRAP,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile CIs of each score's AUC, and of the first minus the second, over ``n`` paired
    resamples of cases (a case's slides stay together); resamples with one class are skipped."""
    labels = np.asarray(labels).astype(bool)
    names = list(scores)
    cases, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(cases))]
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {name: [] for name in [*names, "difference"]}
    for _ in range(n):
        picked = rng.integers(0, len(cases), len(cases))
        idx = np.concatenate([members[k] for k in picked])
        y = labels[idx]
        if y.all() or not y.any():
            continue
        values = [auc_by_ranks(y, scores[name][idx]) for name in names]
        for name, value in zip(names, values, strict=True):
            samples[name].append(value)
        if len(values) >= 2:
            samples["difference"].append(values[0] - values[1])
    alpha = (1 - confidence) / 2
    return {
        name: [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] if v else None
        for name, v in samples.items()
    }


def compare_with_max_rule(
    images: np.ndarray,
    max_scores: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    folds: int = FOLDS,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
    steps: int = STEPS,
) -> dict[str, Any]:
    """Out-of-fold slide-classifier probabilities vs the max-score rule on the same slides: both
    AUCs with bootstrap 95% CIs (paired, by case) and the CI of their difference."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos < 2 or n_neg < 2:
        raise SlideLevelError(
            f"comparing needs at least 2 positive and 2 negative slides; there are {n_pos} and {n_neg}"
        )
    n_cases = len(np.unique(groups))
    folds = max(2, min(folds, n_cases))
    fold = case_folds(groups, labels, folds=folds, seed=seed)
    probabilities = np.full(labels.size, np.nan)
    for k in range(folds):
        test = fold == k
        if not test.any():
            continue
        train = ~test
        if labels[train].all() or not labels[train].any():
            raise SlideLevelError(
                f"fold {k + 1} of {folds} leaves only one class to train on; add slides or use fewer folds"
            )
        model = train_slide_classifier(images[train], labels[train], steps=steps, seed=seed + k)
        probabilities[test] = model.predict(images[test])
    max_scores = np.asarray(max_scores, np.float64)
    cis = bootstrap_aucs(
        labels,
        {"slide_classifier": probabilities, "max_score": max_scores},
        groups,
        n=bootstrap,
        seed=seed,
    )
    classifier_auc = auc_by_ranks(labels, probabilities)
    max_auc = auc_by_ranks(labels, max_scores)
    return {
        "slides": int(labels.size),
        "positive": n_pos,
        "negative": n_neg,
        "cases": int(n_cases),
        "folds": int(folds),
        "bootstrap": int(bootstrap),
        "slide_classifier": {"auc": classifier_auc, "ci95": cis["slide_classifier"]},
        "max_score": {"auc": max_auc, "ci95": cis["max_score"]},
        "difference": {"auc": classifier_auc - max_auc, "ci95": cis["difference"]},
        "probabilities": probabilities.tolist(),
    }


# ---- from a scoring run ----------------------------------------------------------------------------


def result_path(version: ModelVersion) -> Path:
    return Path(settings.RESULTS_DIR) / "slide-level" / f"model-{version.pk}.json"


def latest_run(version: ModelVersion) -> ScoringRun | None:
    from .records import ScoringRun

    return (
        ScoringRun.objects.filter(model_version=version, heatmaps__isnull=False)
        .distinct()
        .order_by("-created_at", "-id")
        .first()
    )


def slide_set(run: ScoringRun, *, size: int = IMAGE_SIZE) -> dict[str, Any]:
    """The run's slides whose node truth is known: reconstructed images, max scores, truths and
    cases (the latest heat map per slide)."""
    from slides.models import Node

    from .heatmaps import load_raster

    known = (Node.GroundTruth.POSITIVE, Node.GroundTruth.NEGATIVE)
    heatmaps = (
        run.heatmaps.filter(slide__node__ground_truth__in=known)
        .select_related("slide__node")
        .order_by("slide_id", "-created_at", "-id")
    )
    seen: set[int] = set()
    images, max_scores, labels, groups, slides = [], [], [], [], []
    for heatmap in heatmaps:
        if heatmap.slide_id in seen:
            continue
        seen.add(heatmap.slide_id)
        images.append(raster_image(load_raster(heatmap), size=size))
        max_scores.append(heatmap.max_score)
        labels.append(heatmap.slide.node.ground_truth == Node.GroundTruth.POSITIVE)
        groups.append(heatmap.slide.node.case_id)
        slides.append(heatmap.slide_id)
    return {
        "images": np.stack(images) if images else np.zeros((0, size, size), np.float32),
        "max_scores": np.asarray(max_scores, np.float64),
        "labels": np.asarray(labels, bool),
        "groups": np.asarray(groups, np.int64),
        "slides": slides,
    }


def build_slide_classifier(
    *,
    version: ModelVersion,
    run: ScoringRun | None = None,
    size: int = IMAGE_SIZE,
    folds: int = FOLDS,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
    steps: int = STEPS,
) -> dict[str, Any]:
    """Compare a slide classifier with the max-score rule on ``run`` (default: the version's latest
    run with heat maps), train the final classifier on every slide, and write both (atomically)."""
    import io

    import torch

    run = run or latest_run(version)
    if run is None:
        raise SlideLevelError(f"model {version.name} has no scoring run with heat maps yet")
    data = slide_set(run, size=size)
    comparison = compare_with_max_rule(
        data["images"],
        data["max_scores"],
        data["labels"],
        data["groups"],
        folds=folds,
        bootstrap=bootstrap,
        seed=seed,
        steps=steps,
    )
    final = train_slide_classifier(data["images"], data["labels"], steps=steps, seed=seed)
    path = result_path(version)
    weights = path.with_suffix(".pt")
    buffer = io.BytesIO()
    torch.save({"state_dict": final.net.state_dict(), "size": size}, buffer)
    write_atomically(weights, buffer.getvalue())
    result = {
        "format": "nodescope-slide-level/1",
        "model_version": version.pk,
        "scoring_run": run.pk,
        "image_size": size,
        "steps": steps,
        "seed": seed,
        "slide_ids": data["slides"],
        "created_at": timezone.now().isoformat(),
        **comparison,
    }
    write_atomically(path, json.dumps(result, indent=1).encode())
    return result


def load_result(version: ModelVersion) -> dict[str, Any] | None:
    """The stored comparison of ``version``, or None."""
    path = result_path(version)
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("format") == "nodescope-slide-level/1" else None
