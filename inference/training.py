"""Training of a patch classifier with the seed-002 recipe: the pure PyTorch core.

``train()`` knows nothing of Django or Celery: the TrainingRun task wraps it, writing ``progress``
events to the database, answering ``should_cancel`` from the run's cancel flag, and pointing
``checkpoint_dir`` at the run's folder so a killed worker resumes where it stopped.

Reproducibility: the model is initialised from ``recipe.seed``; every epoch then reseeds torch's
global generator (dropout) and draws its batch order and augmentations from its own generator
seeded by (seed, epoch). An epoch therefore does the same thing whether or not the run was
resumed before it, and on CPU two runs with one seed give bit-identical weights. CUDA with mixed
precision is fast rather than bit-exact.

Files in ``checkpoint_dir`` (all written to a temporary file and renamed into place):
``checkpoint.pt`` after every epoch (model, optimizer, scheduler, scaler, RNG states, epoch, early
stopping state with the best weights, history) and ``model.pt`` at the end (best weights and what
is needed to rebuild the model: see :func:`load_trained_model`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augmentation import IMAGENET_MEAN, IMAGENET_STD, Augmenter, normalize, to_float
from .metrics import RocCurve, accuracy, roc_auc, roc_curve
from .models import build_model, canonical_name, load_torchvision_state_dict

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointMismatch",
    "EpochRecord",
    "TrainingCancelled",
    "TrainingProgress",
    "TrainingRecipe",
    "TrainingResult",
    "atomic_torch_save",
    "load_trained_model",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "model.pt"
CHECKPOINT_FORMAT = "nodescope-checkpoint/1"
WEIGHTS_FORMAT = "nodescope-weights/1"


class TrainingCancelled(Exception):  # noqa: N818 - the name says what happened
    """Raised between steps when ``should_cancel()`` answers True; the last epoch checkpoint
    (if any) stays in place, so ``train(..., resume=True)`` continues from it."""

    def __init__(self, *, epoch: int, step: int, checkpoint: Path | None) -> None:
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint
        where = f"; resume from {checkpoint}" if checkpoint else "; no checkpoint yet"
        super().__init__(f"training cancelled in epoch {epoch} before step {step}{where}")


class CheckpointMismatch(Exception):  # noqa: N818
    """The checkpoint in ``checkpoint_dir`` belongs to another model, recipe or dataset."""


@dataclass(frozen=True)
class TrainingRecipe:
    """Hyperparameters; the defaults are seed 002's (Tang et al. 2022), except where noted.

    Seed 002: Adam, learning rate 1e-3 divided by 10 every 10 epochs, mini-batch 128, at most 30
    epochs, L2 regularisation and early stopping (no values given: we use MATLAB's default L2 of
    1e-4, the tool the authors used, and a patience of 5 epochs on validation AUC), eightfold
    rotation/flip augmentation. Colour jitter strengths are ours (the paper asks for colour
    augmentation in its discussion). ImageNet mean/std normalisation, as for pretrained weights.
    """

    learning_rate: float = 1e-3
    lr_step_epochs: int = 10
    lr_gamma: float = 0.1
    batch_size: int = 128
    max_epochs: int = 30
    weight_decay: float = 1e-4
    decay_norm_and_bias: bool = False  # L2 on conv/linear weights only, not BN or biases
    early_stopping_patience: int = 5
    early_stopping_min_delta: float = 0.0
    dihedral: bool = True
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.04
    # HED stain jitter (Tellez et al. 2018), off by default: each stain scaled by 1 +- hed_jitter
    # and shifted by +- hed_bias optical density (inference.augmentation.hed_jitter)
    hed_jitter: float = 0.0
    hed_bias: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    seed: int = 0
    positive_class: int = 1
    eval_batch_size: int = 256
    num_workers: int = 0
    mixed_precision: bool = True  # CUDA only
    channels_last: bool = True  # CUDA only
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    pretrained_weights: str | None = None  # local file in torchvision naming
    # Precise batch norm: while fewer than ``precise_bn_until_steps`` optimiser steps have run,
    # batch-norm statistics are recomputed over up to ``precise_bn_batches`` training batches
    # before each validation. A momentum of 0.1 needs ~50 steps to forget its initial (0, 1)
    # statistics, so small datasets otherwise validate with statistics that fit no data at all
    # (every window called one class); long runs never pay for it.
    precise_bn_batches: int = 20
    precise_bn_until_steps: int = 200

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_epochs < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes and max_epochs must be positive")
        if self.early_stopping_patience < 1:
            raise ValueError("early_stopping_patience must be at least 1")

    def augmenter(self) -> Augmenter:
        return Augmenter(
            dihedral=self.dihedral,
            brightness=self.brightness,
            contrast=self.contrast,
            saturation=self.saturation,
            hue=self.hue,
            hed=self.hed_jitter,
            hed_bias=self.hed_bias,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["model_kwargs"] = _plain(dict(self.model_kwargs))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingRecipe:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown recipe fields: {sorted(unknown)}")
        kw = dict(data)
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


@dataclass(frozen=True)
class TrainingProgress:
    """One progress event: ``kind`` is "step" after every optimiser step and "epoch" after every
    validation. ``eta_s`` assumes all ``max_epochs`` run (early stopping can only shorten it)."""

    kind: Literal["step", "epoch"]
    epoch: int
    max_epochs: int
    step: int
    steps_per_epoch: int
    loss: float
    learning_rate: float
    elapsed_s: float
    eta_s: float | None
    val_auc: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    best_epoch: int | None = None

    @property
    def fraction_done(self) -> float:
        done = (self.epoch - 1) * self.steps_per_epoch + self.step
        return min(1.0, done / max(1, self.max_epochs * self.steps_per_epoch))


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_auc: float
    val_accuracy: float
    learning_rate: float
    seconds: float


@dataclass
class TrainingResult:
    """Best weights and the numbers a ModelVersion keeps."""

    model_name: str
    model_config: dict[str, Any]
    classes: list[str]
    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[EpochRecord]
    auc: float
    accuracy: float
    val_loss: float
    roc: RocCurve | None
    recipe: TrainingRecipe
    device: str
    seconds: float
    resumed_from_epoch: int | None = None
    weights_path: Path | None = None
    checkpoint_path: Path | None = None
    pretrained: dict[str, Any] | None = None

    @property
    def curves(self) -> dict[str, list[float]]:
        """Per-epoch train loss, val loss, val AUC and val accuracy."""
        return {
            "epoch": [r.epoch for r in self.history],
            "train_loss": [r.train_loss for r in self.history],
            "val_loss": [r.val_loss for r in self.history],
            "val_auc": [r.val_auc for r in self.history],
            "val_accuracy": [r.val_accuracy for r in self.history],
            "learning_rate": [r.learning_rate for r in self.history],
        }

    def metrics(self) -> dict[str, Any]:
        """JSON-ready summary (no weights)."""
        return _plain(
            {
                "model_name": self.model_name,
                "model_config": self.model_config,
                "classes": self.classes,
                "best_epoch": self.best_epoch,
                "epochs_run": self.epochs_run,
                "stopped_early": self.stopped_early,
                "auc": self.auc,
                "accuracy": self.accuracy,
                "val_loss": self.val_loss,
                "roc": self.roc.to_dict() if self.roc is not None else None,
                "curves": self.curves,
                "recipe": self.recipe.to_dict(),
                "device": self.device,
                "seconds": self.seconds,
                "resumed_from_epoch": self.resumed_from_epoch,
                "pretrained": self.pretrained,
            }
        )

    def build_model(self) -> nn.Module:
        """A fresh model in eval mode holding the best weights."""
        model = build_model(self.model_name, **self.model_config)
        model.load_state_dict(self.state_dict)
        return model.eval()


# -- helpers --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python, NaN/inf to None (JSON and ``weights_only``)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_torch_save(obj: Any, path: str | PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, fsync, then ``os.replace``: readers see
    the old file or the new one, never a partial write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _classes_of(train_set, val_set) -> list[str]:
    classes = getattr(train_set, "classes", None)
    if classes:
        return list(classes)
    labels = np.concatenate([np.asarray(train_set.labels), np.asarray(val_set.labels)])
    return [str(i) for i in range(int(labels.max()) + 1)]


def _param_groups(model: nn.Module, recipe: TrainingRecipe) -> list[dict[str, Any]]:
    if recipe.decay_norm_and_bias:
        return [{"params": list(model.parameters()), "weight_decay": recipe.weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            weight_of_conv_or_fc = pname == "weight" and isinstance(module, nn.Conv2d | nn.Linear)
            (decay if weight_of_conv_or_fc else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _batches(
    dataset, order: np.ndarray, batch_size: int, *, num_workers: int, pin_memory: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``dataset`` in ``order``: through ``get_batch`` when the dataset has it, else a
    DataLoader over the fixed order (deterministic for any number of workers)."""
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if hasattr(dataset, "get_batch"):
        for chunk in chunks:
            yield dataset.get_batch(chunk)
        return
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[c.tolist() for c in chunks],
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    for x, y in loader:
        yield x, torch.as_tensor(y, dtype=torch.int64)


def _prepare(
    x: torch.Tensor,
    *,
    device: torch.device,
    recipe: TrainingRecipe,
    augmenter: Augmenter | None,
    generator: torch.Generator | None,
    channels_last: bool,
) -> torch.Tensor:
    x = to_float(x.to(device, non_blocking=True))
    if augmenter is not None:
        x = augmenter(x, generator=generator)
    x = normalize(x, mean=recipe.mean, std=recipe.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@dataclass
class _Evaluation:
    loss: float
    auc: float
    accuracy: float
    scores: np.ndarray
    labels: np.ndarray


def recalibrate_batch_norm(
    model: torch.nn.Module,
    batches: Iterable,
    n_batches: int | None = None,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """Recompute every batch-norm layer's running statistics as the exact average over the first
    ``n_batches`` (all when None) of ``batches`` ((x, label) pairs; forward only, train mode,
    ``prepare(x)`` fed to the model); the momenta are restored afterwards. Returns the batches
    used. The model is left in train mode."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or (n_batches is not None and n_batches < 1):
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    used = 0
    try:
        with torch.no_grad():
            for x, _y in batches:
                model(prepare(x) if prepare is not None else x)
                used += 1
                if n_batches is not None and used >= n_batches:
                    break
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    return used


def _evaluate(
    model: nn.Module,
    dataset,
    *,
    recipe: TrainingRecipe,
    device: torch.device,
    amp: bool,
    channels_last: bool,
) -> _Evaluation:
    model.eval()
    order = np.arange(len(dataset))
    losses, probs, labels = [], [], []
    with torch.inference_mode():
        for x, y in _batches(
            dataset,
            order,
            recipe.eval_batch_size,
            num_workers=recipe.num_workers,
            pin_memory=device.type == "cuda",
        ):
            xb = _prepare(
                x,
                device=device,
                recipe=recipe,
                augmenter=None,
                generator=None,
                channels_last=channels_last,
            )
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                logits = model(xb)
            logits = logits.float()
            yb = y.to(device)
            losses.append(F.cross_entropy(logits, yb, reduction="sum").item())
            probs.append(torch.softmax(logits, dim=1).cpu().numpy())
            labels.append(y.numpy())
    p = np.concatenate(probs) if probs else np.zeros((0, 2), dtype=np.float32)
    y_all = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    scores = p[:, recipe.positive_class].astype(np.float64)
    positive = y_all == recipe.positive_class
    return _Evaluation(
        loss=float(sum(losses) / max(1, y_all.size)),
        auc=roc_auc(positive, scores) if y_all.size else float("nan"),
        accuracy=accuracy(y_all, p.argmax(axis=1)),
        scores=scores,
        labels=y_all,
    )


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _identity(
    model_name: str, model_config: Mapping, recipe: TrainingRecipe, n_train: int, n_val: int
) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed (not the worker count or eval batch)."""
    r = recipe.to_dict()
    for key in ("num_workers", "eval_batch_size"):
        r.pop(key)
    return _plain(
        {
            "model_name": model_name,
            "model_config": dict(model_config),
            "recipe": r,
            "n_train": n_train,
            "n_val": n_val,
        }
    )


# -- training ---------------------------------------------------------------------------------------


def _restores_cudnn_benchmark(fn):
    """``fn`` with cuDNN's autotuning flag set back to what it was, however ``fn`` ends."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = torch.backends.cudnn.benchmark
        try:
            return fn(*args, **kwargs)
        finally:
            torch.backends.cudnn.benchmark = previous

    return wrapper


@_restores_cudnn_benchmark
def train(
    *,
    model_name: str,
    train_set,
    val_set,
    recipe: TrainingRecipe | None = None,
    progress: Callable[[TrainingProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    checkpoint_dir: str | PathLike[str] | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
) -> TrainingResult:
    """Train ``model_name`` on ``train_set``, validate on ``val_set`` every epoch, keep the weights
    with the best validation AUC, stop early after ``recipe.early_stopping_patience`` epochs
    without improvement.

    Datasets yield (uint8 (3, H, W) tensor, int label) and carry ``labels`` (see
    :mod:`inference.datasets`). ``progress`` is called after every step and every epoch (throttle
    database writes in the callback). ``should_cancel`` is polled before every step; when it says
    yes, :class:`TrainingCancelled` is raised. With ``checkpoint_dir`` a checkpoint is written
    after every epoch and, when ``resume`` is true and one is there, training continues after its
    epoch (a checkpoint of another model, recipe or dataset raises :class:`CheckpointMismatch`);
    the best weights go to ``checkpoint_dir / "model.pt"`` at the end.

    On CUDA, cuDNN's autotuning (``cudnn.benchmark``) is on while training (fixed batch shapes)
    and set back afterwards. Left on in a worker, it would re-tune cuDNN for every new tile shape
    of later scoring tasks; the likely reason (not yet confirmed on a GPU) why seed 002's 16
    development nodes took 100 s to score on an H100 right after training in the same process.
    """
    recipe = recipe or TrainingRecipe()
    started = time.perf_counter()
    dev = _resolve_device(device)
    on_cuda = dev.type == "cuda"
    amp = on_cuda and recipe.mixed_precision
    channels_last = on_cuda and recipe.channels_last
    if on_cuda:
        torch.backends.cudnn.benchmark = True
    n_train, n_val = len(train_set), len(val_set)
    if n_train == 0 or n_val == 0:
        raise ValueError("training and validation sets must not be empty")

    model_name = canonical_name(model_name)
    classes = _classes_of(train_set, val_set)
    sample, _ = train_set[0]
    input_size = int(sample.shape[-1])
    model_config: dict[str, Any] = {
        "num_classes": len(classes),
        "input_size": input_size,
        **dict(recipe.model_kwargs),
    }
    torch.manual_seed(recipe.seed)
    model = build_model(model_name, **model_config)
    model_config = _plain(model.config)  # the full config, strides and all
    pretrained = None
    if recipe.pretrained_weights:
        pretrained = load_torchvision_state_dict(model, recipe.pretrained_weights).to_dict()
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(_param_groups(model, recipe), lr=recipe.learning_rate)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=recipe.lr_step_epochs, gamma=recipe.lr_gamma
    )
    scaler = torch.amp.GradScaler("cuda") if amp else None
    augmenter = recipe.augmenter()

    identity = _identity(model_name, model_config, recipe, n_train, n_val)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    ckpt_path = ckpt_dir / CHECKPOINT_NAME if ckpt_dir is not None else None

    history: list[EpochRecord] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch, bad_epochs = 0, 0
    best_monitor: tuple[float, float] = (-math.inf, -math.inf)
    best_eval: dict[str, Any] | None = None
    stopped_early = False
    start_epoch = 1
    resumed_from: int | None = None
    elapsed_before = 0.0

    if ckpt_path is not None and resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("identity") != identity:
            raise CheckpointMismatch(
                f"{ckpt_path} was written for another model, recipe or dataset; "
                "remove it or use another checkpoint_dir"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"], dev)
        history = [EpochRecord(**r) for r in ckpt["history"]]
        best = ckpt["best"]
        best_state, best_epoch = best["state_dict"], int(best["epoch"])
        best_monitor = (float(best["monitor"][0]), float(best["monitor"][1]))
        bad_epochs = int(best["bad_epochs"])
        best_eval = {k: best[k] for k in ("loss", "auc", "accuracy", "scores", "labels")}
        stopped_early = bool(ckpt["stopped_early"])
        start_epoch = int(ckpt["epoch"]) + 1
        resumed_from = int(ckpt["epoch"])
        elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        log.info("resuming %s from %s after epoch %d", model_name, ckpt_path, resumed_from)

    steps_per_epoch = max(1, n_train // recipe.batch_size)
    # drop the last partial batch (as MATLAB does); a set smaller than a batch is one batch
    used_per_epoch = (
        steps_per_epoch * recipe.batch_size if n_train >= recipe.batch_size else n_train
    )
    session_start = time.perf_counter()
    step_time, steps_done, val_time, vals_done = 0.0, 0, 0.0, 0

    def eta(epoch: int, step: int, *, validated: bool) -> float | None:
        """Seconds left if all max_epochs run, from this session's step and validation times."""
        if steps_done == 0:
            return None
        per_step = step_time / steps_done
        per_val = val_time / vals_done if vals_done else per_step * n_val / recipe.batch_size
        steps_left = (recipe.max_epochs - epoch) * steps_per_epoch + (steps_per_epoch - step)
        vals_left = recipe.max_epochs - epoch + (0 if validated else 1)
        return steps_left * per_step + vals_left * per_val

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - session_start

    epoch = start_epoch - 1
    for epoch in range(start_epoch, recipe.max_epochs + 1):
        if stopped_early:
            break
        epoch_start = time.perf_counter()
        generator = torch.Generator().manual_seed(_epoch_seed(recipe.seed, epoch))
        torch.manual_seed(_epoch_seed(recipe.seed, epoch) + 1)
        if on_cuda:
            torch.cuda.manual_seed(_epoch_seed(recipe.seed, epoch) + 1)
        order = torch.randperm(n_train, generator=generator).numpy()[:used_per_epoch]
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        loss_sum, seen = 0.0, 0
        batches = _batches(
            train_set, order, recipe.batch_size, num_workers=recipe.num_workers, pin_memory=on_cuda
        )
        for step in range(1, steps_per_epoch + 1):
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled(
                    epoch=epoch,
                    step=step,
                    checkpoint=ckpt_path if ckpt_path is not None and ckpt_path.exists() else None,
                )
            t0 = time.perf_counter()
            x, y = next(batches)
            xb = _prepare(
                x,
                device=dev,
                recipe=recipe,
                augmenter=augmenter,
                generator=generator,
                channels_last=channels_last,
            )
            yb = y.to(dev, non_blocking=True)
            with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=amp):
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            loss_value = float(loss.item())
            loss_sum += loss_value * yb.shape[0]
            seen += int(yb.shape[0])
            step_time += time.perf_counter() - t0
            steps_done += 1
            if progress is not None:
                progress(
                    TrainingProgress(
                        kind="step",
                        epoch=epoch,
                        max_epochs=recipe.max_epochs,
                        step=step,
                        steps_per_epoch=steps_per_epoch,
                        loss=loss_value,
                        learning_rate=lr,
                        elapsed_s=elapsed(),
                        eta_s=eta(epoch, step, validated=False),
                    )
                )
        batches.close()
        scheduler.step()
        if recipe.precise_bn_batches and steps_done <= recipe.precise_bn_until_steps:
            calibration = _batches(
                train_set, order, recipe.batch_size, num_workers=0, pin_memory=False
            )
            recalibrate_batch_norm(
                model,
                calibration,
                min(recipe.precise_bn_batches, steps_per_epoch),
                prepare=lambda x, g=generator: _prepare(
                    x,
                    device=dev,
                    recipe=recipe,
                    augmenter=augmenter,
                    generator=g,
                    channels_last=channels_last,
                ),
            )
            calibration.close()

        t0 = time.perf_counter()
        ev = _evaluate(
            model, val_set, recipe=recipe, device=dev, amp=amp, channels_last=channels_last
        )
        val_time += time.perf_counter() - t0
        vals_done += 1
        # monitor validation AUC, ties broken by lower validation loss; a validation set with
        # one class has no AUC: then the loss alone decides
        monitor = (ev.auc if math.isfinite(ev.auc) else -math.inf, -ev.loss)
        improved = (
            best_state is None
            or monitor[0] > best_monitor[0] + recipe.early_stopping_min_delta
            or (monitor[0] == best_monitor[0] and monitor[1] > best_monitor[1])
        )
        if improved:
            best_state, best_epoch, best_monitor, bad_epochs = _cpu_state(model), epoch, monitor, 0
            best_eval = {
                "loss": ev.loss,
                "auc": ev.auc,
                "accuracy": ev.accuracy,
                "scores": torch.from_numpy(ev.scores.copy()),
                "labels": torch.from_numpy(ev.labels.copy()),
            }
        else:
            bad_epochs += 1
        record = EpochRecord(
            epoch=epoch,
            train_loss=loss_sum / max(1, seen),
            val_loss=ev.loss,
            val_auc=ev.auc,
            val_accuracy=ev.accuracy,
            learning_rate=lr,
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(record)
        stopped_early = bad_epochs >= recipe.early_stopping_patience and epoch < recipe.max_epochs
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val AUC %.4f, val acc %.4f (%.1fs)",
            epoch,
            recipe.max_epochs,
            record.train_loss,
            ev.loss,
            ev.auc,
            ev.accuracy,
            record.seconds,
        )
        if ckpt_path is not None:
            atomic_torch_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "identity": identity,
                    "epoch": epoch,
                    "model": _cpu_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "rng": _rng_state(dev),
                    "best": {
                        "state_dict": best_state,
                        "epoch": best_epoch,
                        "monitor": list(best_monitor),
                        "bad_epochs": bad_epochs,
                        **(best_eval or {}),
                    },
                    "history": [asdict(r) for r in history],
                    "stopped_early": stopped_early,
                    "elapsed_s": elapsed(),
                },
                ckpt_path,
            )
        if progress is not None:
            progress(
                TrainingProgress(
                    kind="epoch",
                    epoch=epoch,
                    max_epochs=recipe.max_epochs,
                    step=steps_per_epoch,
                    steps_per_epoch=steps_per_epoch,
                    loss=record.train_loss,
                    learning_rate=lr,
                    elapsed_s=elapsed(),
                    eta_s=0.0 if stopped_early else eta(epoch, steps_per_epoch, validated=True),
                    val_auc=ev.auc,
                    val_loss=ev.loss,
                    val_accuracy=ev.accuracy,
                    best_epoch=best_epoch,
                )
            )
        if stopped_early:
            log.info("early stop after epoch %d: best validation at epoch %d", epoch, best_epoch)
            break

    assert best_state is not None and best_eval is not None
    labels = np.asarray(best_eval["labels"])
    scores = np.asarray(best_eval["scores"], dtype=np.float64)
    positive = labels == recipe.positive_class
    roc = None
    if positive.any() and not positive.all():
        roc = roc_curve(positive, scores, drop_intermediate=True)
    result = TrainingResult(
        model_name=model_name,
        model_config=model_config,
        classes=classes,
        state_dict=best_state,
        best_epoch=best_epoch,
        epochs_run=len(history),
        stopped_early=stopped_early,
        history=history,
        auc=float(best_eval["auc"]),
        accuracy=float(best_eval["accuracy"]),
        val_loss=float(best_eval["loss"]),
        roc=roc,
        recipe=recipe,
        device=str(dev),
        seconds=elapsed_before + time.perf_counter() - started,
        resumed_from_epoch=resumed_from,
        checkpoint_path=ckpt_path,
        pretrained=pretrained,
    )
    if ckpt_dir is not None:
        result.weights_path = atomic_torch_save(
            {
                "format": WEIGHTS_FORMAT,
                "model_name": model_name,
                "model_config": model_config,
                "classes": classes,
                "state_dict": best_state,
                "recipe": recipe.to_dict(),
                "metrics": {k: v for k, v in result.metrics().items() if k != "recipe"},
            },
            ckpt_dir / WEIGHTS_NAME,
        )
    return result


def load_trained_model(path: str | PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by :func:`train` (``model.pt``) in eval mode, with its metadata."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if data.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a NodeScope weights file")
    model = build_model(data["model_name"], **data["model_config"])
    model.load_state_dict(data["state_dict"])
    meta = {k: v for k, v in data.items() if k != "state_dict"}
    return model.eval(), meta
