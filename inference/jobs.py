"""Training jobs: launch a run, execute it on a worker, promote the resulting model.

`execute_training_run` is what the Celery task calls. It claims the run, trains with
`inference.training.train` (checkpoint every epoch under RESULTS_DIR/training/run-<id>/, resumed
after a killed worker), writes progress and a heartbeat as it goes, and on success creates the
ModelVersion with its weights copied atomically to RESULTS_DIR/models/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.log import record
from config.queueing import QueueUnavailable, check_queue_reachable, send

from .records import ModelVersion, Stage, TrainingRun
from .safe_json import auc_missing_reason, finite_or_none, json_safe, with_reasons
from .scope import (
    ARRAYS_REFUSAL,
    FILE_REFUSAL,
    FOLDER_REFUSAL,
    UNRESTRICTED,
    ScopeError,
    TrainingScope,
)
from .training import TrainingCancelled, TrainingProgress, TrainingRecipe, train

ARCHITECTURES = ("mobilenetv2", "resnet18", "resnet50", "inception-v3")
PROGRESS_EVERY_S = 1.0
CANCEL_POLL_EVERY_S = 2.0


class TrainingRequestError(ValueError):
    """A launch request that cannot run (unknown architecture, bad dataset, bad recipe).
    ``field`` names the request field at fault (``dataset_source``, ``architecture``, ``stage``,
    ``recipe`` or ``recipe.<name>``) so that a form can show the message beside it."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class LoadedDataset:
    train: Any
    val: Any
    content_hash: str
    summary: dict[str, Any]


# ---- datasets ----------------------------------------------------------------------------------


def _hash_files(paths: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _array_refusal(name: str, why: str) -> TrainingRequestError:
    return TrainingRequestError(
        f"{name} is not a patch array: {why} (an arrays dataset is an .npz of images (N, H, W, 3)"
        " uint8 and labels (N,) integers, or a folder of images.npy and labels.npy)"
    )


def _checked_array(value, name: str, *, kind: str):
    """`value` (from np.load) as a plain numeric array, or the reason it is not one."""
    import numpy as np

    if not isinstance(value, np.ndarray):  # an .npz where one .npy is expected
        close = getattr(value, "close", None)
        if close is not None:
            close()
        raise _array_refusal(name, "it is an archive of arrays, not one array")
    allowed = "biufUS" if kind == "groups" else "biuf"  # group ids may be text (case numbers)
    if value.dtype.hasobject or value.dtype.kind not in allowed:
        raise _array_refusal(name, f"its values are {value.dtype}, not numbers")
    if kind == "images" and (value.ndim != 4 or value.shape[-1] != 3 or value.dtype != np.uint8):
        raise _array_refusal(
            name, f"images must be (N, H, W, 3) uint8, not {value.shape} {value.dtype}"
        )
    if kind in ("labels", "groups") and value.ndim != 1:
        raise _array_refusal(name, f"{kind} must be one value per image, not shape {value.shape}")
    if kind == "labels" and value.dtype.kind not in "biu":
        raise _array_refusal(name, f"labels must be integers, not {value.dtype}")
    return value


def _load_npy(file: Path, *, kind: str, mmap: bool = False):
    """One .npy of an arrays folder: never a pickle (allow_pickle=False), always an array."""
    import numpy as np

    try:
        value = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # a pickle, text, a truncated file...
        raise _array_refusal(file.name, f"NumPy cannot read it without unpickling ({exc})") from exc
    return _checked_array(value, file.name, kind=kind)


def read_patch_arrays(path: Path):
    """Patches from an .npz file (read into memory) or a folder of .npy files (memory-mapped).

    The folder holds images.npy (N, H, W, 3) uint8, labels.npy (N,), and optionally groups.npy and
    classes.txt (one class name a line). Nothing is ever unpickled: a file that is not a plain
    numeric array (a pickle, text, an object array, the wrong shape) is a `TrainingRequestError`
    saying which file and why.
    """
    import zipfile

    import numpy as np

    if path.is_dir():
        if not (path / "images.npy").is_file():
            raise TrainingRequestError(f"{path} has no images.npy")
        if not (path / "labels.npy").is_file():
            raise TrainingRequestError(f"{path} has no labels.npy")
        images = _load_npy(path / "images.npy", kind="images", mmap=True)
        labels = _load_npy(path / "labels.npy", kind="labels")
        groups_file = path / "groups.npy"
        groups = _load_npy(groups_file, kind="groups") if groups_file.is_file() else None
        classes_file = path / "classes.txt"
        classes = classes_file.read_text().split("\n") if classes_file.is_file() else None
        return images, labels, groups, [c for c in classes if c] if classes else None
    if not path.is_file():
        raise TrainingRequestError(f"patch array file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise _array_refusal(path.name, "it is not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("images", "labels") if k not in data.files]
            if missing:
                raise _array_refusal(path.name, f"it holds no {' or '.join(missing)} array")
            images = _checked_array(data["images"], f"{path.name}:images", kind="images")
            labels = _checked_array(data["labels"], f"{path.name}:labels", kind="labels")
            groups = (
                _checked_array(data["groups"], f"{path.name}:groups", kind="groups")
                if "groups" in data.files
                else None
            )
            classes = [str(c) for c in data["classes"]] if "classes" in data.files else None
    except TrainingRequestError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise _array_refusal(path.name, f"NumPy cannot read it without unpickling ({exc})") from exc
    return images, labels, groups, classes


def _hash_arrays(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()) if path.is_dir() else [path]:
        with open(file, "rb") as fh:
            while block := fh.read(8 * 1024 * 1024):
                digest.update(block)
    return digest.hexdigest()


def _image_folder(source: dict[str, Any], scope: TrainingScope, **kw):
    """The ImageFolderPatchDataset of an ``image-folder`` source, its folder and CSV confined to
    the scope (outside, missing or escaping: one refusal; no labelled images: said only of a
    folder under the roots)."""
    from .datasets import ImageFolderPatchDataset

    if scope.unrestricted:
        root = Path(str(source.get("path", "")))
        if not root.is_dir():
            raise TrainingRequestError(f"image folder {root} does not exist")
        csv_path = source.get("csv")
        csv = Path(csv_path) if csv_path else None
    else:
        root = scope.path(source.get("path"), refusal=FOLDER_REFUSAL, folder=True)
        csv_path = source.get("csv")
        csv = None
        if csv_path:
            raw = str(csv_path)
            raw = raw if Path(raw).is_absolute() else str(root / raw)
            csv = scope.path(raw, refusal=FILE_REFUSAL.format(what="csv"), folder=False)
    try:
        dataset = ImageFolderPatchDataset(
            root,
            csv_path=csv,
            classes=source.get("classes"),
            within=None if scope.unrestricted else scope.roots(),
            **kw,
        )
    except (ValueError, FileNotFoundError) as exc:
        if not scope.unrestricted and str(exc).startswith("no labelled images"):
            raise TrainingRequestError("no labelled images in that folder") from None
        raise TrainingRequestError(str(exc)) from exc
    return root, dataset


def _arrays_path(source: dict[str, Any], scope: TrainingScope) -> Path:
    """The path of an ``arrays`` source, confined to the scope (a folder's files too)."""
    if scope.unrestricted:
        return Path(str(source.get("path", "")))
    path = scope.path(source.get("path"), refusal=ARRAYS_REFUSAL, folder=None)
    if path.is_dir():
        scope.files_inside(path.iterdir(), refusal=ARRAYS_REFUSAL)
    return path


def _snapshot_id(source: dict[str, Any], scope: TrainingScope) -> int:
    """The id of a ``snapshot`` source whose slides are all of the scope's labs; another lab's
    snapshot is refused as a missing one is."""
    from annotations.models import Dataset

    try:
        pk = int(source.get("id", 0))
        snapshot = Dataset.objects.get(pk=pk)
    except (Dataset.DoesNotExist, TypeError, ValueError, OverflowError) as exc:
        raise TrainingRequestError(f"no dataset snapshot {source.get('id')!r}") from exc
    if not scope.snapshot_readable(snapshot):
        raise TrainingRequestError(f"no dataset snapshot {source.get('id')!r}")
    return pk


def load_dataset(source: dict[str, Any], *, scope: TrainingScope = UNRESTRICTED) -> LoadedDataset:
    """Open the dataset a run names and split it (by group when groups are known); ``scope``
    bounds what it may read (:mod:`inference.scope`)."""
    from .datasets import ArrayPatchDataset, split_indices

    kind = source.get("kind")
    seed = int(source.get("seed", 0))
    val_fraction = float(source.get("val_fraction", 0.3))
    if kind == "image-folder":
        root, dataset = _image_folder(source, scope, size=source.get("size"), cache=True)
        files = [root / f for f in getattr(dataset, "files", [])] or [
            p for p in root.rglob("*") if p.is_file()
        ]
        content_hash = _hash_files([Path(f) for f in files], root)
    elif kind == "arrays":
        path = _arrays_path(source, scope)
        images, labels, groups, classes = read_patch_arrays(path)
        dataset = ArrayPatchDataset(images, labels, groups=groups, classes=classes)
        content_hash = _hash_arrays(path)
        if path.is_dir() and (path / "val.npy").is_file():
            return _explicit_split(dataset, path, kind=kind, content_hash=content_hash)
    elif kind == "patch-folder":  # labelled patches in PCam's layout (inference.patch_folder)
        from .patch_folder import PatchFolderError, load_patch_folder

        try:
            return load_patch_folder(source, scope=scope)
        except PatchFolderError as exc:
            raise TrainingRequestError(str(exc)) from exc
    elif kind == "node-images":  # whole CT/ultrasound images of nodes (inference.image_classifier)
        from .image_classifier import NodeImageError, load_node_images

        try:
            return load_node_images(source, scope=scope)
        except NodeImageError as exc:
            raise TrainingRequestError(str(exc)) from exc
    elif kind == "snapshot":
        from annotations.datasets import DatasetError, open_snapshot

        try:
            train_set, val_set, content_hash, summary = open_snapshot(_snapshot_id(source, scope))
        except DatasetError as exc:
            raise TrainingRequestError(str(exc)) from exc
        return LoadedDataset(
            train=train_set, val=val_set, content_hash=content_hash, summary=summary
        )
    else:
        raise TrainingRequestError(
            f"unknown dataset kind {kind!r} "
            "(use image-folder, patch-folder, arrays, snapshot, hard-negatives or node-images)"
        )
    groups = getattr(dataset, "groups", None)
    split = split_indices(
        labels=dataset.labels, groups=groups, val_fraction=val_fraction, seed=seed
    )
    train_set, val_set = split.subsets(dataset)
    import numpy as np

    counts = {
        name: int((np.asarray(dataset.labels) == i).sum()) for i, name in enumerate(dataset.classes)
    }
    return LoadedDataset(
        train=train_set,
        val=val_set,
        content_hash=content_hash,
        summary={
            "kind": kind,
            "classes": list(dataset.classes),
            "counts": counts,
            "train": len(train_set),
            "val": len(val_set),
            "split": split.note,
        },
    )


def _explicit_split(dataset, path: Path, *, kind: str, content_hash: str) -> LoadedDataset:
    """An arrays folder that says its own split (``val.npy``, one bool per patch), as mined
    hard-negative folders do: training and validation are taken from it, not drawn again."""
    import numpy as np

    from .datasets import PatchSubset

    in_val = _load_npy(path / "val.npy", kind="val").astype(bool).reshape(-1)
    if in_val.size != len(dataset):
        raise TrainingRequestError(
            f"{path}/val.npy has {in_val.size} entries for {len(dataset)} patches"
        )
    train_set = PatchSubset(dataset, np.flatnonzero(~in_val))
    val_set = PatchSubset(dataset, np.flatnonzero(in_val))
    labels = np.asarray(dataset.labels)
    counts = {name: int((labels == i).sum()) for i, name in enumerate(dataset.classes)}
    summary = {
        "kind": kind,
        "classes": list(dataset.classes),
        "counts": counts,
        "train": len(train_set),
        "val": len(val_set),
        "split": f"given by {path.name}/val.npy",
    }
    mined = path / "summary.json"
    if mined.is_file():
        import json

        summary["mining"] = json.loads(mined.read_text())
        summary["grid"] = summary["mining"].get("grid")
        summary["split"] = summary["mining"].get("split", summary["split"])
    return LoadedDataset(train=train_set, val=val_set, content_hash=content_hash, summary=summary)


# ---- launching ---------------------------------------------------------------------------------

RECIPE_BOUNDS = {
    "learning_rate": (1e-7, 1.0),
    "batch_size": (1, 4096),
    "max_epochs": (1, 500),
    "weight_decay": (0.0, 0.1),
    "lr_step_epochs": (1, 500),
    "lr_gamma": (1e-4, 1.0),
    "early_stopping_patience": (1, 500),
    "hed_jitter": (0.0, 1.0),
    "hed_bias": (0.0, 1.0),
}


def _check_recipe_bounds(recipe: TrainingRecipe) -> None:
    for name, (low, high) in RECIPE_BOUNDS.items():
        value = getattr(recipe, name)
        if not low <= value <= high:
            raise TrainingRequestError(
                f"{name}={value} is outside the sensible range [{low}, {high}]",
                field=f"recipe.{name}",
            )


def check_dataset(source: dict[str, Any], *, scope: TrainingScope = UNRESTRICTED) -> dict[str, int]:
    """Refuse, before anything is queued, a dataset that is missing, empty or of one class, or
    outside what ``scope`` may read."""
    import numpy as np

    kind = source.get("kind")
    if kind == "hard-negatives":
        from .mining import MiningError, check_source

        try:
            checked = check_source(source, scope=scope)
        except MiningError as exc:
            raise TrainingRequestError(str(exc)) from exc
        tumour = check_dataset(checked["tumour_source"], scope=scope)
        if not tumour.get("tumour"):
            raise TrainingRequestError(
                "the primary's dataset has no class named tumour to balance the hard negatives with"
            )
        return {"negative slides": len(checked["slides"]), "tumour": tumour["tumour"]}
    if kind == "patch-folder":
        from .patch_folder import PatchFolderError, check_patch_folder

        try:
            counts = check_patch_folder(source, scope=scope)
        except PatchFolderError as exc:
            raise TrainingRequestError(str(exc)) from exc
    elif kind == "node-images":
        from .image_classifier import NodeImageError, check_node_images

        try:
            return check_node_images(source, scope=scope)
        except NodeImageError as exc:
            raise TrainingRequestError(str(exc)) from exc
    elif kind == "snapshot":
        from annotations.models import Dataset

        snapshot = Dataset.objects.get(pk=_snapshot_id(source, scope))
        if snapshot.status != Dataset.Status.READY:
            raise TrainingRequestError(
                f"dataset snapshot {snapshot.pk} is {snapshot.status}, not ready"
                + (f": {snapshot.status_reason}" if snapshot.status_reason else "")
            )
        split = snapshot.split or {}
        counts = dict((split.get("train") or {}).get("training_counts") or {}) or dict(
            snapshot.class_counts
        )
    elif kind in ("image-folder", "arrays"):
        if scope.unrestricted:
            path = Path(str(source.get("path", "")))
            if not path.exists():
                raise TrainingRequestError(f"dataset path {source.get('path')!r} does not exist")
        if kind == "arrays":
            _images, labels, _groups, names = read_patch_arrays(_arrays_path(source, scope))
            values, n = np.unique(labels, return_counts=True)
            counts = {
                (names[int(v)] if names else str(int(v))): int(c)
                for v, c in zip(values, n, strict=True)
            }
        else:
            _root, dataset = _image_folder(source, scope)
            labels = np.asarray(dataset.labels)
            counts = {name: int((labels == i).sum()) for i, name in enumerate(dataset.classes)}
    else:
        raise TrainingRequestError(
            f"unknown dataset kind {kind!r} "
            "(use image-folder, patch-folder, arrays, snapshot, hard-negatives or node-images)"
        )
    present = {k: v for k, v in counts.items() if v > 0}
    if not present:
        raise TrainingRequestError("the dataset is empty")
    if len(present) < 2:
        raise TrainingRequestError(
            f"the dataset has one class only ({next(iter(present))}); training needs two"
        )
    if min(present.values()) < 2:
        raise TrainingRequestError(f"each class needs at least two patches; counts are {present}")
    return counts


def launch_training(
    *,
    dataset_source: dict[str, Any],
    architecture: str = "mobilenetv2",
    stage: str = Stage.PRIMARY,
    recipe: dict[str, Any] | None = None,
    user=None,
    enqueue: bool = True,
) -> TrainingRun:
    """Check a request and queue a TrainingRun on the `gpu` queue (after the transaction commits).

    A run launched by ``user`` reads only that user's labs and the import roots, checked here and
    again on the worker (:mod:`inference.scope`); ``user`` None (server-side code such as
    manage.py) launches a run that reads what it names."""
    scope = TrainingScope.of_user(user)
    try:
        scope.check_launcher()
        scope.weights((recipe or {}).get("pretrained_weights"))
        if _is_mil(architecture, dataset_source):  # seed 001: attention MIL on case bags
            stage = _check_mil_request(dataset_source, architecture, recipe, scope)
        elif dataset_source.get("kind") == "node-images":  # seeds 003/004: whole-image classifiers
            stage, recipe = _check_image_request(dataset_source, architecture, recipe, scope)
        else:
            recipe = scannable_recipe(dataset_source, architecture, stage, recipe)
            _check_patch_request(dataset_source, architecture, stage, recipe, scope)
    except ScopeError as exc:
        raise TrainingRequestError(str(exc), field="dataset_source") from None
    if enqueue:
        check_queue_reachable()  # broker down: QueueUnavailable (503) before any row is written
    with transaction.atomic():
        run = TrainingRun.objects.create(
            created_by=user if user is not None and user.is_authenticated else None,
            server_side=scope.unrestricted,
            dataset_source=dataset_source,
            architecture=architecture,
            stage=stage,
            recipe=recipe or {},
        )
        record(
            actor=user, action="training launched", obj=run, architecture=architecture, stage=stage
        )
        if enqueue:
            transaction.on_commit(lambda: _queue_training_run(run))
    return run


def _is_mil(architecture: str, dataset_source: dict[str, Any]) -> bool:
    from .mil_jobs import is_mil_request

    return is_mil_request(architecture=architecture, dataset_source=dataset_source)


def _check_mil_request(dataset_source, architecture, recipe, scope=UNRESTRICTED) -> str:
    """MIL runs (inference.mil_jobs) have their own checks and the stage "mil"."""
    from .mil import MIL_STAGE, MILError
    from .mil_jobs import check_mil_request

    try:
        check_mil_request(
            dataset_source=dataset_source,
            architecture=architecture,
            recipe=recipe or {},
            scope=scope,
        )
    except MILError as exc:
        raise TrainingRequestError(str(exc)) from exc
    return MIL_STAGE


def _check_image_request(
    dataset_source, architecture, recipe, scope=UNRESTRICTED
) -> tuple[str, dict[str, Any]]:
    """Node-image runs (inference.image_classifier) have the stage "node-image" and the
    node-image recipe defaults under their own recipe."""
    from .image_classifier import NodeImageError, check_image_request

    try:
        stage, merged = check_image_request(
            dataset_source=dataset_source, architecture=architecture, recipe=recipe, scope=scope
        )
    except NodeImageError as exc:
        raise TrainingRequestError(str(exc)) from exc
    _check_recipe_bounds(TrainingRecipe.from_dict(merged))
    return stage, merged


def _check_patch_request(dataset_source, architecture, stage, recipe, scope=UNRESTRICTED) -> None:
    """The checks of a patch-classifier run."""
    if architecture not in ARCHITECTURES:
        raise TrainingRequestError(
            f"unknown architecture {architecture!r}; choose one of {list(ARCHITECTURES)}",
            field="architecture",
        )
    if stage not in Stage.values:
        raise TrainingRequestError(
            f"unknown stage {stage!r}; choose one of {Stage.values}", field="stage"
        )
    try:
        checked = TrainingRecipe.from_dict(recipe or {})
    except (TypeError, ValueError) as exc:
        raise TrainingRequestError(f"bad recipe: {exc}", field="recipe") from exc
    _check_recipe_bounds(checked)
    if dataset_source.get("kind") == "hard-negatives" and stage != Stage.SECONDARY:
        raise TrainingRequestError(
            "hard negatives train the secondary model: use stage secondary", field="stage"
        )
    try:
        check_dataset(dataset_source, scope=scope)
    except TrainingRequestError as exc:
        exc.field = exc.field or "dataset_source"
        raise


def scannable_recipe(
    dataset_source: dict[str, Any], architecture: str, stage: str, recipe: dict[str, Any] | None
) -> dict[str, Any]:
    """The recipe a patch model meant for scoring trains with: a MobileNetV2 primary trained on a
    dataset snapshot is built scannable (:data:`inference.scoring.DENSE_MOBILENET`: valid padding,
    so dense scanning equals the patch loop) unless the recipe's ``model_kwargs`` already names a
    padding. Without it the model would train and then be refused for scoring."""
    recipe = dict(recipe or {})
    if (
        dataset_source.get("kind") not in ("snapshot", "patch-folder")
        or architecture != "mobilenetv2"
        or stage != Stage.PRIMARY
    ):
        return recipe
    kwargs = dict(recipe.get("model_kwargs") or {})
    if "padding" in kwargs:
        return recipe
    from .scoring import DENSE_MOBILENET

    recipe["model_kwargs"] = {**DENSE_MOBILENET, **kwargs}
    return recipe


def _queue_training_run(run: TrainingRun) -> None:
    """Send the run's task; if the broker fails now, the run is failed with the reason (it would
    otherwise stay `queued` with no message behind it) and QueueUnavailable goes to the caller."""
    from .tasks import run_training

    try:
        send(run_training, [run.pk], queue=settings.TRAINING_QUEUE, what=f"training run {run.pk}")
    except QueueUnavailable as exc:
        run.finish(TrainingRun.Status.FAILED, reason=str(exc))
        raise


# ---- executing ---------------------------------------------------------------------------------


def run_dir(run: TrainingRun) -> Path:
    return Path(settings.RESULTS_DIR) / "training" / f"run-{run.pk}"


def execute_training_run(*, run_id: int, worker: str = "local", device: str | None = None) -> str:
    """Run one TrainingRun to a final state; returns that state. Safe to call twice."""
    run = TrainingRun.objects.get(pk=run_id)
    if run.is_finished:
        return run.status
    if not run.claim(worker=worker):
        run.refresh_from_db()
        if run.cancel_requested and not run.is_finished:
            run.finish(TrainingRun.Status.CANCELLED, reason="cancelled before it started")
        return run.status
    scope = TrainingScope.of_run(run)  # the launcher as they are now, not as at launch
    if _is_mil(run.architecture, run.dataset_source):  # seed 001: attention MIL on case bags
        from .mil_jobs import execute_mil_run

        return execute_mil_run(run, device=device, scope=scope)
    try:
        scope.check_launcher()
        scope.weights((run.recipe or {}).get("pretrained_weights"))
        source = run.dataset_source
        if source.get("kind") == "hard-negatives":
            dataset = load_dataset(_mine_for_run(run, scope))  # its own folder of mined arrays
        else:
            dataset = load_dataset(source, scope=scope)
        dataset.summary["labs"] = scope.labs()
        recipe = TrainingRecipe.from_dict(run.recipe or {})
    except TrainingCancelled as exc:
        run.finish(TrainingRun.Status.CANCELLED, reason=str(exc))
        return run.status
    except Exception as exc:  # noqa: BLE001 - any bad input ends the run with its reason
        run.finish(TrainingRun.Status.FAILED, reason=f"dataset or recipe: {exc}")
        return run.status

    last_write = [0.0]
    last_poll = [0.0]
    cancel_seen = [False]
    missing = {"val_auc": auc_missing_reason(dataset.val, dataset.summary.get("classes"))}

    def on_progress(event: TrainingProgress) -> None:
        now = time.monotonic()
        if event.kind == "step" and now - last_write[0] < PROGRESS_EVERY_S:
            return
        last_write[0] = now
        TrainingRun.objects.filter(pk=run.pk).update(
            progress=with_reasons(
                {
                    "epoch": event.epoch,
                    "max_epochs": event.max_epochs,
                    "step": event.step,
                    "steps_per_epoch": event.steps_per_epoch,
                    "loss": round(event.loss, 5),
                    "val_auc": event.val_auc,
                    "val_accuracy": event.val_accuracy,
                    "fraction": round(event.fraction_done, 4),
                    "elapsed_s": round(event.elapsed_s, 1),
                    "eta_s": None if event.eta_s is None else round(event.eta_s, 1),
                    "best_epoch": event.best_epoch,
                },
                missing,
            ),
            heartbeat_at=timezone.now(),
        )

    def should_cancel() -> bool:
        now = time.monotonic()
        if now - last_poll[0] >= CANCEL_POLL_EVERY_S:
            last_poll[0] = now
            cancel_seen[0] = TrainingRun.objects.filter(pk=run.pk, cancel_requested=True).exists()
        return cancel_seen[0]

    try:
        result = train(
            model_name=run.architecture,
            train_set=dataset.train,
            val_set=dataset.val,
            recipe=recipe,
            progress=on_progress,
            should_cancel=should_cancel,
            checkpoint_dir=run_dir(run),
            resume=True,
            device=device,
        )
    except TrainingCancelled as exc:
        run.finish(TrainingRun.Status.CANCELLED, reason=str(exc))
        return run.status
    except Exception as exc:  # noqa: BLE001
        run.finish(TrainingRun.Status.FAILED, reason=f"{type(exc).__name__}: {exc}")
        return run.status
    if _register_model_version(run, result, dataset) is None:
        return run.status
    return TrainingRun.Status.SUCCEEDED


def _mine_for_run(run: TrainingRun, scope: TrainingScope = UNRESTRICTED) -> dict[str, Any]:
    """Mine the hard negatives of a secondary run into its folder (reused when a resumed run
    finds them complete) and return the arrays source the run then trains on."""
    from .mining import mine

    last_write = [0.0]

    def on_progress(fields: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last_write[0] < PROGRESS_EVERY_S and fields.get("fraction") != 1.0:
            return
        last_write[0] = now
        TrainingRun.objects.filter(pk=run.pk).update(
            progress=json_safe(fields), heartbeat_at=timezone.now()
        )
        if TrainingRun.objects.filter(pk=run.pk, cancel_requested=True).exists():
            raise TrainingCancelled("cancelled while mining hard negatives")

    folder = run_dir(run) / "hard-negatives"
    mine(run.dataset_source, folder, progress=on_progress, scope=scope)
    return {"kind": "arrays", "path": str(folder)}


def install_weights(weights_path: str | Path, name: str) -> Path:
    """Copy a run's weights to RESULTS_DIR/models/<name>.pt through a temporary file and a
    rename: a ModelVersion never points at half a file."""
    models_dir = Path(settings.RESULTS_DIR) / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / f"{name}.pt"
    fd, tmp = tempfile.mkstemp(dir=models_dir, suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(weights_path, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _register_model_version(
    run: TrainingRun, result, dataset: LoadedDataset
) -> ModelVersion | None:
    """Copy the weights into place atomically, then create the ModelVersion and finish the run.

    A run whose validation AUC is not a number (a validation set of one class) registers no
    version: it fails, saying why, with ``val_auc`` null and the reason in its progress. Every
    JSON field is written through `json_safe`."""
    auc = finite_or_none(result.auc)
    if auc is None:
        reason = auc_missing_reason(dataset.val, dataset.summary.get("classes"))
        TrainingRun.objects.filter(pk=run.pk).update(
            progress=with_reasons(
                {
                    **json_safe(TrainingRun.objects.get(pk=run.pk).progress or {}),
                    "val_auc": float("nan"),
                },
                {"val_auc": reason},
            )
        )
        run.finish(
            TrainingRun.Status.FAILED,
            reason=f"trained, but no model version was registered: validation AUC missing, {reason}",
        )
        return None
    name = f"{run.architecture}-{run.stage}-run{run.pk}"
    target = install_weights(result.weights_path, name)
    metrics = result.metrics()
    evidence: dict[str, Any] = {}
    if dataset.summary.get("kind") == "node-images":  # AUROC [CI] and an operating point
        from .image_classifier import evidence_fields

        evidence = evidence_fields(result, dataset)
    with transaction.atomic():
        version = ModelVersion.objects.create(
            training_run=run,
            name=name,
            architecture=run.architecture,
            stage=run.stage,
            weights_path=str(target),
            weights_sha256=hashlib.sha256(target.read_bytes()).hexdigest(),
            dataset_hash=dataset.content_hash,
            dataset_summary=json_safe(dataset.summary),
            hyperparameters=json_safe(
                {
                    **metrics["recipe"],
                    **(
                        {"pretrained_report": metrics["pretrained"]}
                        if metrics.get("pretrained")
                        else {}
                    ),
                }
            ),
            code_version=code_version(),
            classes=metrics["classes"],
            val_accuracy=finite_or_none(result.accuracy) or 0.0,
            val_auc=auc,
            roc=json_safe(metrics["roc"] or {}),
            curves=json_safe(metrics["curves"]),
            device=result.device,
            training_seconds=float(result.seconds),
            **json_safe(evidence),
        )
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.Status.SUCCEEDED,
            finished_at=timezone.now(),
            status_reason=(
                f"best epoch {result.best_epoch} of {result.epochs_run}; validation AUC {result.auc:.4f}"
                + (
                    f"; resumed from epoch {result.resumed_from_epoch}"
                    if result.resumed_from_epoch
                    else ""
                )
            ),
        )
    return version


def code_version() -> str:
    """The git commit of the code that trained (plus '+dirty'), else a hash of inference/."""
    root = Path(settings.BASE_DIR)
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        if commit:
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--", "inference"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    digest = hashlib.sha256()
    for path in sorted((root / "inference").rglob("*.py")):
        digest.update(path.read_bytes())
    return "src-" + digest.hexdigest()[:12]


# ---- promotion ---------------------------------------------------------------------------------


class PromotionRefused(ValueError):
    """A version that must not go live as it is; the message says why and what to do."""


def promotion_blocker(version: ModelVersion) -> str | None:
    """Why `version` cannot be promoted (None: it can). A primary patch model scores the nodes
    every lab screens with, so it needs a locked threshold: without one nothing would be
    negative-screened and every queue would say "no threshold"."""
    if version.stage != Stage.PRIMARY:
        return None
    if version.threshold is None:
        return (
            f"{version.name} has no locked threshold: lock one on its page first (seed 002's "
            "rule on validation nodes); a scoring model goes live only with its threshold"
        )
    return None


def slides_to_rescore() -> int:
    """How many whole slides a promotion rescores (said in the confirmation before it)."""
    from slides.models import Slide

    return Slide.objects.filter(modality=Slide.Modality.SLIDE).count()


def promote(*, version: ModelVersion, user=None, rescore: bool = True) -> ModelVersion:
    """Make `version` the live model of its stage (the previous live one steps down) and, after the
    commit, rescore every slide with the live cascade (one task per slide on the `gpu` queue).
    With the job queue down nothing is promoted (QueueUnavailable), since nothing could be rescored;
    a version :func:`promotion_blocker` refuses is not promoted (PromotionRefused)."""
    blocker = promotion_blocker(version)
    if blocker:
        raise PromotionRefused(blocker)
    if version.stage in ("mil", "node-image"):  # MIL: cases; node-image: whole images, no slide
        rescore = False
    if rescore:
        check_queue_reachable()
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(stage=version.stage, is_live=True).exclude(
            pk=version.pk
        ).update(is_live=False)
        ModelVersion.objects.filter(pk=version.pk).update(
            is_live=True,
            promoted_at=timezone.now(),
            promoted_by=user if user is not None and user.is_authenticated else None,
        )
        record(actor=user, action="model promoted", obj=version, stage=version.stage)
        if rescore:
            from .rescoring import rescore_after_promotion

            transaction.on_commit(lambda: rescore_after_promotion(version=version, user=user))
    version.refresh_from_db()
    return version


def rollback(*, stage: str, user=None) -> ModelVersion | None:
    """Put back the version of `stage` that was live before the current one."""
    current = ModelVersion.objects.filter(stage=stage, is_live=True).first()
    previous = (
        ModelVersion.objects.filter(stage=stage, promoted_at__isnull=False)
        .exclude(pk=getattr(current, "pk", None))
        .order_by("-promoted_at")
        .first()
    )
    if previous is None:
        return None
    return promote(version=previous, user=user)


def live_model(stage: str = Stage.PRIMARY) -> ModelVersion | None:
    return ModelVersion.objects.filter(stage=stage, is_live=True).first()
