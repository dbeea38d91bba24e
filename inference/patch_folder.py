"""Labelled patch folders (PatchCamelyon's layout): the ``patch-folder`` dataset kind.

A run names one with::

    {"kind": "patch-folder", "path": "/data/pcam-sample", "mpp": 0.972,
     "label_rule": "centre-32", "crop": 40}

Keys:

``path``
    The folder. Either ``train/`` and ``valid/`` (or ``val/``), each holding ``0/`` (non-tumour)
    and ``1/`` (tumour) with one image per patch, which is then the split; or ``0/`` and ``1/``
    directly, split by ``val_fraction`` (default 0.1) with ``seed`` (default 0), stratified by
    label and drawn after deduplication. PCam's patch files carry no patient or slide id, so such
    a split is by patch; PCam's own train and valid come from different slides.
``mpp``
    Micrometres per pixel of the patches (required: the grid is physical; PCam: about 0.972).
``label_rule``
    What the label describes: ``centre-N`` (the centre N x N px of the patch; PCam: ``centre-32``,
    a tumour pixel there makes the patch tumour) or ``whole`` (the whole patch).
``crop``
    Train on the centre ``crop`` x ``crop`` px of each patch (default 40: seed 002's window, the
    one scoring scans with; PCam's labelled centre 32 px lies inside it). ``null`` or the patch
    size: the full patch (96 px for PCam), for comparison. A crop smaller than the labelled centre
    is refused: its label would speak of pixels it no longer holds.

Every patch is a square RGB image, all of one size; a file that cannot be decoded or has another
size is refused by name (relative to the folder, never a server path). Byte-identical files (by
SHA-256) are kept once: PCam repeats 687 tumour patches; copies that disagree on the label are all
dropped. The summary counts both, with the grid (``patch_px`` = the trained window, ``target_mpp``,
as slide scoring reads them) and the label rule.

Decoding is done once: the patches are kept as one (N, H, W, 3) uint8 array under
``RESULTS_DIR/patch-folders/<hash of the files>.npy`` and memory-mapped by later runs; the files
are still read and hashed every time (about a second for PCam's 23,000), so a changed folder is
never served from a stale cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

KIND = "patch-folder"
CLASSES = ["non-tumour", "tumour"]
LABEL_FOLDERS = ("0", "1")
SPLIT_FOLDERS = {"train": ("train",), "val": ("valid", "val")}
DEFAULT_CROP = 40
DEFAULT_VAL_FRACTION = 0.1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LAYOUT = "a patch folder holds train/ and valid/, each with 0/ and 1/, or 0/ and 1/ directly"
_WORKERS = min(8, os.cpu_count() or 1)


class PatchFolderError(ValueError):
    """A patch folder or source that cannot be trained on; the message names the file at fault
    relative to the folder."""


@dataclass
class PatchFiles:
    """The image files of a folder: path, name relative to the folder, label, split."""

    root: Path
    paths: list[Path]
    names: list[str]
    labels: np.ndarray
    splits: np.ndarray  # "train", "val", or "" (no split given)

    @property
    def has_split(self) -> bool:
        return bool(self.splits.size) and self.splits[0] != ""


@dataclass
class PatchArrays:
    """Deduplicated, decoded patches of a folder, in a fixed order."""

    images: np.ndarray  # (N, S, S, 3) uint8, maybe a memory map
    labels: np.ndarray
    splits: np.ndarray
    names: list[str]
    files_hash: str
    dedup: dict[str, int] = field(default_factory=dict)
    decoded_now: bool = False

    @property
    def patch_px(self) -> int:
        return int(self.images.shape[1])


# ---- the source -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatchFolderSource:
    path: Any
    mpp: float
    label_rule: str
    labelled_px: int | None  # None: the label speaks of the whole patch
    crop: int | None
    seed: int
    val_fraction: float


def parse_source(source: dict[str, Any]) -> PatchFolderSource:
    """The checked keys of a ``patch-folder`` source."""
    unknown = set(source) - {"kind", "path", "mpp", "label_rule", "crop", "seed", "val_fraction"}
    if unknown:
        raise PatchFolderError(f"unknown patch-folder keys {sorted(unknown)}")
    try:
        mpp = float(source.get("mpp"))
    except (TypeError, ValueError):
        raise PatchFolderError("a patch folder needs its mpp (µm per pixel), e.g. 0.972") from None
    if not 0.05 <= mpp <= 50:
        raise PatchFolderError(f"mpp {mpp} is not a plausible µm per pixel")
    rule = str(source.get("label_rule", "centre-32"))
    match = re.fullmatch(r"cent(?:re|er)-(\d{1,4})", rule)
    if rule != "whole" and not match:
        raise PatchFolderError(
            f"label_rule {rule!r}: use centre-N (the label speaks of the centre N px) or whole"
        )
    labelled = int(match.group(1)) if match else None
    crop = source.get("crop", DEFAULT_CROP)
    if crop is not None:
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 8:
            raise PatchFolderError(f"crop must be a whole number of px (at least 8), not {crop!r}")
        if labelled is not None and crop < labelled:
            raise PatchFolderError(
                f"crop {crop} px would cut the labelled centre {labelled} px: use {labelled} or more"
            )
    try:
        seed = int(source.get("seed", 0))
        val_fraction = float(source.get("val_fraction", DEFAULT_VAL_FRACTION))
    except (TypeError, ValueError):
        raise PatchFolderError("seed and val_fraction must be numbers") from None
    if not 0.0 < val_fraction < 1.0:
        raise PatchFolderError("val_fraction must be between 0 and 1")
    return PatchFolderSource(
        path=source.get("path"),
        mpp=mpp,
        label_rule="whole" if labelled is None else f"centre-{labelled}",
        labelled_px=labelled,
        crop=crop,
        seed=seed,
        val_fraction=val_fraction,
    )


# ---- reading a folder -----------------------------------------------------------------------------


def _label_folders(folder: Path) -> list[Path] | None:
    subs = [folder / name for name in LABEL_FOLDERS]
    return subs if all(s.is_dir() for s in subs) else None


def scan(root: Path, *, inside=None) -> PatchFiles:
    """The image files of ``root`` in either layout, sorted (train before validation, label 0
    before 1, then by name); ``inside(path)`` False leaves a file out (a symlink out of the
    import roots)."""
    root = Path(root)
    parts: list[tuple[str, Path]] = []
    train = next((root / n for n in SPLIT_FOLDERS["train"] if (root / n).is_dir()), None)
    val = next((root / n for n in SPLIT_FOLDERS["val"] if (root / n).is_dir()), None)
    if train is not None and val is not None:
        for split, folder in (("train", train), ("val", val)):
            if _label_folders(folder) is None:
                raise PatchFolderError(f"{folder.name}/ has no 0/ and 1/ folders ({LAYOUT})")
            parts.append((split, folder))
    elif _label_folders(root) is not None:
        parts.append(("", root))
    else:
        raise PatchFolderError(f"no 0/ and 1/ folders found ({LAYOUT})")
    paths, names, labels, splits = [], [], [], []
    for split, folder in parts:
        for label, sub in enumerate(_label_folders(folder) or []):
            for path in sorted(sub.iterdir()):
                if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                    continue
                if inside is not None and not inside(path):
                    continue
                paths.append(path)
                names.append(path.relative_to(root).as_posix())
                labels.append(label)
                splits.append(split)
    if not paths:
        raise PatchFolderError("no patch images in that folder")
    return PatchFiles(
        root=root,
        paths=paths,
        names=names,
        labels=np.asarray(labels, np.int64),
        splits=np.asarray(splits),
    )


def _read(path: Path) -> bytes:
    return path.read_bytes()


def deduplicate(files: PatchFiles, contents: list[bytes]) -> tuple[np.ndarray, dict[str, int]]:
    """Indices of the files to keep: the first copy of each distinct content (train before
    validation), none of a content whose copies disagree on the label; and the counts."""
    digests = [hashlib.sha256(b).digest() for b in contents]
    first: dict[bytes, int] = {}
    copies: dict[bytes, int] = {}
    labels_of: dict[bytes, set[int]] = {}
    splits_of: dict[bytes, set[str]] = {}
    for i, d in enumerate(digests):
        first.setdefault(d, i)
        copies[d] = copies.get(d, 0) + 1
        labels_of.setdefault(d, set()).add(int(files.labels[i]))
        splits_of.setdefault(d, set()).add(str(files.splits[i]))
    conflicting = {d for d, labels in labels_of.items() if len(labels) > 1}
    keep = np.array(sorted(i for d, i in first.items() if d not in conflicting), np.int64)
    repeated = [d for d, n in copies.items() if n > 1]
    return keep, {
        "files": len(contents),
        "distinct": len(first),
        "kept": int(keep.size),
        "duplicate_groups": len(repeated),
        "duplicates_dropped": int(sum(copies[d] - 1 for d in repeated if d not in conflicting)),
        "conflicting_labels_dropped": int(sum(copies[d] for d in conflicting)),
        "across_splits": sum(1 for d in repeated if len(splits_of[d]) > 1),
    }


def _files_hash(files: PatchFiles, contents: list[bytes]) -> str:
    digest = hashlib.sha256(b"patch-folder/1\n")
    for name, data in zip(files.names, contents, strict=True):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def _decode(data: bytes) -> np.ndarray | str:
    """(H, W, 3) uint8, or why the bytes are not an image (no path in the reason)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        return "not an image format PIL can identify"
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        return str(exc) or type(exc).__name__
    except Image.DecompressionBombError:
        return "too many pixels for a patch"


def _decode_all(names: list[str], contents: list[bytes]) -> np.ndarray:
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        decoded = list(pool.map(_decode, contents))
    bad = [(n, d) for n, d in zip(names, decoded, strict=True) if isinstance(d, str)]
    if bad:
        more = f"; {len(bad) - 1} more files are unreadable" if len(bad) > 1 else ""
        raise PatchFolderError(f"{bad[0][0]} is not a readable image ({bad[0][1]}){more}")
    shape = decoded[0].shape
    if shape[0] != shape[1]:
        raise PatchFolderError(f"{names[0]} is {shape[1]} x {shape[0]} px; patches must be square")
    odd = [(n, d.shape) for n, d in zip(names, decoded, strict=True) if d.shape != shape]
    if odd:
        name, (h, w, _c) = odd[0]
        raise PatchFolderError(
            f"{name} is {w} x {h} px but {names[0]} is {shape[1]} x {shape[0]}: "
            "every patch of a folder must have one size"
        )
    return np.stack(decoded)


def cache_dir() -> Path:
    return Path(settings.RESULTS_DIR) / "patch-folders"


def read_patch_folder(root: Path, *, inside=None, cache: bool = True) -> PatchArrays:
    """Scan, hash, deduplicate and decode a patch folder (decoded pixels cached by the hash of
    the files' names and contents)."""
    files = scan(root, inside=inside)
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        contents = list(pool.map(_read, files.paths))
    keep, dedup = deduplicate(files, contents)
    if keep.size == 0:
        raise PatchFolderError("no patch is left after dropping duplicates with clashing labels")
    files_hash = _files_hash(files, contents)
    names = [files.names[i] for i in keep]
    target = cache_dir() / f"{files_hash}.npy"
    images = None
    if cache and target.is_file():
        try:
            images = np.load(target, mmap_mode="r", allow_pickle=False)
            if images.ndim != 4 or images.shape[0] != keep.size or images.dtype != np.uint8:
                images = None
        except (ValueError, OSError):
            images = None
    decoded_now = images is None
    if images is None:
        images = _decode_all(names, [contents[i] for i in keep])
        if cache:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            with tmp.open("wb") as fh:
                np.save(fh, images, allow_pickle=False)
            os.replace(tmp, target)
    return PatchArrays(
        images=images,
        labels=files.labels[keep],
        splits=files.splits[keep],
        names=names,
        files_hash=files_hash,
        dedup=dedup,
        decoded_now=decoded_now,
    )


def centre_crop(images: np.ndarray, crop: int | None) -> np.ndarray:
    """The centre ``crop`` x ``crop`` px of (N, S, S, 3) patches, in memory (None or S: as is)."""
    size = images.shape[1]
    if crop is None or crop == size:
        return images
    if crop > size:
        raise PatchFolderError(f"crop {crop} px is larger than the {size} px patches")
    top = (size - crop) // 2
    return np.ascontiguousarray(images[:, top : top + crop, top : top + crop])


# ---- the platform's dataset interface -------------------------------------------------------------


def _root(source: PatchFolderSource, scope) -> Path:
    from .scope import FOLDER_REFUSAL

    if scope.unrestricted:
        root = Path(str(source.path or ""))
        if not root.is_dir():
            raise PatchFolderError(f"patch folder {root} does not exist")
        return root
    return scope.path(source.path, refusal=FOLDER_REFUSAL, folder=True)


def _inside(scope):
    return None if scope.unrestricted else scope.inside


def check_patch_folder(source: dict[str, Any], *, scope) -> dict[str, int]:
    """Files per class, before deduplication (a launch check: no decoding)."""
    parsed = parse_source(source)
    files = scan(_root(parsed, scope), inside=_inside(scope))
    if files.has_split and not {"train", "val"} <= set(files.splits.tolist()):
        raise PatchFolderError("train/ or valid/ holds no patch images")
    return {name: int((files.labels == i).sum()) for i, name in enumerate(CLASSES)}


def grid_summary(source: PatchFolderSource, patch_px: int) -> dict[str, Any]:
    """The physical grid of a run: the trained window and the patch it was cut from."""
    window = source.crop or patch_px
    return {
        "patch_px": window,  # the window the model sees (and slide scoring scans with)
        "target_mpp": source.mpp,
        "window_um": round(window * source.mpp, 2),
        "source_patch_px": patch_px,
        "source_patch_um": round(patch_px * source.mpp, 2),
        "crop": "full patch" if window == patch_px else f"centre {window} px",
        "label_rule": source.label_rule,
    }


def load_patch_folder(source: dict[str, Any], *, scope):
    """The :class:`inference.jobs.LoadedDataset` of a ``patch-folder`` source."""
    from .datasets import ArrayPatchDataset, PatchSubset, split_indices
    from .jobs import LoadedDataset

    parsed = parse_source(source)
    arrays = read_patch_folder(_root(parsed, scope), inside=_inside(scope))
    if parsed.crop is not None and parsed.crop > arrays.patch_px:
        raise PatchFolderError(
            f"crop {parsed.crop} px is larger than the {arrays.patch_px} px patches"
        )
    if parsed.labelled_px is not None and parsed.labelled_px > arrays.patch_px:
        raise PatchFolderError(
            f"label_rule {parsed.label_rule} speaks of more than the {arrays.patch_px} px patches"
        )
    dataset = ArrayPatchDataset(
        centre_crop(arrays.images, parsed.crop), arrays.labels, classes=CLASSES
    )
    if arrays.splits.size and arrays.splits[0] != "":
        train_idx = np.flatnonzero(arrays.splits == "train")
        val_idx = np.flatnonzero(arrays.splits == "val")
        note = "given by the folder (train/ and valid/)"
        params: dict[str, Any] = {}
    else:
        split = split_indices(
            labels=arrays.labels, val_fraction=parsed.val_fraction, seed=parsed.seed
        )
        train_idx, val_idx, note = split.train, split.val, split.note
        params = {"seed": parsed.seed, "val_fraction": parsed.val_fraction}
    train_set, val_set = PatchSubset(dataset, train_idx), PatchSubset(dataset, val_idx)
    grid = grid_summary(parsed, arrays.patch_px)
    content_hash = hashlib.sha256(
        json.dumps({"files": arrays.files_hash, "grid": grid, **params}, sort_keys=True).encode()
    ).hexdigest()
    labels = arrays.labels
    summary = {
        "kind": KIND,
        "classes": list(CLASSES),
        "counts": {name: int((labels == i).sum()) for i, name in enumerate(CLASSES)},
        "train": len(train_set),
        "val": len(val_set),
        "split": note,
        "grid": grid,
        "label_rule": parsed.label_rule,
        "mpp": parsed.mpp,
        "deduplication": arrays.dedup,
        "files_hash": arrays.files_hash,
    }
    return LoadedDataset(train=train_set, val=val_set, content_hash=content_hash, summary=summary)


# ---- evaluation on any folder in this layout ------------------------------------------------------


def score_patches(
    model,
    images: np.ndarray,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    tta: bool = False,
    batch_size: int = 512,
    positive_class: int = 1,
) -> np.ndarray:
    """Tumour probability of each (N, S, S, 3) uint8 patch; ``tta``: the mean over the eight
    dihedral transforms (rotations and flips) of each patch."""
    import torch

    from .augmentation import dihedral, normalize, to_float

    model.eval()
    transforms = range(8) if tta else (0,)
    out = np.empty(images.shape[0], np.float64)
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            block = np.ascontiguousarray(np.asarray(images[start : start + batch_size]))
            x = normalize(to_float(torch.from_numpy(block).permute(0, 3, 1, 2)), mean=mean, std=std)
            probs = sum(
                torch.softmax(model(dihedral(x, k).contiguous()), dim=1)[:, positive_class]
                for k in transforms
            )
            out[start : start + block.shape[0]] = (probs / len(transforms)).double().numpy()
    return out


def patch_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Patch AUC with its 95% percentile-bootstrap interval, sensitivity and specificity at
    ``threshold`` (with theirs): the statistics of :func:`review.metrics.evaluate`."""
    from review.metrics import evaluate

    out = evaluate(np.asarray(labels) == 1, scores, threshold, n_boot=n_boot, seed=seed)
    figures: dict[str, Any] = {
        "patches": int(np.asarray(labels).size),
        "tumour": int((np.asarray(labels) == 1).sum()),
        "threshold": threshold,
    }
    for key in ("auc", "sensitivity", "specificity", "accuracy"):
        est = out.get(key)
        if est is not None:
            figures[key] = est.value
            figures[f"{key}_ci95"] = [est.low, est.high]
    figures["confusion"] = {k: out.get(k) for k in ("tp", "fp", "tn", "fn")}
    return figures


def evaluate_on_folder(
    weights_path: str | Path,
    folder: str | Path,
    *,
    crop: int | None,
    tta: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    arrays: PatchArrays | None = None,
) -> dict[str, Any]:
    """A trained model (``model.pt`` or an installed version's weights) on every deduplicated
    patch of ``folder`` (``0/`` and ``1/``, or its ``valid/``), its centre ``crop`` px."""
    import time

    from .augmentation import IMAGENET_MEAN, IMAGENET_STD
    from .training import load_trained_model

    model, meta = load_trained_model(weights_path)
    recipe = meta.get("recipe") or {}
    arrays = arrays or read_patch_folder(Path(folder))
    if arrays.splits.size and arrays.splits[0] != "":  # a folder with train/ and valid/
        keep = arrays.splits == "val"
        images, labels = arrays.images[keep], arrays.labels[keep]
    else:
        images, labels = arrays.images, arrays.labels
    images = centre_crop(images, crop)
    started = time.perf_counter()
    scores = score_patches(
        model,
        images,
        mean=tuple(recipe.get("mean") or IMAGENET_MEAN),
        std=tuple(recipe.get("std") or IMAGENET_STD),
        tta=tta,
    )
    seconds = time.perf_counter() - started
    return {
        **patch_metrics(labels, scores, n_boot=n_boot, seed=seed),
        "tta": "dihedral x8" if tta else "none",
        "duplicates_dropped": arrays.dedup.get("duplicates_dropped", 0),
        "images_per_s": round(images.shape[0] / max(seconds, 1e-9), 1),
    }
