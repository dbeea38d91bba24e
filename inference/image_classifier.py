"""Whole-image classifiers for CT and ultrasound images of lymph nodes: metastatic versus benign.

Seeds 003 (CT, eight CNNs compared, ResNet-50 best, AUROC 0.953) and 004 (ultrasound, Inception-v3
best, AUROC 0.89 [0.83, 0.95], compared with five radiologists) classify a whole image of a node.
Here such a classifier trains with the TrainingRun machinery of :mod:`inference.jobs` unchanged;
this module adds what differs from patch classifiers:

* the dataset kind ``{"kind": "node-images", "modality": "ct"|"ultrasound", "size": 224,
  "val_fraction": 0.3, "seed": 0}``: every `Slide` of that modality whose node's ground truth is
  positive (metastatic) or negative (benign), split **by patient** (the case's patient pseudonym,
  else the case) with :func:`inference.datasets.split_indices`; pixels from
  :func:`slides.node_images.render_node_image` (8-bit, the image's own window), resized to
  ``size`` x ``size`` (aspect ratio not kept), grey images repeated to three channels;
* ImageNet-style training augmentation: a random resized crop (area 60-100%, aspect 3/4-4/3), a
  horizontal flip and a small rotation (+-10 degrees) here, in one affine resampling per image;
  brightness and contrast jitter and ImageNet mean/std from the recipe
  (:class:`inference.training.TrainingRecipe`, whose defaults for node images are
  :data:`IMAGE_RECIPE_DEFAULTS`: no quarter turns, no hue/saturation jitter);
* evidence for the model page: AUROC with a 95% interval from a bootstrap over patients (and
  DeLong's interval over images), and sensitivity, specificity and accuracy with 95% intervals
  (bootstrap over patients and exact Clopper-Pearson) at an operating point, by default the
  threshold maximising Youden's J on the validation images, or the highest one that reaches a
  target sensitivity an admin chooses (as the node threshold allows);
* :func:`predict_images` for reader studies: probability of metastatic per slide.

ModelVersions of these classifiers have the stage ``"node-image"`` (outside ``Stage``'s choices,
as MIL models have ``"mil"``): promoting one rescores no whole slide.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from slides.models import Slide

    from .jobs import LoadedDataset
    from .records import ModelVersion

__all__ = [
    "CLASSES",
    "DATASET_KIND",
    "IMAGE_ARCHITECTURES",
    "IMAGE_RECIPE_DEFAULTS",
    "IMAGE_STAGE",
    "NodeImageError",
    "NodeImageSet",
    "auroc_ci",
    "check_node_images",
    "compare_versions",
    "delong_ci",
    "image_recipe",
    "load_node_images",
    "operating_point",
    "predict_images",
    "random_resized_crop",
    "youden_threshold",
]

DATASET_KIND = "node-images"
IMAGE_STAGE = "node-image"
CLASSES: tuple[str, str] = ("benign", "metastatic")
MODALITIES: tuple[str, ...] = ("ct", "ultrasound")
IMAGE_ARCHITECTURES: tuple[str, ...] = (
    "resnet50",
    "inception-v3",
    "resnet18",
    "mobilenetv2",
    "resnet-small",
)
DEFAULT_SIZE = 224
#: Training images are kept this much larger than the model's input, so that random crops are
#: resized down (as validation images are), never up (1.25: 280 px for 224, torchvision's 256/224
#: ratio rounded up for the crop's area range).
TRAIN_OVERSIZE = 1.25
#: Recipe defaults for node images (a run's own recipe overrides them): ImageNet-style colour
#: jitter of brightness and contrast only (the images are grey), no dihedral quarter turns (an
#: ultrasound image has a depth direction), batches of 32 (a few hundred images per set).
IMAGE_RECIPE_DEFAULTS: dict[str, Any] = {
    "dihedral": False,
    "brightness": 0.2,
    "contrast": 0.2,
    "saturation": 0.0,
    "hue": 0.0,
    "batch_size": 32,
    "eval_batch_size": 64,
}
N_BOOTSTRAP = 2000


class NodeImageError(ValueError):
    """A node-image dataset or request that cannot be used, with the reason."""


# ---- augmentation --------------------------------------------------------------------------------


def random_resized_crop(
    batch: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_rotation_deg: float = 10.0,
    flip: bool = True,
    out_size: int | None = None,
) -> torch.Tensor:
    """ImageNet-style geometric augmentation of (N, C, H, W) floats in one resampling per image: a
    crop of ``scale`` of the area with aspect ``ratio`` at a random place, a horizontal flip
    (p = 0.5) and a rotation within +-``max_rotation_deg``, resized to ``out_size`` (default H)
    square (bilinear, border values outside). Draws from ``generator``; returns float32.

    Give it images somewhat larger than ``out_size`` (the training set keeps them at
    :data:`TRAIN_OVERSIZE` times the size): crops are then shrunk, not enlarged, and keep the
    sharpness (ultrasound speckle, CT noise) of the validation images, which are resized down
    from the originals too."""
    n = batch.shape[0]
    x = batch.float()
    u = torch.rand(n, 6, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    tx = (1 - w) * (2 * u[:, 2] - 1)
    ty = (1 - h) * (2 * u[:, 3] - 1)
    sign = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    angle = torch.deg2rad((2 * u[:, 5] - 1) * max_rotation_deg)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * w * sign
    theta[:, 0, 1] = -sin * h
    theta[:, 1, 0] = sin * w * sign
    theta[:, 1, 1] = cos * h
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    size = out_size or x.shape[-1]
    grid = F.affine_grid(theta.to(x.device), [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ---- datasets ------------------------------------------------------------------------------------


class NodeImageSet(torch.utils.data.Dataset):
    """Whole images as (C, size, size) uint8 with labels (0 benign, 1 metastatic) and groups
    (patients). With ``augment`` every batch goes through :func:`random_resized_crop` to
    ``out_size`` (default: the stored size), drawn from a generator seeded by ``seed`` and the
    batch's indices (reproducible; the training loop permutes the order every epoch, so epochs see
    different crops)."""

    classes = list(CLASSES)

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        *,
        groups: Sequence | np.ndarray | None = None,
        slide_ids: Sequence[int] | None = None,
        augment: bool = False,
        seed: int = 0,
        out_size: int | None = None,
    ) -> None:
        images = np.asarray(images)
        if images.ndim == 3:  # (N, H, W) grey
            images = images[:, None]
        elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise NodeImageError(f"images must be (N, H, W) or (N, C, H, W), not {images.shape}")
        if images.dtype != np.uint8:
            raise NodeImageError(f"images must be uint8, not {images.dtype}")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if self.labels.size != images.shape[0]:
            raise NodeImageError(f"{images.shape[0]} images but {self.labels.size} labels")
        self.groups = None if groups is None else np.asarray(groups).reshape(-1)
        self.slide_ids = list(slide_ids) if slide_ids is not None else None
        self.augment = augment
        self.seed = seed
        self.out_size = out_size
        if out_size is not None and not augment and out_size != images.shape[-1]:
            raise NodeImageError("out_size differs from the images' size: only for augmentation")

    def __len__(self) -> int:
        return int(self.labels.size)

    def _three(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, _y = self.get_batch([index])
        return x[0], int(self.labels[index])

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        x = self._three(self.images[idx])
        y = torch.from_numpy(self.labels[idx.numpy()])
        if not self.augment:
            return x.contiguous(), y
        digest = hashlib.blake2b(idx.numpy().tobytes(), digest_size=8).digest()
        seed = (self.seed * 1_000_003 + int.from_bytes(digest, "little")) % (2**63 - 1)
        generator = torch.Generator().manual_seed(seed)
        x = random_resized_crop(x.float().div_(255.0), generator=generator, out_size=self.out_size)
        return x, y

    def subset(
        self,
        indices: Sequence[int] | np.ndarray,
        *,
        augment: bool,
        images: np.ndarray | None = None,
        out_size: int | None = None,
    ) -> NodeImageSet:
        """The images at ``indices`` (a copy; from ``images`` when given, e.g. the same images at
        the training size), with or without augmentation."""
        idx = np.asarray(indices, dtype=np.int64)
        source = self.images.numpy() if images is None else images
        return NodeImageSet(
            source[idx],
            self.labels[idx],
            groups=None if self.groups is None else self.groups[idx],
            slide_ids=None if self.slide_ids is None else [self.slide_ids[i] for i in idx],
            augment=augment,
            seed=self.seed,
            out_size=out_size,
        )


def to_model_input(image, size: int) -> np.ndarray:
    """A PIL image (or uint8 array) as (C, size, size) uint8: grey stays one channel, colour is RGB."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    array = np.asarray(resized)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """(C, H, W) arrays of one or three channels into one (N, C, H, W) array."""
    channels = max(a.shape[0] for a in arrays)
    return np.stack([np.repeat(a, 3, axis=0) if a.shape[0] < channels else a for a in arrays])


@dataclass(frozen=True)
class NodeImageSource:
    """A parsed ``node-images`` dataset source."""

    modality: str
    size: int
    val_fraction: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": DATASET_KIND,
            "modality": self.modality,
            "size": self.size,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
        }


def parse_source(source: Mapping[str, Any]) -> NodeImageSource:
    """Check a ``node-images`` source; unknown keys and bad values raise :class:`NodeImageError`."""
    allowed = {"kind", "modality", "size", "val_fraction", "seed"}
    unknown = sorted(set(source) - allowed)
    if unknown:
        raise NodeImageError(f"unknown node-images field(s): {', '.join(unknown)}")
    modality = str(source.get("modality", "")).strip().lower()
    if modality not in MODALITIES:
        raise NodeImageError(
            f"modality must be one of {', '.join(MODALITIES)}, not {source.get('modality')!r}"
        )
    try:
        size = int(source.get("size", DEFAULT_SIZE))
        val_fraction = float(source.get("val_fraction", 0.3))
        seed = int(source.get("seed", 0))
    except (TypeError, ValueError) as exc:
        raise NodeImageError(f"size, val_fraction and seed must be numbers: {exc}") from None
    if not 32 <= size <= 1024:
        raise NodeImageError(f"size must be 32-1024 px, not {size}")
    if not 0.0 < val_fraction < 1.0:
        raise NodeImageError(f"val_fraction must be between 0 and 1, not {val_fraction}")
    return NodeImageSource(modality=modality, size=size, val_fraction=val_fraction, seed=seed)


def _labelled_slides(modality: str, scope=None) -> list[tuple[Slide, int, str]]:
    """Slides of ``modality`` whose node's ground truth is known: (slide, label, patient key),
    of the labs ``scope`` may read (:mod:`inference.scope`; None: every lab)."""
    from slides.models import Node, Slide

    slides = (
        Slide.objects.all() if scope is None else scope.narrow(Slide.objects.all(), "node__case__")
    )
    rows = (
        slides.filter(
            modality=modality,
            node__ground_truth__in=[Node.GroundTruth.POSITIVE, Node.GroundTruth.NEGATIVE],
        )
        .select_related("node__case")
        .order_by("pk")
    )
    out = []
    for slide in rows:
        case = slide.node.case
        patient = (
            f"patient:{case.patient_pseudonym}" if case.patient_pseudonym else f"case:{case.pk}"
        )
        label = int(slide.node.ground_truth == Node.GroundTruth.POSITIVE)
        out.append((slide, label, patient))
    return out


def check_node_images(source: Mapping[str, Any], *, scope=None) -> dict[str, int]:
    """Refuse, before anything is queued, a node-images dataset without images, without one of
    the classes, with fewer than two images of a class, or of a single patient; returns the
    counts per class."""
    spec = parse_source(source)
    rows = _labelled_slides(spec.modality, scope)
    counts = {
        name: sum(1 for _s, label, _p in rows if label == i) for i, name in enumerate(CLASSES)
    }
    if not rows:
        raise NodeImageError(
            f"no {spec.modality} images of nodes with a known ground truth (positive or negative)"
        )
    missing = [name for name, n in counts.items() if n == 0]
    if missing:
        raise NodeImageError(
            f"no {missing[0]} {spec.modality} images (nodes with ground truth "
            f"{'negative' if missing[0] == 'benign' else 'positive'}); training needs both "
            f"classes, counts are {counts}"
        )
    if min(counts.values()) < 2:
        raise NodeImageError(f"each class needs at least two images; counts are {counts}")
    if len({p for _s, _l, p in rows}) < 2:
        raise NodeImageError("all images are of one patient; a split by patient needs two")
    return counts


def load_node_images(source: Mapping[str, Any], *, scope=None) -> LoadedDataset:
    """Render, resize and split the images a ``node-images`` source selects (see the module
    docstring); the content hash covers the images (checksums), labels, patients, size and split
    parameters, so model versions with one hash were trained and validated on the same images."""
    from slides.node_images import render_node_image

    from .datasets import split_indices
    from .jobs import LoadedDataset

    spec = parse_source(source)
    check_node_images(source, scope=scope)
    rows = _labelled_slides(spec.modality, scope)
    patients = sorted({p for _s, _l, p in rows})
    patient_index = {p: i for i, p in enumerate(patients)}
    train_size = round(spec.size * TRAIN_OVERSIZE)
    arrays, large, labels, groups, slide_ids, checksums = [], [], [], [], [], []
    for slide, label, patient in rows:
        try:
            image = render_node_image(slide)
        except Exception as exc:  # noqa: BLE001 - name the image that cannot be read
            raise NodeImageError(f"image {slide.pk} ({slide.name}) cannot be read: {exc}") from exc
        arrays.append(to_model_input(image, spec.size))
        large.append(to_model_input(image, train_size))
        labels.append(label)
        groups.append(patient_index[patient])
        slide_ids.append(slide.pk)
        checksums.append(slide.checksum)
    full = NodeImageSet(_stack(arrays), labels, groups=groups, slide_ids=slide_ids, seed=spec.seed)
    split = split_indices(
        labels=full.labels, groups=full.groups, val_fraction=spec.val_fraction, seed=spec.seed
    )
    train_set = full.subset(split.train, augment=True, images=_stack(large), out_size=spec.size)
    val_set = full.subset(split.val, augment=False)
    digest = hashlib.sha256(
        json.dumps(
            {
                "source": spec.to_dict(),
                "images": [
                    [c, lab, g] for c, lab, g in zip(checksums, labels, groups, strict=True)
                ],
                "render": "slides.node_images.render_node_image/default window",
            },
            sort_keys=True,
        ).encode()
    )
    y = np.asarray(labels)
    summary = {
        "kind": DATASET_KIND,
        "modality": spec.modality,
        "size": spec.size,
        "classes": list(CLASSES),
        "counts": {name: int((y == i).sum()) for i, name in enumerate(CLASSES)},
        "train": len(train_set),
        "val": len(val_set),
        "patients": len(patients),
        "val_patients": int(np.unique(full.groups[split.val]).size),
        "split": split.note.replace("groups", "patients").replace("patches", "images"),
        "val_fraction": spec.val_fraction,
        "seed": spec.seed,
        "augmentation": "random resized crop (area 0.6-1, aspect 3/4-4/3), horizontal flip, "
        "rotation +-10 deg; brightness/contrast jitter from the recipe; ImageNet mean/std",
    }
    return LoadedDataset(
        train=train_set, val=val_set, content_hash=digest.hexdigest(), summary=summary
    )


def image_recipe(recipe: Mapping[str, Any] | None) -> dict[str, Any]:
    """A run's recipe with the node-image defaults under it (its own values win)."""
    return {**IMAGE_RECIPE_DEFAULTS, **dict(recipe or {})}


def check_image_request(
    *,
    dataset_source: Mapping[str, Any],
    architecture: str,
    recipe: Mapping[str, Any] | None,
    scope=None,
) -> tuple[str, dict[str, Any]]:
    """The checks of a node-image run; returns its stage and recipe (with the defaults)."""
    from .models import canonical_name
    from .training import TrainingRecipe

    try:
        name = canonical_name(architecture)
    except ValueError:
        name = ""
    if name not in IMAGE_ARCHITECTURES:
        raise NodeImageError(
            f"unknown architecture {architecture!r} for node images; choose one of "
            f"{list(IMAGE_ARCHITECTURES)}"
        )
    merged = image_recipe(recipe)
    try:
        TrainingRecipe.from_dict(merged)
    except (TypeError, ValueError) as exc:
        raise NodeImageError(f"bad recipe: {exc}") from exc
    check_node_images(dataset_source, scope=scope)
    return IMAGE_STAGE, merged


# ---- statistics ------------------------------------------------------------------------------


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def delong_ci(
    truths: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
) -> dict[str, float | list[float]]:
    """AUROC and its DeLong et al. (1988) standard error and normal interval (clipped to 0-1).

    With placement values V10(x_i) = mean over negatives of psi(x_i, y_j) and V01(y_j) = mean over
    positives (psi = 1 when the positive scores higher, 1/2 on a tie): var = s10 / m + s01 / n.
    """
    t = np.asarray(truths, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    pos, neg = s[t], s[~t]
    if pos.size == 0 or neg.size == 0:
        raise NodeImageError("AUROC needs at least one metastatic and one benign image")
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc = float(psi.mean())
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    s10 = float(v10.var(ddof=1)) if pos.size > 1 else 0.0
    s01 = float(v01.var(ddof=1)) if neg.size > 1 else 0.0
    se = math.sqrt(s10 / pos.size + s01 / neg.size)
    z = _z(confidence)
    return {"auc": auc, "se": se, "ci": [max(0.0, auc - z * se), min(1.0, auc + z * se)]}


def delong_paired(
    truths: Sequence[bool] | np.ndarray,
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
) -> dict[str, float]:
    """DeLong's test of two correlated AUROCs (two models on the same images): the difference
    A - B, its standard error from the placement values' covariances, and the two-sided p-value
    of z = difference / se (1.0 when both models rank the images identically)."""
    from scipy.stats import norm

    t = np.asarray(truths, dtype=bool).reshape(-1)
    placements = []
    for scores in (scores_a, scores_b):
        sc = np.asarray(scores, dtype=np.float64).reshape(-1)
        if sc.size != t.size:
            raise NodeImageError(f"{t.size} truths but {sc.size} scores")
        pos, neg = sc[t], sc[~t]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        placements.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    m, n = int(t.sum()), int((~t).sum())
    if m < 2 or n < 2:
        raise NodeImageError("a paired DeLong test needs two metastatic and two benign images")
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = placements
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = float(auc_a - auc_b)
    se = math.sqrt(max(float(var), 0.0))
    # no spread at all: the same ranking (p = 1), or a difference no variance can test (nan)
    p = float(2 * norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0.0 else math.nan)
    return {"difference": diff, "se": se, "p": p}


def _group_index(groups: Sequence | np.ndarray | None, n: int) -> list[np.ndarray]:
    """Image indices per group (each image its own group when ``groups`` is None)."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    g = np.asarray(groups).reshape(-1)
    if g.size != n:
        raise NodeImageError(f"{g.size} groups for {n} images")
    _values, inverse = np.unique(g, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def auroc_ci(
    truths: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    groups: Sequence | np.ndarray | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """AUROC with a percentile bootstrap interval over patients (``groups``; images when None):
    patients are drawn with replacement and all their images come along, so images of one patient
    are not counted as independent evidence. Resamples without both classes are skipped. DeLong's
    interval (images independent) is given beside it."""
    from .metrics import auc_by_ranks

    t = np.asarray(truths, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if t.size != s.size:
        raise NodeImageError(f"{t.size} truths but {s.size} scores")
    delong = delong_ci(t, s, confidence=confidence)
    members = _group_index(groups, t.size)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(max(0, n_bootstrap)):
        draw = rng.integers(0, len(members), size=len(members))
        idx = np.concatenate([members[k] for k in draw])
        tb = t[idx]
        if tb.all() or not tb.any():
            continue
        values.append(auc_by_ranks(tb, s[idx]))
    alpha = (1 - confidence) / 2
    ci = (
        [float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))]
        if values
        else [float("nan"), float("nan")]
    )
    return {
        "auc": delong["auc"],
        "ci": ci,
        "method": "percentile bootstrap over patients" if groups is not None else "bootstrap",
        "n_bootstrap": n_bootstrap,
        "n_used": len(values),
        "n_groups": len(members),
        "n_positive": int(t.sum()),
        "n_negative": int((~t).sum()),
        "delong_ci": delong["ci"],
        "delong_se": delong["se"],
        "confidence": confidence,
        "seed": seed,
    }


def youden_threshold(
    truths: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> float:
    """The score threshold (positive at or above it) maximising Youden's J = sensitivity +
    specificity - 1 over the observed scores; among equal J the highest threshold."""
    from .metrics import roc_curve

    curve = roc_curve(truths, scores)
    j = curve.tpr - curve.fpr
    finite = np.isfinite(curve.thresholds)
    j = np.where(finite, j, -np.inf)
    # thresholds decrease: the first best is the highest (J compared up to float rounding)
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])
    return float(curve.thresholds[best])


def _bootstrap_counts(
    called: np.ndarray,
    truths: np.ndarray,
    members: list[np.ndarray],
    *,
    n: int,
    seed: int,
    confidence: float,
) -> dict[str, list[float]]:
    """Percentile intervals of sensitivity, specificity and accuracy over resampled groups (the
    threshold held fixed): per-group confusion counts, summed over each draw."""
    from .thresholds import percentile_intervals

    if n <= 0:
        return {}
    counts = np.array(
        [
            [
                np.sum(called[m] & truths[m]),
                np.sum(~called[m] & truths[m]),
                np.sum(~called[m] & ~truths[m]),
                np.sum(called[m] & ~truths[m]),
            ]
            for m in members
        ],
        dtype=np.int64,
    )
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(members), size=(n, len(members)))
    tp, fn, tn, fp = np.moveaxis(counts[draws].sum(axis=1), -1, 0)
    return percentile_intervals(tp, fn, tn, fp, confidence=confidence)


def operating_point(
    truths: Sequence[bool] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    *,
    groups: Sequence | np.ndarray | None = None,
    target_sensitivity: float | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    confidence: float = 0.95,
):
    """The operating point on validation images: Youden's J by default, else the highest
    threshold whose sensitivity reaches ``target_sensitivity``; sensitivity, specificity and
    accuracy with a bootstrap interval over patients (``ci``) and exact Clopper-Pearson
    intervals (``exact_ci``). Returns a :class:`inference.thresholds.OperatingPoint`."""
    from .thresholds import (
        OperatingPoint,
        ThresholdError,
        _clopper_pearson,
        choose_threshold,
        metrics_at,
    )

    t = np.asarray(truths, dtype=bool).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if t.size != s.size:
        raise NodeImageError(f"{t.size} truths but {s.size} scores")
    if t.size == 0 or t.all() or not t.any():
        raise NodeImageError(
            "validation images need both metastatic and benign ones to choose an operating point"
        )
    if target_sensitivity is None:
        threshold = youden_threshold(t, s)
        method = "Youden's J on validation images"
        target = float("nan")
    else:
        try:
            chosen = choose_threshold(
                s, t, target_sensitivity=target_sensitivity, grid=None, n_bootstrap=0
            )
        except ThresholdError as exc:
            raise NodeImageError(str(exc)) from exc
        threshold, method, target = chosen.threshold, chosen.method, float(target_sensitivity)
        method = method.replace("validation sensitivity", "validation image sensitivity")
    at = metrics_at(s, t, threshold)
    called = s >= threshold - 1e-9
    members = _group_index(groups, t.size)
    return OperatingPoint(
        threshold=threshold,
        method=method,
        target_sensitivity=target,
        sensitivity=at["sensitivity"],
        specificity=at["specificity"],
        accuracy=at["accuracy"],
        tp=at["tp"],
        fn=at["fn"],
        tn=at["tn"],
        fp=at["fp"],
        ci=_bootstrap_counts(called, t, members, n=n_bootstrap, seed=seed, confidence=confidence),
        exact_ci={
            "sensitivity": _clopper_pearson(at["tp"], at["tp"] + at["fn"], confidence),
            "specificity": _clopper_pearson(at["tn"], at["tn"] + at["fp"], confidence),
            "accuracy": _clopper_pearson(at["tp"] + at["tn"], t.size, confidence),
        },
        n_bootstrap=n_bootstrap,
        seed=seed,
        confidence=confidence,
        grid=None,
    )


# ---- model versions: evidence, operating point, comparison ---------------------------------------


def _version_preprocessing(version: ModelVersion) -> tuple[int, tuple, tuple]:
    """Image size, mean and std a node-image model was trained with."""
    from .augmentation import IMAGENET_MEAN, IMAGENET_STD

    size = int((version.dataset_summary or {}).get("size") or DEFAULT_SIZE)
    hp = version.hyperparameters or {}
    return size, tuple(hp.get("mean") or IMAGENET_MEAN), tuple(hp.get("std") or IMAGENET_STD)


def _positive_index(classes: Sequence[str]) -> int:
    classes = list(classes)
    return classes.index("metastatic") if "metastatic" in classes else len(classes) - 1


def score_images(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    positive: int = 1,
    batch_size: int = 32,
) -> np.ndarray:
    """Probability of class ``positive`` for (N, 3, H, W) uint8 images, batched, in eval mode."""
    from .augmentation import normalize, to_float

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, images.shape[0], batch_size):
                x = to_float(images[start : start + batch_size].to(device))
                x = normalize(x, mean=tuple(mean), std=tuple(std))
                out.append(torch.softmax(model(x).float(), dim=1)[:, positive].cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def _round(values: Iterable[float], digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in values]


def evidence_from_scores(
    *,
    truths: np.ndarray,
    scores: np.ndarray,
    groups: np.ndarray | None,
    slide_ids: Sequence[int] | None,
    target_sensitivity: float | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """What a node-image ModelVersion's ``threshold_metrics`` holds: the operating point's fields
    (as :class:`~inference.thresholds.OperatingPoint` has them), ``auroc`` with its intervals,
    and the validation predictions the point can be chosen again from."""
    from .thresholds import _json_ready

    point = operating_point(
        truths,
        scores,
        groups=groups,
        target_sensitivity=target_sensitivity,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    auroc = auroc_ci(truths, scores, groups=groups, n_bootstrap=n_bootstrap, seed=seed)
    return _json_ready(
        {
            **point.to_dict(),
            "auroc": auroc,
            "unit": "image",
            "validation": {
                "slides": list(slide_ids) if slide_ids is not None else None,
                "groups": None if groups is None else [int(g) for g in groups],
                "truths": [int(v) for v in truths],
                "scores": _round(scores),
            },
        }
    )


def evidence_fields(result, dataset: LoadedDataset) -> dict[str, Any]:
    """ModelVersion fields of a trained node-image classifier: its validation images scored with
    the best weights, AUROC [CI] and the default operating point (Youden's J) as ``threshold``,
    ``threshold_method`` and ``threshold_metrics``. A validation set without both classes gives
    no operating point: then only ``threshold_metrics["error"]`` says why."""
    val = dataset.val
    model = result.build_model()
    scores = score_images(
        model,
        val.get_batch(np.arange(len(val)))[0],
        mean=result.recipe.mean,
        std=result.recipe.std,
        positive=_positive_index(result.classes),
    )
    truths = val.labels == _positive_index(result.classes)
    try:
        metrics = evidence_from_scores(
            truths=truths,
            scores=scores,
            groups=val.groups,
            slide_ids=val.slide_ids,
            seed=int(dataset.summary.get("seed", 0)),
        )
    except NodeImageError as exc:
        return {"threshold_metrics": {"error": str(exc)}}
    return {
        "threshold": metrics["threshold"],
        "threshold_method": metrics["method"][:80],
        "threshold_metrics": metrics,
    }


def is_image_version(version: ModelVersion) -> bool:
    return version.stage == IMAGE_STAGE


def set_operating_point(
    version: ModelVersion, *, target_sensitivity: float | None = None, user=None
) -> ModelVersion:
    """Choose the operating point again from the stored validation predictions: Youden's J
    (``target_sensitivity`` None) or the highest threshold reaching the target sensitivity."""
    from django.db import transaction

    from audit.log import record

    from .records import ModelVersion

    if not is_image_version(version):
        raise NodeImageError(f"model {version.name} is not a node-image classifier")
    if target_sensitivity is not None and not 0 < target_sensitivity <= 1:
        raise NodeImageError(f"target sensitivity must be in (0, 1], not {target_sensitivity}")
    with transaction.atomic():
        current = ModelVersion.objects.select_for_update().get(pk=version.pk)
        stored = (current.threshold_metrics or {}).get("validation") or {}
        if not stored.get("scores"):
            raise NodeImageError(f"model {current.name} has no stored validation predictions")
        metrics = evidence_from_scores(
            truths=np.asarray(stored["truths"], dtype=bool),
            scores=np.asarray(stored["scores"], dtype=np.float64),
            groups=None if stored.get("groups") is None else np.asarray(stored["groups"]),
            slide_ids=stored.get("slides"),
            target_sensitivity=target_sensitivity,
            seed=int((current.threshold_metrics or {}).get("seed", 0)),
        )
        ModelVersion.objects.filter(pk=version.pk).update(
            threshold=metrics["threshold"],
            threshold_method=metrics["method"][:80],
            threshold_metrics=metrics,
        )
        record(
            actor=user,
            action="operating point chosen",
            obj=current,
            threshold=metrics["threshold"],
            method=metrics["method"],
            previous=current.threshold,
        )
    version.refresh_from_db()
    return version


def _interval(values: Any) -> list[float] | None:
    if isinstance(values, list | tuple) and len(values) == 2 and None not in values:
        return [float(values[0]), float(values[1])]
    return None


def evidence_summary(version: ModelVersion) -> dict[str, Any] | None:
    """The model page's figures of a node-image classifier (no per-image predictions), or None
    for other models and for versions without evidence."""
    metrics = version.threshold_metrics or {}
    if not is_image_version(version) or "auroc" not in metrics:
        return None
    auroc = metrics["auroc"]
    rows = []
    for name in ("sensitivity", "specificity", "accuracy"):
        rows.append(
            {
                "name": name,
                "value": metrics.get(name),
                "ci": _interval((metrics.get("ci") or {}).get(name)),
                "exact_ci": _interval((metrics.get("exact_ci") or {}).get(name)),
            }
        )
    summary = version.dataset_summary or {}
    return {
        "id": version.pk,
        "name": version.name,
        "architecture": version.architecture,
        "modality": summary.get("modality"),
        "dataset_hash": version.dataset_hash,
        "auroc": {
            "value": auroc.get("auc"),
            "ci": _interval(auroc.get("ci")),
            "method": auroc.get("method"),
            "delong_ci": _interval(auroc.get("delong_ci")),
            "n_bootstrap": auroc.get("n_bootstrap"),
            "n_groups": auroc.get("n_groups"),
        },
        "threshold": version.threshold,
        "method": metrics.get("method"),
        "target_sensitivity": metrics.get("target_sensitivity"),
        "counts": {k: metrics.get(k) for k in ("tp", "fn", "tn", "fp")},
        "n_positive": metrics.get("n_positive"),
        "n_negative": metrics.get("n_negative"),
        "metrics": rows,
        "sensitivity": rows[0],
        "specificity": rows[1],
        "accuracy": rows[2],
        "confidence": metrics.get("confidence", 0.95),
        "val_images": summary.get("val"),
        "val_patients": summary.get("val_patients"),
        "split": summary.get("split"),
        "training_seconds": version.training_seconds,
        "is_live": version.is_live,
    }


def _validation_scores(version: ModelVersion) -> dict[int, tuple[bool, float]]:
    stored = (version.threshold_metrics or {}).get("validation") or {}
    slides, truths, scores = stored.get("slides"), stored.get("truths"), stored.get("scores")
    if not slides or not truths or not scores:
        return {}
    return {int(s): (bool(t), float(v)) for s, t, v in zip(slides, truths, scores, strict=True)}


def compare_versions(*, dataset_hash: str) -> list[dict[str, Any]]:
    """Every node-image ModelVersion trained on the dataset with ``dataset_hash`` (same images,
    same split), best AUROC first, with AUROC [CI] and the operating-point figures; every model
    after the first also carries ``vs_best``: DeLong's paired test of its AUROC against the
    best one's on their common validation images (None where it cannot be computed)."""
    from .records import ModelVersion
    from .thresholds import _json_ready

    versions = {
        v.pk: v for v in ModelVersion.objects.filter(stage=IMAGE_STAGE, dataset_hash=dataset_hash)
    }
    rows = [row for v in versions.values() if (row := evidence_summary(v)) is not None]
    rows.sort(key=lambda r: (-(r["auroc"]["value"] or 0.0), r["id"]))
    if not rows:
        return rows
    best = _validation_scores(versions[rows[0]["id"]])
    rows[0]["vs_best"] = None
    for row in rows[1:]:
        row["vs_best"] = None
        other = _validation_scores(versions[row["id"]])
        common = sorted(set(best) & set(other))
        if not common or any(best[k][0] != other[k][0] for k in common):
            continue
        try:
            test = delong_paired(
                [best[k][0] for k in common],
                [other[k][1] for k in common],
                [best[k][1] for k in common],
            )
        except NodeImageError:
            continue
        row["vs_best"] = _json_ready({**test, "against": rows[0]["id"], "images": len(common)})
    return rows


# ---- prediction (reader studies) ---------------------------------------------------------------

_MODELS: OrderedDict[tuple[int, str], tuple[torch.nn.Module, dict[str, Any]]] = OrderedDict()
_MODELS_LOCK = threading.Lock()
_MODELS_KEPT = 2


class Preprocessing(NamedTuple):
    """How a node-image model sees an image: side in px, normalisation, the metastatic output."""

    size: int
    mean: tuple
    std: tuple
    positive: int


def loaded_classifier(version: ModelVersion) -> tuple[torch.nn.Module, Preprocessing]:
    """A node-image ModelVersion's model in eval mode (cached per process) and the preprocessing
    it was trained with; what :func:`predict_images` and the class activation maps run."""
    model, meta = _loaded_model(version)
    size, mean, std = _version_preprocessing(version)
    positive = _positive_index(meta.get("classes") or version.classes)
    return model, Preprocessing(size=size, mean=mean, std=std, positive=positive)


def _loaded_model(version: ModelVersion) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The version's model in eval mode, from a small per-process cache keyed by its weights."""
    from .training import load_trained_model

    key = (version.pk, version.weights_sha256)
    with _MODELS_LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return _MODELS[key]
    model, meta = load_trained_model(version.weights_path)
    with _MODELS_LOCK:
        _MODELS[key] = (model, meta)
        while len(_MODELS) > _MODELS_KEPT:
            _MODELS.popitem(last=False)
    return model, meta


def predict_images(
    version: ModelVersion, slides: Iterable[Slide], *, batch_size: int = 32
) -> dict[int, float]:
    """Probability of metastatic per slide id, for node images (``slides``) scored by the
    node-image classifier ``version``: each image rendered as in training (8-bit, its own
    window), resized to the training size, ImageNet-normalised, batched, in eval mode."""
    from slides.node_images import render_node_image

    if not is_image_version(version):
        raise NodeImageError(f"model {version.name} is not a node-image classifier")
    slides = list(slides)
    if not slides:
        return {}
    not_images = [s.pk for s in slides if not getattr(s, "is_node_image", False)]
    if not_images:
        raise NodeImageError(f"slides {not_images[:10]} are whole slides, not node images")
    trained_on = (version.dataset_summary or {}).get("modality")
    other = [s.pk for s in slides if trained_on and s.modality != trained_on]
    if other:
        raise NodeImageError(
            f"model {version.name} was trained on {trained_on} images; images {other[:10]} "
            "are of another modality"
        )
    model, (size, mean, std, positive) = loaded_classifier(version)
    out: dict[int, float] = {}
    for start in range(0, len(slides), batch_size):
        chunk = slides[start : start + batch_size]
        arrays = [to_model_input(render_node_image(s), size) for s in chunk]
        images = torch.from_numpy(_stack(arrays))
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        scores = score_images(model, images, mean=mean, std=std, positive=positive)
        out.update({s.pk: float(p) for s, p in zip(chunk, scores, strict=True)})
    return out
