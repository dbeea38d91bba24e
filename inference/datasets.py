"""Patch datasets for training: a labelled image folder (or CSV), in-memory / memory-mapped numpy
arrays, and PatchCamelyon-style HDF5; plus a deterministic train/validation split.

Every dataset yields ``(patch, label)`` with ``patch`` a uint8 (3, H, W) tensor and ``label`` an
int, and exposes ``labels`` (int64 array), ``groups`` (case / patient per patch, or None) and
``classes`` (names, index = label). Datasets do no random work: augmentation and normalisation run
on whole batches in the training loop (:mod:`inference.augmentation`), which keeps loading
deterministic with any number of workers. Datasets with ``get_batch(indices)`` are read a batch
at a time without a DataLoader.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = [
    "ArrayPatchDataset",
    "DatasetSplit",
    "ImageFolderPatchDataset",
    "PCamDataset",
    "PatchSubset",
    "h5py_available",
    "load_image",
    "split_indices",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_GROUP_COLUMNS = ("group", "case", "patient", "patient_id", "case_id", "slide")


def _hwc_to_chw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3)))


class ArrayPatchDataset(torch.utils.data.Dataset):
    """Patches held as an (N, H, W, 3) uint8 array (in memory or ``np.load(..., mmap_mode="r")``)
    with N integer labels and, optionally, N group ids (case / patient) for splitting."""

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        *,
        groups: Sequence | np.ndarray | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3), got {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if self.labels.size != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {self.labels.size} labels")
        self.groups = None if groups is None else np.asarray(groups).reshape(-1)
        if self.groups is not None and self.groups.size != self.labels.size:
            raise ValueError("groups must have one entry per image")
        n_classes = int(self.labels.max()) + 1 if self.labels.size else 0
        self.classes = list(classes) if classes is not None else [str(i) for i in range(n_classes)]

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _hwc_to_chw(np.asarray(self.images[index])), int(self.labels[index])

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) uint8 and (N,) int64 for ``indices`` in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, np.memmap) and idx.size > 1:
            # reading a memory map in sorted order is much faster; restore the order afterwards
            order = np.argsort(idx, kind="stable")
            block = np.empty((idx.size, *self.images.shape[1:]), dtype=np.uint8)
            block[order] = self.images[idx[order]]
        else:
            block = self.images[idx]
        return _hwc_to_chw(block), torch.from_numpy(self.labels[idx].copy())


def load_image(path: str | PathLike[str], *, size: int | None = None) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, resized to ``size`` x ``size`` when given (area
    averaging when shrinking; JPEG decoding at a reduced scale first when that is enough)."""
    with Image.open(path) as img:
        if size is not None and img.format == "JPEG":
            img.draft("RGB", (size, size))
        img = img.convert("RGB")
        if size is not None and img.size != (size, size):
            shrinking = img.size[0] >= size and img.size[1] >= size
            method = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
            img = img.resize((size, size), method)
        return np.asarray(img, dtype=np.uint8)


class ImageFolderPatchDataset(torch.utils.data.Dataset):
    """Labelled patch images on disk.

    Either one subfolder per class under ``root`` (``root/tumour/*.png``), or a ``csv`` with a
    header and columns ``file`` (relative to ``root``) and ``label`` (class name), plus optionally a
    group column (``group``, ``case``, ``patient``... or ``group_column``) used for splitting.
    ``classes`` fixes the label order (default: sorted names); list the positive class last so it
    gets label 1. ``size`` resizes every patch to a square; ``cache`` keeps decoded patches.
    ``within`` (folders): files that lead outside them (symlinks, ``..`` in the CSV) are left out
    of the scan, and counted as missing from the CSV, whether they exist or not.
    """

    def __init__(
        self,
        root: str | PathLike[str],
        *,
        csv_path: str | PathLike[str] | None = None,
        classes: Sequence[str] | None = None,
        size: int | None = None,
        group_column: str | None = None,
        cache: bool = False,
        within: Sequence[Path] | None = None,
    ) -> None:
        self.root = Path(root)
        self.size = size
        self._within = None if within is None else [Path(w).resolve() for w in within]
        files, names, groups = (
            self._read_csv(Path(csv_path), group_column)
            if csv_path is not None
            else self._scan_folders()
        )
        if not files:
            raise ValueError(f"no labelled images found under {self.root}")
        found = sorted(set(names))
        self.classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise ValueError(f"labels {unknown} are not in classes {self.classes}")
        index = {name: i for i, name in enumerate(self.classes)}
        self.files = files
        self.labels = np.array([index[n] for n in names], dtype=np.int64)
        self.groups = None if groups is None else np.asarray(groups)
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def _scan_folders(self) -> tuple[list[Path], list[str], None]:
        files, names = [], []
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES and self._inside(path) and path.is_file():
                    files.append(path)
                    names.append(folder.name)
        return files, names, None

    def _inside(self, path: Path) -> bool:
        if self._within is None:
            return True
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError, ValueError):
            return False
        return any(resolved.is_relative_to(w) for w in self._within)

    def _read_csv(
        self, path: Path, group_column: str | None
    ) -> tuple[list[Path], list[str], list[str] | None]:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            header = [c.strip().lower() for c in reader.fieldnames or []]
            if "file" not in header or "label" not in header:
                raise ValueError(f"{path} needs a header with 'file' and 'label' columns")
            rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items()} for r in reader]
        gcol = (
            group_column.lower()
            if group_column
            else next((c for c in _GROUP_COLUMNS if c in header), None)
        )
        if gcol is not None and gcol not in header:
            raise ValueError(f"{path} has no column {group_column!r}")
        files = [self.root / r["file"] for r in rows]
        missing = [str(f) for f in files if not (self._inside(f) and f.is_file())]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} files listed in {path} are missing: {missing[:3]}"
            )
        groups = [r[gcol] for r in rows] if gcol else None
        return files, [r["label"] for r in rows], groups

    def __len__(self) -> int:
        return len(self.files)

    def _pixels(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        pixels = load_image(self.files[index], size=self.size)
        if self._cache is not None:
            self._cache[index] = pixels
        return pixels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _hwc_to_chw(self._pixels(index)), int(self.labels[index])

    def to_arrays(self, *, workers: int | None = None) -> ArrayPatchDataset:
        """Decode every image once into an :class:`ArrayPatchDataset` (needs ``size`` or images of
        one shape); ``workers`` threads decode in parallel (default: CPU count, at most 8)."""
        from concurrent.futures import ThreadPoolExecutor

        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pixels = list(pool.map(self._pixels, range(len(self))))
        shapes = {p.shape for p in pixels}
        if len(shapes) != 1:
            raise ValueError(f"images differ in shape {sorted(shapes)[:3]}; pass size=")
        return ArrayPatchDataset(
            np.stack(pixels), self.labels, groups=self.groups, classes=self.classes
        )


def h5py_available() -> bool:
    """Whether the optional ``h5py`` package (PatchCamelyon files) is installed."""
    try:
        import h5py  # noqa: F401
    except ImportError:
        return False
    return True


def _require_h5py():
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading PatchCamelyon HDF5 files needs h5py: pip install h5py") from exc
    return h5py


class PCamDataset(torch.utils.data.Dataset):
    """PatchCamelyon HDF5 pair: ``x`` (N, 96, 96, 3) uint8 patches, ``y`` (N, 1, 1, 1) labels
    (1 = tumour in the centre 32x32 region). Files are opened lazily, once per process, so the
    dataset can be used by DataLoader workers. PCam has no patient ids (``groups`` is None).
    """

    classes = ["non-tumour", "tumour"]
    groups = None

    def __init__(
        self, x_path: str | PathLike[str], y_path: str | PathLike[str], *, limit: int | None = None
    ) -> None:
        h5py = _require_h5py()
        self.x_path, self.y_path = Path(x_path), Path(y_path)
        with h5py.File(self.y_path, "r") as fy:
            y = np.asarray(fy["y"]).reshape(-1)
        with h5py.File(self.x_path, "r") as fx:
            n_x = fx["x"].shape[0]
        if n_x != y.size:
            raise ValueError(f"{self.x_path} has {n_x} patches but {self.y_path} {y.size} labels")
        n = y.size if limit is None else min(limit, y.size)
        self.labels = y[:n].astype(np.int64)
        self._file = None
        self._pid: int | None = None

    @classmethod
    def from_directory(
        cls, directory: str | PathLike[str], split: str, *, limit: int | None = None
    ) -> PCamDataset:
        """``camelyonpatch_level_2_split_{split}_{x,y}.h5`` in ``directory`` (train/valid/test)."""
        base = Path(directory) / f"camelyonpatch_level_2_split_{split}"
        return cls(f"{base}_x.h5", f"{base}_y.h5", limit=limit)

    def _x(self):
        if self._file is None or self._pid != os.getpid():
            self._file = _require_h5py().File(self.x_path, "r")
            self._pid = os.getpid()
        return self._file["x"]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        return state

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _hwc_to_chw(np.asarray(self._x()[index])), int(self.labels[index])

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        unique, inverse = np.unique(sorted_idx, return_inverse=True)
        block = np.asarray(self._x()[unique])[inverse]  # h5py needs increasing, unique indices
        out = np.empty_like(block)
        out[order] = block
        return _hwc_to_chw(out), torch.from_numpy(self.labels[idx].copy())


class PatchSubset(torch.utils.data.Dataset):
    """The patches of ``dataset`` at ``indices``, keeping labels, groups, classes and get_batch."""

    def __init__(self, dataset, indices: Sequence[int] | np.ndarray) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(dataset.labels)[self.indices]
        groups = getattr(dataset, "groups", None)
        self.groups = None if groups is None else np.asarray(groups)[self.indices]
        self.classes = list(dataset.classes)
        if hasattr(dataset, "get_batch"):
            self.get_batch = self._get_batch

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.dataset[int(self.indices[index])]

    def _get_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.get_batch(self.indices[np.asarray(indices, dtype=np.int64)])


@dataclass(frozen=True)
class DatasetSplit:
    """Indices of the training and validation patches, and how they were chosen."""

    train: np.ndarray
    val: np.ndarray
    by: str  # "group" or "random"
    note: str

    def subsets(self, dataset) -> tuple[PatchSubset, PatchSubset]:
        return PatchSubset(dataset, self.train), PatchSubset(dataset, self.val)


#: Shuffles of the groups a split by group tries for one that keeps every class on both sides.
GROUP_SPLIT_TRIES = 64


def split_indices(
    *,
    labels: Sequence[int] | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    val_fraction: float = 0.3,
    seed: int = 0,
) -> DatasetSplit:
    """Deterministic train/validation split (seed 002 uses 7:3).

    With ``groups`` (case or patient per patch) whole groups go to one side, so no patient is in
    both: groups are shuffled with ``seed`` and moved to validation until it holds
    ``val_fraction`` of the patches; if that leaves a class out of one side, the seed's next
    shuffles are tried (up to :data:`GROUP_SPLIT_TRIES`) for one that does not. Without groups the split is random per patch, stratified by
    label, and the note says so: views of one patient then land on both sides, so validation
    figures are optimistic.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be between 0 and 1")
    rng = np.random.default_rng(seed)
    if groups is not None:
        g = np.asarray(groups).reshape(-1)
        if g.size != y.size:
            raise ValueError("groups must have one entry per patch")
        unique = np.unique(g)
        if unique.size < 2:
            raise ValueError("a split by group needs at least two groups")
        classes = np.unique(y).size

        def draw() -> np.ndarray:
            val_mask = np.zeros(y.size, dtype=bool)
            for group in unique[rng.permutation(unique.size)]:
                if val_mask.sum() >= val_fraction * y.size:
                    break
                val_mask |= g == group
            if val_mask.all():  # never leave training empty
                val_mask &= g != g[val_mask][0]
            return val_mask

        def both_sides_have_every_class(val_mask: np.ndarray) -> bool:
            return np.unique(y[val_mask]).size == classes == np.unique(y[~val_mask]).size

        # the first shuffle of the seed, unless it leaves a class out of one side: then the first
        # of the seed's next shuffles that does not (few groups make that likely, e.g. three
        # cases of which one is the only negative); still deterministic for the seed
        val_mask = first = draw()
        for _ in range(GROUP_SPLIT_TRIES - 1):
            if both_sides_have_every_class(val_mask):
                break
            val_mask = draw()
        else:
            if not both_sides_have_every_class(val_mask):
                val_mask = first
        n_val_groups = np.unique(g[val_mask]).size
        note = (
            f"split by group: {n_val_groups} of {unique.size} groups in validation "
            f"({int(val_mask.sum())} of {y.size} patches), seed {seed}"
        )
        if np.unique(y[val_mask]).size < np.unique(y).size:
            note += "; warning: validation lacks a class"
        return DatasetSplit(
            train=np.flatnonzero(~val_mask), val=np.flatnonzero(val_mask), by="group", note=note
        )
    val: list[np.ndarray] = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        n_val = int(round(val_fraction * members.size))
        val.append(members[rng.permutation(members.size)[:n_val]])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(y.size), val_idx)
    note = (
        f"random split by patch, stratified by label, seed {seed} "
        f"({val_idx.size} of {y.size} patches in validation): no group (patient/case) ids were "
        "given, so patches of one patient can sit on both sides and validation is optimistic"
    )
    return DatasetSplit(train=train_idx, val=val_idx, by="random", note=note)
