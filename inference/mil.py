"""Attention-based multiple-instance learning of the node status from a case's cancer areas (seed 001).

Seed 001 (Xu et al. 2021, DL-CNB and DL-CNB+C): the patches inside the annotated cancer areas of
a breast core-needle biopsy are embedded by a feature extractor; a gated-attention MIL model
(:mod:`inference.models.mil`) pools them into one vector per case and predicts the axillary node
status, binary (N0 versus N+) or three-class (N0, N+(1-2), N+(>2)); DL-CNB+C also takes the case's
clinical variables.

This module:

* bags: for each case, the patches (default 40 px at 1.0 µm/px, as the patch grid of
  :mod:`annotations.labels`) holding any pixel of a live tumour-class annotation on any slide of the
  case, at most ``max_instances`` of them (a seeded subsample); their features from a feature
  extractor (a trained patch ModelVersion's backbone: ``forward_features`` + global average pool,
  or a seeded random-init backbone for tests), cached on disk as ``.npy`` per case under
  RESULTS_DIR/mil-bags/, keyed by the extractor, the grid and the case's slides and annotation
  versions (an edit to an outline gives a new bag, never a stale one);
* the clinical encoding: numbers standardised with the training cases' mean and standard
  deviation, categories one-hot, yes/no as 1/0, a missing value as the training mean (0 after
  standardising) or all zeros; the encoding is stored with the model so a prediction encodes alike;
* training (:func:`train_mil`): Adam, early stopping on validation AUC (three classes: the AUC of
  N+ versus N0, i.e. 1 - p(N0)), seeded, padded batches of bags, a checkpoint per epoch;
* metrics (:func:`mil_metrics`): AUC with a 95% bootstrap interval, accuracy, sensitivity and
  specificity (each with its interval, percentile bootstrap over cases), and for three
  classes the same one-versus-rest per class;
* prediction (:func:`predict_case`): the class, the probabilities and each patch's attention.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .models.mil import GatedAttentionMIL

log = logging.getLogger(__name__)

MIL_ARCHITECTURE = "gated-attention-mil"
MIL_DATASET_KIND = "mil-bags"
MIL_STAGE = "mil"  # ModelVersion.stage of MIL models: never the live patch classifier
BINARY_CLASSES = ("N0", "N+")
THREE_CLASSES = ("N0", "N+(1-2)", "N+(>2)")
TASKS = {"binary": BINARY_CLASSES, "three-class": THREE_CLASSES}
BAG_FORMAT = "nodescope-mil-bag/1"
WEIGHTS_FORMAT = "nodescope-mil-weights/1"


class MILError(ValueError):
    """A MIL request or bag that cannot be used; the message says why."""


# ---- bags ---------------------------------------------------------------------------------------


@dataclass
class Bag:
    """One case: K instance features, where each patch lies, its label and clinical vector."""

    case_id: int
    features: np.ndarray  # (K, D) float32
    boxes: np.ndarray  # (K, 4) int64: slide id, level-0 x0, y0, side
    label: int = -1
    clinical: np.ndarray | None = None  # (C,) float32, encoded
    group: str = ""  # patient: bags of one patient stay on one side of the split

    def __len__(self) -> int:
        return int(self.features.shape[0])


def collate(
    bags: Sequence[Bag], *, device: torch.device | str = "cpu", with_clinical: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Pad bags into (B, K_max, D) features, a (B, K_max) mask, (B, C) clinical, (B,) labels."""
    k_max = max(len(b) for b in bags)
    dim = bags[0].features.shape[1]
    x = np.zeros((len(bags), k_max, dim), dtype=np.float32)
    mask = np.zeros((len(bags), k_max), dtype=bool)
    for i, bag in enumerate(bags):
        x[i, : len(bag)] = bag.features
        mask[i, : len(bag)] = True
    clinical = None
    if with_clinical:
        clinical = torch.from_numpy(np.stack([b.clinical for b in bags]).astype(np.float32)).to(
            device
        )
    labels = torch.as_tensor([b.label for b in bags], dtype=torch.int64, device=device)
    return torch.from_numpy(x).to(device), torch.from_numpy(mask).to(device), clinical, labels


# ---- feature extractor ------------------------------------------------------------------------


class FeatureExtractor:
    """A patch classifier's backbone: uint8 (N, H, W, 3) patches -> (N, D) float32 features
    (``forward_features`` then a global average pool, ImageNet normalisation as in training)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        key: str,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        device: str | torch.device = "cpu",
        batch_size: int = 256,
    ) -> None:
        self.model = model.eval().to(device)
        self.key = key
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(self.device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, patches: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(patches), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(patches[i : i + self.batch_size]))
            x = chunk.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            x = (x - self.mean) / self.std
            feats = self.model.forward_features(x)
            out.append(F.adaptive_avg_pool2d(feats, 1).flatten(1).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    @property
    def dim(self) -> int:
        return int(self.model.fc.in_features)


def random_extractor(
    *, architecture: str = "resnet-small", patch_px: int = 40, seed: int = 0, **model_kwargs: Any
) -> FeatureExtractor:
    """A seeded random-init backbone (tests, benchmarks): deterministic features, no training."""
    from .models import build_model

    torch.manual_seed(seed)
    model = build_model(architecture, num_classes=2, input_size=patch_px, **model_kwargs)
    key = f"random-{model.name}-{patch_px}px-seed{seed}-" + _digest(model_kwargs)[:8]
    return FeatureExtractor(model, key=key)


def extractor_of_version(version, *, device: str | torch.device = "cpu") -> FeatureExtractor:
    """The backbone of a trained patch ModelVersion (its weights file, its normalisation)."""
    from .training import load_trained_model

    model, meta = load_trained_model(version.weights_path)
    recipe = meta.get("recipe") or {}
    return FeatureExtractor(
        model,
        key=f"version{version.pk}-{version.weights_sha256[:12]}",
        mean=recipe.get("mean", (0.485, 0.456, 0.406)),
        std=recipe.get("std", (0.229, 0.224, 0.225)),
        device=device,
    )


def extractor_from_spec(spec: Mapping[str, Any], *, patch_px: int) -> FeatureExtractor:
    """``{"model_version": id}`` or ``{"architecture": ..., "seed": ..., "model_kwargs": {...}}``."""
    if spec.get("model_version") is not None:
        from .records import ModelVersion

        try:
            version = ModelVersion.objects.get(pk=int(spec["model_version"]))
        except (ModelVersion.DoesNotExist, TypeError, ValueError) as exc:
            raise MILError(
                f"no model version {spec.get('model_version')!r} to extract features with"
            ) from exc
        if version.architecture == MIL_ARCHITECTURE:
            raise MILError("the feature extractor must be a patch classifier, not a MIL model")
        return extractor_of_version(version)
    return random_extractor(
        architecture=str(spec.get("architecture", "resnet-small")),
        patch_px=patch_px,
        seed=int(spec.get("seed", 0)),
        **dict(spec.get("model_kwargs") or {}),
    )


# ---- bags from cases (Django) ---------------------------------------------------------------------


@dataclass(frozen=True)
class BagGrid:
    """Which patches make a bag: the patch grid and the cap on instances."""

    patch_px: int = 40
    target_mpp: float = 1.0
    max_instances: int = 512
    seed: int = 0


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def case_tumour_patches(case, grid: BagGrid) -> tuple[list, np.ndarray, dict[str, Any]]:
    """(slides, boxes (K, 4): slide id, x0, y0, side, identity) of the patches holding any pixel
    of a live tumour-class annotation on the case's slides; at most ``grid.max_instances``."""
    from annotations.labels import coverage, patch_grid, shapes_of
    from annotations.models import Annotation, LabelClass
    from slides.models import Slide

    slides = list(
        Slide.objects.filter(node__case=case, modality=Slide.Modality.SLIDE).order_by("id")
    )
    boxes: list[np.ndarray] = []
    identity: dict[str, Any] = {"grid": asdict(grid), "slides": {}}
    for slide in slides:
        rows = list(
            Annotation.objects.filter(
                slide=slide, deleted_at__isnull=True, label_class__kind=LabelClass.Kind.TUMOUR
            ).values_list("id", "version", "geometry")
        )
        identity["slides"][str(slide.pk)] = [slide.checksum, [(a, v) for a, v, _ in rows]]
        if not rows:
            continue
        pg = patch_grid(slide, patch_px=grid.patch_px, target_mpp=grid.target_mpp)
        covered = coverage(shapes_of(g for _, _, g in rows), pg)
        r, c = np.nonzero(covered)
        found = np.stack(
            [np.full(r.size, slide.pk), pg.x0(c), pg.y0(r), np.full(r.size, pg.size)], axis=1
        ).astype(np.int64)
        boxes.append(found)
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4), dtype=np.int64)
    if len(all_boxes) > grid.max_instances:
        rng = np.random.default_rng(grid.seed + int(case.pk))
        keep = np.sort(rng.choice(len(all_boxes), grid.max_instances, replace=False))
        all_boxes = all_boxes[keep]
    return slides, all_boxes, identity


def read_patches(slides: list, boxes: np.ndarray, *, patch_px: int) -> np.ndarray:
    """uint8 (K, P, P, 3) pixels of the boxes, read in blocks (annotations.extraction)."""
    from annotations.extraction import extract_slide

    out = np.zeros((len(boxes), patch_px, patch_px, 3), dtype=np.uint8)
    by_id = {s.pk: s for s in slides}
    for slide_id in np.unique(boxes[:, 0]) if len(boxes) else []:
        idx = np.flatnonzero(boxes[:, 0] == slide_id)
        rows = np.zeros(idx.size, dtype=[("x0", np.int64), ("y0", np.int64)])
        rows["x0"], rows["y0"] = boxes[idx, 1], boxes[idx, 2]
        part = np.zeros((idx.size, patch_px, patch_px, 3), dtype=np.uint8)
        extract_slide(
            by_id[int(slide_id)],
            rows,
            part,
            patch_px=patch_px,
            size=int(boxes[idx[0], 3]),
            workers=1,
        )
        out[idx] = part
    return out


def bag_dir(extractor_key: str) -> Path:
    from django.conf import settings

    return Path(settings.RESULTS_DIR) / "mil-bags" / extractor_key


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` through :func:`config.files.write_atomically`."""
    from config.files import write_atomically

    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomically(path, buffer.getvalue())


def case_bag(case, extractor: FeatureExtractor, grid: BagGrid) -> Bag:
    """The case's bag of features, from the cache when its slides and outlines are unchanged."""
    slides, boxes, identity = case_tumour_patches(case, grid)
    folder = bag_dir(extractor.key)
    stem = f"case-{case.pk}-{_digest(identity)[:16]}"
    feat_path, box_path = folder / f"{stem}.features.npy", folder / f"{stem}.boxes.npy"
    if feat_path.is_file() and box_path.is_file():
        return Bag(case_id=case.pk, features=np.load(feat_path), boxes=np.load(box_path))
    if not len(boxes):
        raise MILError(
            f"case {case.accession_number} has no tumour annotation on its slides: "
            "outline the cancer areas first"
        )
    features = extractor(read_patches(slides, boxes, patch_px=grid.patch_px))
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_save(box_path, boxes)  # boxes first: features present means both are complete
    _atomic_save(feat_path, features)
    return Bag(case_id=case.pk, features=features, boxes=boxes)


# ---- clinical encoding ------------------------------------------------------------------------------


def clinical_encoding(
    field_rows: Sequence[Any], training_values: Sequence[Mapping[str, Any]]
) -> list[dict]:
    """How each clinical field becomes numbers, fitted on the training cases' values."""
    spec = []
    for f in field_rows:
        entry: dict[str, Any] = {"key": f.key, "kind": f.kind}
        if f.kind == "numeric":
            present = np.array(
                [float(v[f.key]) for v in training_values if v.get(f.key) is not None],
                dtype=np.float64,
            )
            mean = float(present.mean()) if present.size else 0.0
            std = float(present.std()) if present.size > 1 else 1.0
            entry.update(mean=mean, std=std if std > 1e-9 else 1.0)
        elif f.kind == "categorical":
            entry["values"] = [str(v) for v in f.allowed_values or []]
        spec.append(entry)
    return spec


def encode_clinical(values: Mapping[str, Any], encoding: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """One case's clinical values as the vector the model was trained on."""
    out: list[float] = []
    for entry in encoding:
        value = values.get(entry["key"])
        if entry["kind"] == "numeric":
            out.append(0.0 if value is None else (float(value) - entry["mean"]) / entry["std"])
        elif entry["kind"] == "categorical":
            out.extend(1.0 if value == v else 0.0 for v in entry["values"])
        else:
            out.append(0.5 if value is None else float(bool(value)))
    return np.asarray(out, dtype=np.float32)


def encoded_size(encoding: Sequence[Mapping[str, Any]]) -> int:
    return int(encode_clinical({}, encoding).size)


# ---- training -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MILRecipe:
    """Hyperparameters of MIL training. Seed 001 trains AMIL with Adam; ours: Adam 5e-4 with L2
    1e-4, bags in padded batches of 8, at most 60 epochs, early stopping after 10 epochs without
    a better validation AUC, seeded."""

    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    batch_size: int = 8
    max_epochs: int = 60
    early_stopping_patience: int = 10
    hidden: int = 128
    attention_hidden: int = 64
    clinical_hidden: int = 16
    dropout: float = 0.25
    seed: int = 0
    n_bootstrap: int = 1000

    def __post_init__(self) -> None:
        bounds = {
            "learning_rate": (1e-7, 1.0),
            "weight_decay": (0.0, 0.1),
            "batch_size": (1, 1024),
            "max_epochs": (1, 1000),
            "early_stopping_patience": (1, 1000),
            "hidden": (1, 4096),
            "attention_hidden": (1, 4096),
            "clinical_hidden": (1, 4096),
            "dropout": (0.0, 0.9),
            "n_bootstrap": (0, 100_000),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name}={value} is outside the sensible range [{low}, {high}]")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MILRecipe:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown MIL recipe fields: {sorted(unknown)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MILResult:
    """Best weights and validation evidence of a MIL training."""

    config: dict[str, Any]
    classes: list[str]
    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    val_labels: np.ndarray
    val_probabilities: np.ndarray
    recipe: MILRecipe
    seconds: float
    device: str
    resumed_from_epoch: int | None = None
    weights_path: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def curves(self) -> dict[str, list[float]]:
        keys = ("epoch", "train_loss", "val_loss", "val_auc", "val_accuracy")
        return {k: [h[k] for h in self.history] for k in keys}

    def build_model(self) -> GatedAttentionMIL:
        model = GatedAttentionMIL(**self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()


def positive_score(probabilities: np.ndarray) -> np.ndarray:
    """P(N+) from binary or three-class probabilities: 1 - P(N0)."""
    return 1.0 - np.asarray(probabilities, dtype=np.float64)[:, 0]


def _auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    from .metrics import roc_auc

    positive = np.asarray(labels) > 0
    if positive.all() or not positive.any():
        return float("nan")
    return roc_auc(positive, positive_score(probabilities))


def predict_bags(
    model: GatedAttentionMIL,
    bags: Sequence[Bag],
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Probabilities (N, C) and attention weights (one array per bag) in eval mode."""
    model.eval()
    probs, weights = [], []
    with torch.inference_mode():
        for i in range(0, len(bags), batch_size):
            chunk = bags[i : i + batch_size]
            x, mask, clinical, _ = collate(chunk, device=device, with_clinical=model.uses_clinical)
            logits, att = model(x, mask, clinical)
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            att = att.cpu().numpy()
            weights.extend(att[j, : len(b)] for j, b in enumerate(chunk))
    return np.concatenate(probs), weights


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train_mil(
    *,
    train_bags: Sequence[Bag],
    val_bags: Sequence[Bag],
    classes: Sequence[str],
    recipe: MILRecipe | None = None,
    use_clinical: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
) -> MILResult:
    """Train a gated-attention MIL model; keep the weights of the best validation AUC.

    ``progress`` gets a dict after every epoch; ``should_cancel`` is polled before every batch
    (:class:`inference.training.TrainingCancelled` is raised). With ``checkpoint_dir`` a checkpoint
    is written after every epoch and a later call with the same bags and recipe resumes after it.
    """
    from .training import TrainingCancelled, atomic_torch_save

    recipe = recipe or MILRecipe()
    started = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not train_bags or not val_bags:
        raise MILError("training and validation need at least one bag each")
    if any(len(b) == 0 for b in (*train_bags, *val_bags)):
        raise MILError("every bag needs at least one instance")
    if use_clinical and any(b.clinical is None for b in (*train_bags, *val_bags)):
        raise MILError("use_clinical needs a clinical vector on every bag")
    config = {
        "in_features": int(train_bags[0].features.shape[1]),
        "num_classes": len(classes),
        "hidden": recipe.hidden,
        "attention_hidden": recipe.attention_hidden,
        "clinical_features": int(train_bags[0].clinical.size) if use_clinical else 0,
        "clinical_hidden": recipe.clinical_hidden,
        "dropout": recipe.dropout,
    }
    torch.manual_seed(recipe.seed)
    model = GatedAttentionMIL(**config).to(dev)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    identity = _digest(
        {
            "config": config,
            "recipe": recipe.to_dict(),
            "classes": list(classes),
            "train": [(b.case_id, len(b), b.label) for b in train_bags],
            "val": [(b.case_id, len(b), b.label) for b in val_bags],
        }
    )
    ckpt = Path(checkpoint_dir) / "mil-checkpoint.pt" if checkpoint_dir is not None else None
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"auc": -math.inf, "loss": math.inf, "epoch": 0, "state": None}
    bad_epochs, start_epoch, resumed = 0, 1, None
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        if saved.get("identity") == identity:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            history, bad_epochs = list(saved["history"]), int(saved["bad_epochs"])
            best = dict(saved["best"])
            start_epoch = resumed = int(saved["epoch"]) + 1
            resumed -= 1
    n = len(train_bags)
    for epoch in range(start_epoch, recipe.max_epochs + 1):
        generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + epoch)
        torch.manual_seed(recipe.seed * 7_919 + epoch)
        order = torch.randperm(n, generator=generator).numpy()
        model.train()
        loss_sum = 0.0
        for start in range(0, n, recipe.batch_size):
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled(
                    epoch=epoch, step=start // recipe.batch_size + 1, checkpoint=ckpt
                )
            batch = [train_bags[i] for i in order[start : start + recipe.batch_size]]
            x, mask, clinical, y = collate(batch, device=dev, with_clinical=use_clinical)
            logits, _ = model(x, mask, clinical)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.item()) * len(batch)
        probs, _ = predict_bags(model, val_bags, device=dev)
        val_labels = np.asarray([b.label for b in val_bags])
        val_loss = float(
            F.nll_loss(
                torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(val_labels)
            )
        )
        auc = _auc(val_labels, probs)
        acc = float(np.mean(probs.argmax(1) == val_labels))
        monitor = auc if math.isfinite(auc) else -math.inf
        if (
            best["state"] is None
            or monitor > best["auc"]
            or (monitor == best["auc"] and val_loss < best["loss"])
        ):
            best = {"auc": monitor, "loss": val_loss, "epoch": epoch, "state": _state(model)}
            bad_epochs = 0
        else:
            bad_epochs += 1
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / n,
                "val_loss": val_loss,
                "val_auc": auc,
                "val_accuracy": acc,
            }
        )
        stop = bad_epochs >= recipe.early_stopping_patience
        if ckpt is not None:
            atomic_torch_save(
                {
                    "identity": identity,
                    "epoch": epoch,
                    "model": _state(model),
                    "optimizer": optimizer.state_dict(),
                    "history": history,
                    "bad_epochs": bad_epochs,
                    "best": best,
                },
                ckpt,
            )
        if progress is not None:
            progress(
                {
                    "epoch": epoch,
                    "max_epochs": recipe.max_epochs,
                    "loss": round(loss_sum / n, 5),
                    "val_auc": None if not math.isfinite(auc) else auc,
                    "val_accuracy": acc,
                    "best_epoch": best["epoch"],
                    "fraction": round(epoch / recipe.max_epochs, 4),
                    "elapsed_s": round(time.perf_counter() - started, 1),
                }
            )
        if stop:
            break
    model.load_state_dict(best["state"])
    probs, _ = predict_bags(model, val_bags, device=dev)
    result = MILResult(
        config=config,
        classes=list(classes),
        state_dict=best["state"],
        best_epoch=int(best["epoch"]),
        epochs_run=len(history),
        history=history,
        val_labels=np.asarray([b.label for b in val_bags]),
        val_probabilities=probs,
        recipe=recipe,
        seconds=time.perf_counter() - started,
        device=str(dev),
        resumed_from_epoch=resumed,
    )
    result.metrics = mil_metrics(
        result.val_labels, probs, result.classes, n_boot=recipe.n_bootstrap, seed=recipe.seed
    )
    if checkpoint_dir is not None:
        result.weights_path = atomic_torch_save(
            {
                "format": WEIGHTS_FORMAT,
                "config": config,
                "classes": list(classes),
                "state_dict": best["state"],
                "recipe": recipe.to_dict(),
            },
            Path(checkpoint_dir) / "mil-model.pt",
        )
    return result


def load_mil_model(path: str | os.PathLike[str]) -> tuple[GatedAttentionMIL, dict[str, Any]]:
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if data.get("format") != WEIGHTS_FORMAT:
        raise MILError(f"{path} is not a NodeScope MIL weights file")
    model = GatedAttentionMIL(**data["config"])
    model.load_state_dict(data["state_dict"])
    return model.eval(), {k: v for k, v in data.items() if k != "state_dict"}


# ---- metrics ----------------------------------------------------------------------------------------


def _estimates(
    y: np.ndarray, s: np.ndarray, threshold: float, *, n_boot: int, seed: int
) -> dict[str, Any]:
    """AUC (Mann-Whitney, ties one half), accuracy, sensitivity and specificity at ``threshold``
    (positive at or above it), each with a seeded percentile-bootstrap 95% interval over cases
    (resamples lacking a class are skipped for the metrics that need it), as review.metrics does."""
    from .metrics import auc_by_ranks

    y = np.asarray(y, dtype=bool)
    s = np.asarray(s, dtype=np.float64)
    called = s >= threshold

    def point(idx: np.ndarray) -> dict[str, float | None]:
        yt, ct = y[idx], called[idx]
        pos, neg = int(yt.sum()), int((~yt).sum())
        return {
            "auc": auc_by_ranks(yt, s[idx]) if pos and neg else None,
            "accuracy": float(np.mean(yt == ct)) if idx.size else None,
            "sensitivity": float(np.sum(ct & yt) / pos) if pos else None,
            "specificity": float(np.sum(~ct & ~yt) / neg) if neg else None,
        }

    values = point(np.arange(y.size))
    samples: dict[str, list[float]] = {k: [] for k in values}
    rng = np.random.default_rng(seed)
    for _ in range(n_boot if y.size else 0):
        for key, value in point(rng.integers(0, y.size, y.size)).items():
            if value is not None:
                samples[key].append(value)
    result: dict[str, Any] = {"n": int(y.size), "positives": int(y.sum()), "threshold": threshold}
    for key, value in values.items():
        if value is None:
            continue
        ci = (
            [float(v) for v in np.percentile(samples[key], [2.5, 97.5])]
            if samples[key]
            else [None, None]
        )
        result[key] = {"value": value, "ci95": ci}
    result["confusion"] = {
        "tp": int(np.sum(called & y)),
        "fp": int(np.sum(called & ~y)),
        "tn": int(np.sum(~called & ~y)),
        "fn": int(np.sum(~called & y)),
    }
    return result


def mil_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Validation metrics of a MIL model, JSON-ready.

    ``N+ vs N0``: scores 1 - P(N0), a case called N+ when P(N0) < 0.5 (for two classes the
    argmax). Three classes add the overall accuracy of the argmax and, per class, one-vs-rest AUC
    (score P(class)) and sensitivity/specificity of the argmax call.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probabilities, dtype=np.float64)
    out: dict[str, Any] = {
        "classes": list(classes),
        "n": int(labels.size),
        "counts": {c: int((labels == i).sum()) for i, c in enumerate(classes)},
        "n_plus_vs_n0": _estimates(
            labels > 0, positive_score(probs), 0.5, n_boot=n_boot, seed=seed
        ),
        "accuracy": float(np.mean(probs.argmax(1) == labels)) if labels.size else None,
    }
    if len(classes) > 2:
        called = probs.argmax(1)
        per_class = {}
        for i, name in enumerate(classes):
            truth = labels == i
            if truth.all() or not truth.any():
                per_class[name] = {"n": int(labels.size), "positives": int(truth.sum())}
                continue
            est = _estimates(truth, probs[:, i], 0.5, n_boot=n_boot, seed=seed + i + 1)
            tp = int(np.sum((called == i) & truth))
            fn = int(np.sum((called != i) & truth))
            tn = int(np.sum((called != i) & ~truth))
            fp = int(np.sum((called == i) & ~truth))
            est["argmax"] = {
                "sensitivity": tp / (tp + fn) if tp + fn else None,
                "specificity": tn / (tn + fp) if tn + fp else None,
                "tp": tp,
                "fn": fn,
                "tn": tn,
                "fp": fp,
            }
            per_class[name] = est
        out["per_class"] = per_class
    return out


# ---- prediction ----------------------------------------------------------------------------------


def predict_case(
    case, version, *, clinical_values: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A case's predicted node status from a MIL ModelVersion: the class, the probabilities, and
    each patch's attention weight (slide, level-0 box)."""
    hyper = version.hyperparameters or {}
    model, meta = load_mil_model(version.weights_path)
    grid = BagGrid(**hyper["bag_grid"])
    extractor = extractor_from_spec(hyper["extractor"], patch_px=grid.patch_px)
    bag = case_bag(case, extractor, grid)
    encoding = hyper.get("clinical_encoding") or []
    if model.uses_clinical:
        if clinical_values is None:
            raise MILError("this model uses clinical data and the case has none entered")
        bag.clinical = encode_clinical(clinical_values, encoding)
    probs, weights = predict_bags(model, [bag])
    classes = list(meta["classes"])
    p = probs[0]
    order = np.argsort(-weights[0], kind="stable")
    return {
        "model_version": {"id": version.pk, "name": version.name},
        "classes": classes,
        "predicted_class": classes[int(p.argmax())],
        "probabilities": {c: float(v) for c, v in zip(classes, p, strict=True)},
        "probability_n_plus": float(1.0 - p[0]),
        "uses_clinical": model.uses_clinical,
        "instances": len(bag),
        "attention": [
            {
                "slide": int(bag.boxes[i, 0]),
                "x": int(bag.boxes[i, 1]),
                "y": int(bag.boxes[i, 2]),
                "size": int(bag.boxes[i, 3]),
                "weight": float(weights[0][i]),
            }
            for i in order
        ],
    }
