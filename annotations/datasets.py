"""Dataset snapshots: patch labels frozen for training, split by case, with a content hash.

`create_snapshot` derives the patch labels of the chosen slides from their annotations as they are
now (`labels.derive_patch_labels`), samples them (optionally: at most `max_per_class` patches per
fine class, and/or `balanced` tumour against the rest), splits them into training and validation
by case (`inference.datasets.split_indices` with the case as the group: no patient is on both
sides), and writes one label array per slide into the snapshot's folder before the row commits.
Later annotation edits therefore never change a snapshot; a new snapshot sees them (and gets
another content hash). The patch pixels are extracted afterwards by a Celery task
(`annotations.extraction`), queued with `transaction.on_commit`.

Files in `RESULTS_DIR/datasets/<id>/`:
- `labels-<slide>.npy`: one structured row per patch (`LABEL_DTYPE`), in grid order;
- `patches-<slide>.npy`: (N, P, P, 3) uint8 pixels at the target mpp, same order (extraction);
- `manifest.json`: the snapshot's record, for reading it without the database.

Training sees two classes: tumour (1) against everything else that survives (0: non-tumour and
the hard negatives); the fine class stays beside it (`fine_labels`, `fine_classes`). What the two
are called comes from the cases' project type (`slides.project_types`): "non-tumour" / "tumour" for
lymph nodes, "benign" / "tumour" for biopsies.

The grid (patch size and µm/px) defaults to the project type's as well: 40 px at 1.0 µm/px for
lymph nodes, 256 px at 0.5 µm/px for biopsies. A snapshot holds the slides of one project type
only; slides of lymph-node and biopsy cases together are refused.

The content hash is the SHA-256 of a canonical JSON of the slide ids and checksums, the annotation
versions, the grid, the sampling, the seed, the split (the cases on each side) and the SHA-256 of
each slide's label array: equal inputs give equal hashes, any change gives another. A biopsy
snapshot's payload also names its project type and training classes (a lymph-node payload is as it
always was, so the hashes of lymph-node snapshots did not change when project types came in).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet

from config.files import folder_written_atomically
from slides.models import Node, Slide
from slides.project_types import ProjectDefaults, ProjectType, defaults_for

from .labels import PatchLabelError, PatchLabels, derive_patch_labels
from .models import Annotation, Dataset, LabelClass

TRAINING_CLASSES = ("non-tumour", "tumour")
HASH_FORMAT = 1
LABEL_DTYPE = np.dtype(
    [
        ("row", "<i4"),  # grid row and column
        ("col", "<i4"),
        ("x0", "<i8"),  # top-left corner of the patch, level-0 px
        ("y0", "<i8"),
        ("fine", "<i2"),  # index into Dataset.classes
        ("label", "u1"),  # training label: 1 tumour, 0 everything else
        ("val", "?"),  # in the validation split
        ("case", "<i8"),  # case id (the split group)
    ]
)


class DatasetError(ValueError):
    """A snapshot that cannot be made or opened; the message says why."""


def labels_path(folder: Path, slide_id: int) -> Path:
    return folder / f"labels-{slide_id}.npy"


def patches_path(folder: Path, slide_id: int) -> Path:
    return folder / f"patches-{slide_id}.npy"


# ---- creating -----------------------------------------------------------------------------------


@dataclass
class _SlideLabels:
    slide: Slide
    labels: PatchLabels


def create_snapshot(
    *,
    name: str,
    slides: Iterable[Slide | int],
    patch_px: int | None = None,
    target_mpp: float | None = None,
    stride_px: int | None = None,
    val_fraction: float = 0.3,
    seed: int = 0,
    max_per_class: int | None = None,
    balanced: bool = False,
    min_tissue: float = 0.5,
    user=None,
    enqueue: bool = True,
    dry_run: bool = False,
) -> Dataset:
    """Freeze the patch labels of `slides` into a new Dataset and queue its extraction.

    With `dry_run` nothing is written or queued: the Dataset comes back unsaved, with the class
    counts and the split by case it would have (what the Datasets page shows before creating).

    `patch_px` and `target_mpp` default to the project type of the slides' cases (lymph node: 40
    px at 1.0 µm/px; biopsy: 256 px at 0.5 µm/px); `stride_px` to the patch size.

    Refuses (`DatasetError`) no slides, slides of more than one project type, slides without mpp,
    labels that cannot be derived, a single class overall, fewer than two cases, and a split that
    leaves a class out of training or validation.
    """
    name = (name or "").strip()
    if not name:
        raise DatasetError("a dataset needs a name")
    if Dataset.objects.filter(name=name).exists():
        raise DatasetError(f"a dataset named {name!r} already exists; snapshots are never replaced")
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError("the validation fraction must lie between 0 and 1")
    if max_per_class is not None and max_per_class < 1:
        raise DatasetError("max_per_class must be at least 1")
    chosen = _resolve_slides(slides)
    project = project_of(chosen)
    patch_px = project.patch_px if patch_px is None else patch_px
    target_mpp = project.target_mpp if target_mpp is None else target_mpp
    stride_px = patch_px if stride_px is None else stride_px
    if patch_px <= 0 or stride_px <= 0 or target_mpp <= 0:
        raise DatasetError("patch size, stride and target mpp must be positive")
    images = [s for s in chosen if s.modality != Slide.Modality.SLIDE]
    if images:
        listed = ", ".join(f"{s.pk} ({s.name}, {s.get_modality_display()})" for s in images)
        raise DatasetError(
            f"patch datasets are cut from whole slides; these are node images: {listed}"
        )
    no_mpp = [s for s in chosen if not s.mpp]
    if no_mpp:
        listed = ", ".join(f"{s.pk} ({s.name})" for s in no_mpp)
        raise DatasetError(
            f"slides without µm per pixel cannot be cut into {patch_px} px patches at "
            f"{target_mpp} µm/px: {listed}; set their mpp first"
        )

    per_slide = [
        _SlideLabels(
            s,
            _derive(
                s,
                patch_px=patch_px,
                target_mpp=target_mpp,
                stride_px=stride_px,
                min_tissue=min_tissue,
            ),
        )
        for s in chosen
    ]
    classes = per_slide[0].labels.classes
    if any(p.labels.classes != classes for p in per_slide):
        raise DatasetError("the label classes changed while the labels were derived; try again")
    kinds = dict(LabelClass.objects.values_list("key", "kind"))
    tumour_index = np.array(
        [i for i, key in enumerate(classes) if kinds.get(key) == LabelClass.Kind.TUMOUR]
    )

    fine = np.concatenate([p.labels.label for p in per_slide]).astype(np.int64)
    origin = np.concatenate(
        [np.full(len(p.labels), i, dtype=np.int64) for i, p in enumerate(per_slide)]
    )
    chosen_idx = sample_patches(
        fine,
        n_classes=len(classes),
        tumour=tumour_index,
        max_per_class=max_per_class,
        balanced=balanced,
        seed=seed,
    )
    binary = np.isin(fine, tumour_index).astype(np.int64)
    case_of = np.array([p.slide.node.case_id for p in per_slide], dtype=np.int64)[origin]
    training_classes = project.training_classes
    _refuse_single_class(binary[chosen_idx], len(chosen_idx), names=training_classes)

    val = _split_by_case(
        binary=binary[chosen_idx],
        cases=case_of[chosen_idx],
        val_fraction=val_fraction,
        seed=seed,
        names=training_classes,
    )
    in_val = np.zeros(len(fine), dtype=bool)
    in_val[chosen_idx[val]] = True
    keep = np.zeros(len(fine), dtype=bool)
    keep[chosen_idx] = True

    arrays: dict[int, np.ndarray] = {}
    start = 0
    for p in per_slide:
        n = len(p.labels)
        sel = np.flatnonzero(keep[start : start + n])
        lab = p.labels
        rows = np.empty(len(sel), dtype=LABEL_DTYPE)
        rows["row"], rows["col"] = lab.row[sel], lab.col[sel]
        rows["x0"], rows["y0"] = lab.x0[sel], lab.y0[sel]
        rows["fine"] = lab.label[sel]
        rows["label"] = binary[start + sel]
        rows["val"] = in_val[start + sel]
        rows["case"] = p.slide.node.case_id
        arrays[p.slide.pk] = rows
        start += n

    record = _snapshot_record(
        per_slide=per_slide,
        arrays=arrays,
        classes=classes,
        patch_px=patch_px,
        target_mpp=target_mpp,
        stride_px=stride_px,
        min_tissue=min_tissue,
        seed=seed,
        val_fraction=val_fraction,
        max_per_class=max_per_class,
        balanced=balanced,
        project=project,
    )
    if dry_run:
        return Dataset(name=name, **record)
    if enqueue:
        from config.queueing import check_queue_reachable

        check_queue_reachable()  # broker down: QueueUnavailable (a 503) before any row is written
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                name=name,
                created_by=user
                if user is not None and getattr(user, "is_authenticated", False)
                else None,
                **record,
            )
            dataset.slides.set([p.slide for p in per_slide])
            _write_folder(dataset, arrays)
            if enqueue:
                transaction.on_commit(lambda: _queue_extraction(dataset))
    except IntegrityError as exc:  # the same name, created meanwhile
        raise DatasetError(f"a dataset named {name!r} already exists: {exc}") from exc
    return dataset


def default_snapshot_slides(slides: QuerySet[Slide]) -> QuerySet[Slide]:
    """The slides a new snapshot takes by default, among `slides`: every slide with a tumour
    annotation (not deleted), plus the slides of nodes whose ground truth is negative (all their
    tissue is non-tumour)."""
    tumour = Annotation.objects.filter(
        deleted_at__isnull=True, label_class__kind=LabelClass.Kind.TUMOUR
    ).values("slide_id")
    return slides.filter(
        Q(pk__in=tumour) | Q(node__ground_truth=Node.GroundTruth.NEGATIVE)
    ).order_by("pk")


def datasets_for(user) -> QuerySet[Dataset]:
    """Snapshots whose every slide the user may see (none for users below lab lead)."""
    from slides.access import has_role, slides_for
    from slides.models import Role

    if not has_role(user, Role.LAB_LEAD):
        return Dataset.objects.none()
    hidden = Slide.objects.exclude(pk__in=slides_for(user).values("pk"))
    return Dataset.objects.exclude(slides__in=hidden).distinct()


def _queue_extraction(dataset: Dataset) -> None:
    """Send the extraction task; if the broker fails now, the dataset is failed with the reason
    (it would otherwise stay pending with no message behind it) and QueueUnavailable goes on."""
    from config.queueing import QueueUnavailable, send

    from .tasks import extract_dataset

    try:
        send(
            extract_dataset,
            [dataset.pk],
            queue=settings.CELERY_TASK_DEFAULT_QUEUE,
            what=f"dataset {dataset.pk} extraction",
        )
    except QueueUnavailable as exc:
        dataset.finish(Dataset.Status.FAILED, reason=str(exc))
        raise


def project_of(slides: Sequence[Slide]) -> ProjectDefaults:
    """The one project type of the slides' cases; `DatasetError` naming the cases of each type if
    they mix lymph-node and biopsy cases (their grids and label names differ)."""
    by_type: dict[str, list[str]] = {}
    for s in slides:
        accessions = by_type.setdefault(s.node.case.project_type, [])
        if s.node.case.accession_number not in accessions:
            accessions.append(s.node.case.accession_number)
    if len(by_type) > 1:
        listed = "; ".join(
            f"{defaults_for(t).label.lower()}: {', '.join(sorted(a))}"
            for t, a in sorted(by_type.items())
        )
        raise DatasetError(
            "a dataset holds the slides of one project type, and these cases mix them "
            f"({listed}); make one dataset per project type"
        )
    return defaults_for(next(iter(by_type), ProjectType.LYMPH_NODE))


def _resolve_slides(slides: Iterable[Slide | int]) -> list[Slide]:
    ids: list[int] = []
    for s in slides or []:
        ids.append(s.pk if isinstance(s, Slide) else int(s))
    ids = sorted(set(ids))
    if not ids:
        raise DatasetError("a dataset needs at least one slide")
    found = {s.pk: s for s in Slide.objects.filter(pk__in=ids).select_related("node__case")}
    missing = [i for i in ids if i not in found]
    if missing:
        raise DatasetError(f"no such slide(s): {', '.join(map(str, missing))}")
    return [found[i] for i in ids]


def _derive(slide: Slide, **grid: Any) -> PatchLabels:
    try:
        return derive_patch_labels(slide, **grid)
    except PatchLabelError as exc:
        raise DatasetError(str(exc)) from exc
    except (OSError, ValueError, RuntimeError) as exc:  # the file could not be read for its mask
        raise DatasetError(
            f"slide {slide.pk} ({slide.name}): its tissue mask could not be read: {exc}"
        ) from exc


def sample_patches(
    fine: np.ndarray,
    *,
    n_classes: int,
    tumour: np.ndarray,
    max_per_class: int | None,
    balanced: bool,
    seed: int,
) -> np.ndarray:
    """Sorted indices of the patches kept: every patch, unless capped (seeded, per fine class).

    `max_per_class` caps each fine class. `balanced` then caps everything that is not tumour at
    the number of tumour patches, shared out by water-filling: each non-tumour class gets an equal
    share, and a class smaller than its share keeps all its patches and passes on the rest, so
    rare hard negatives survive whole while plain non-tumour is cut.
    """
    counts = np.bincount(fine, minlength=n_classes)
    take = counts.copy()
    if max_per_class is not None:
        take = np.minimum(take, max_per_class)
    if balanced:
        budget = int(take[tumour].sum()) if len(tumour) else 0
        others = [c for c in np.argsort(take, kind="stable") if c not in set(tumour.tolist())]
        others = [c for c in others if take[c] > 0]
        for i, c in enumerate(others):
            share = budget // (len(others) - i)
            take[c] = min(take[c], share)
            budget -= take[c]
    rng = np.random.default_rng(seed)
    kept = []
    for c in range(n_classes):
        idx = np.flatnonzero(fine == c)
        if take[c] < len(idx):
            idx = np.sort(rng.choice(idx, size=int(take[c]), replace=False))
        kept.append(idx)
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def _refuse_single_class(
    binary: np.ndarray, n: int, *, names: Sequence[str] = TRAINING_CLASSES
) -> None:
    tumour = int(binary.sum())
    if n == 0:
        raise DatasetError("these slides hold no labelled patch (no tissue, or all excluded)")
    if tumour == 0:
        raise DatasetError(
            f"only one class overall: {n} {names[0]} patches and no {names[1]} patch; "
            f"add slides with {names[1]} annotations"
        )
    if tumour == n:
        raise DatasetError(
            f"only one class overall: {n} {names[1]} patches and nothing else; add slides of "
            "negative nodes (or benign biopsies) or non-tumour annotations"
        )


def _split_by_case(
    *,
    binary: np.ndarray,
    cases: np.ndarray,
    val_fraction: float,
    seed: int,
    names: Sequence[str] = TRAINING_CLASSES,
) -> np.ndarray:
    """Boolean: which patches go to validation (whole cases; refuses a side without a class)."""
    from inference.datasets import split_indices

    unique = np.unique(cases)
    if unique.size < 2:
        raise DatasetError(
            f"all these slides belong to one case (id {int(unique[0])}); a split by case needs "
            "at least two cases, so that no patient is in both training and validation"
        )
    split = split_indices(labels=binary, groups=cases, val_fraction=val_fraction, seed=seed)
    val = np.zeros(len(binary), dtype=bool)
    val[split.val] = True
    for side, mask in (("training", ~val), ("validation", val)):
        present = set(np.unique(binary[mask]).tolist())
        for label, what in enumerate(names):
            if label not in present:
                cases_there = sorted(np.unique(cases[mask]).tolist())
                raise DatasetError(
                    f"the split by case (seed {seed}, validation fraction {val_fraction}) leaves "
                    f"no {what} patch in {side} (its cases: {cases_there}); use another seed or "
                    f"add cases with {what} patches"
                )
    return val


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _snapshot_record(
    *,
    per_slide: Sequence[_SlideLabels],
    arrays: dict[int, np.ndarray],
    classes: Sequence[str],
    patch_px: int,
    target_mpp: float,
    stride_px: int,
    min_tissue: float,
    seed: int,
    val_fraction: float,
    max_per_class: int | None,
    balanced: bool,
    project: ProjectDefaults | None = None,
) -> dict[str, Any]:
    """The Dataset's frozen fields, content hash included."""
    project = project or defaults_for(ProjectType.LYMPH_NODE)
    slide_records = []
    versions: dict[str, int] = {}
    cases: dict[str, dict[int, dict]] = {"train": {}, "val": {}}
    for p in per_slide:
        s, rows = p.slide, arrays[p.slide.pk]
        versions.update({str(k): v for k, v in p.labels.annotation_versions.items()})
        counts = np.bincount(rows["fine"].astype(np.int64), minlength=len(classes))
        slide_records.append(
            {
                "id": s.pk,
                "name": s.name,
                "checksum": s.checksum,
                "case_id": s.node.case_id,
                "case": s.node.case.accession_number,
                "node_id": s.node_id,
                "ground_truth": s.node.ground_truth,
                "project_type": s.node.case.project_type,
                "mpp": s.mpp,
                "width": s.width,
                "height": s.height,
                "patch_size_px": p.labels.grid.size,
                "patch_step_px": p.labels.grid.step,
                "patches": len(rows),
                "val_patches": int(rows["val"].sum()),
                "counts": {k: int(counts[i]) for i, k in enumerate(classes) if counts[i]},
                "labels_sha256": _digest(rows),
            }
        )
        for side, mask in (("train", ~rows["val"]), ("val", rows["val"])):
            n = int(mask.sum())
            if n:
                entry = cases[side].setdefault(
                    s.node.case_id,
                    {"id": s.node.case_id, "accession": s.node.case.accession_number, "patches": 0},
                )
                entry["patches"] += n
    all_rows = np.concatenate([arrays[p.slide.pk] for p in per_slide])
    fine_counts = np.bincount(all_rows["fine"].astype(np.int64), minlength=len(classes))
    split: dict[str, Any] = {"by": "case"}
    for side, mask in (("train", ~all_rows["val"]), ("val", all_rows["val"])):
        fc = np.bincount(all_rows["fine"][mask].astype(np.int64), minlength=len(classes))
        bc = np.bincount(all_rows["label"][mask].astype(np.int64), minlength=2)
        split[side] = {
            "cases": sorted(cases[side].values(), key=lambda c: c["id"]),
            "patches": int(mask.sum()),
            "counts": {k: int(fc[i]) for i, k in enumerate(classes) if fc[i]},
            "training_counts": {k: int(bc[i]) for i, k in enumerate(project.training_classes)},
        }
    grid = {
        "patch_px": patch_px,
        "target_mpp": target_mpp,
        "stride_px": stride_px,
        "min_tissue": min_tissue,
    }
    payload = {
        "format": HASH_FORMAT,
        "slides": [{"id": r["id"], "checksum": r["checksum"]} for r in slide_records],
        "annotation_versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0]))),
        "grid": grid,
        "sampling": {"max_per_class": max_per_class, "balanced": balanced},
        "seed": seed,
        "split": {
            "by": "case",
            "val_fraction": val_fraction,
            "train_cases": [c["id"] for c in split["train"]["cases"]],
            "val_cases": [c["id"] for c in split["val"]["cases"]],
        },
        "classes": list(classes),
        "labels": {str(r["id"]): r["labels_sha256"] for r in slide_records},
    }
    if project.key != ProjectType.LYMPH_NODE:  # lymph-node hashes stay as they were before types
        payload["project_type"] = project.key
        payload["training_classes"] = list(project.training_classes)
    content_hash = hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    return {
        "slide_records": slide_records,
        "annotation_versions": payload["annotation_versions"],
        "patch_px": patch_px,
        "target_mpp": target_mpp,
        "stride_px": stride_px,
        "min_tissue": min_tissue,
        "seed": seed,
        "val_fraction": val_fraction,
        "max_per_class": max_per_class,
        "balanced": balanced,
        "classes": list(classes),
        "training_classes": list(project.training_classes),
        "class_counts": {k: int(fine_counts[i]) for i, k in enumerate(classes)},
        "split": split,
        "total_patches": len(all_rows),
        "content_hash": content_hash,
    }


def manifest(dataset: Dataset) -> dict[str, Any]:
    """The snapshot's record as JSON-ready data (what `manifest.json` holds)."""
    fields = [
        "name",
        "slide_records",
        "annotation_versions",
        "patch_px",
        "target_mpp",
        "stride_px",
        "min_tissue",
        "seed",
        "val_fraction",
        "max_per_class",
        "balanced",
        "classes",
        "training_classes",
        "class_counts",
        "split",
        "total_patches",
        "content_hash",
    ]
    return {"id": dataset.pk, **{f: getattr(dataset, f) for f in fields}}


def _write_folder(dataset: Dataset, arrays: dict[int, np.ndarray]) -> None:
    """Write the label arrays and manifest into a temporary folder, then rename it into place.

    A folder already at the target belongs to no committed dataset (SQLite can hand out the id of
    a rolled-back row again), so it is replaced.
    """
    with folder_written_atomically(dataset.folder) as tmp:
        for slide_id, rows in arrays.items():
            np.save(labels_path(tmp, slide_id), rows, allow_pickle=False)
        (tmp / "manifest.json").write_text(json.dumps(manifest(dataset), indent=1))


# ---- opening ------------------------------------------------------------------------------------


class SnapshotPatchDataset:
    """All the patches of a ready snapshot, memory-mapped from its per-slide arrays.

    Like the datasets of `inference.datasets`: `labels` (training labels, int64), `groups` (case
    id per patch), `classes` (training class names), `__getitem__` giving a uint8 (3, P, P) tensor
    and an int, and `get_batch(indices)`. `fine_labels` / `fine_classes` keep the fine class, and
    `slide_ids` / `records` say where each patch came from.
    """

    def __init__(
        self,
        *,
        images: Sequence[np.ndarray],
        records: Sequence[np.ndarray],
        slide_ids: Sequence[int],
        fine_classes: Sequence[str],
        classes: Sequence[str] = TRAINING_CLASSES,
    ) -> None:
        self.images = list(images)
        rows = np.concatenate(records) if records else np.zeros(0, dtype=LABEL_DTYPE)
        self.records = rows
        self.labels = rows["label"].astype(np.int64)
        self.fine_labels = rows["fine"].astype(np.int64)
        self.groups = rows["case"].astype(np.int64)
        self.in_val = rows["val"].astype(bool)
        self.classes = list(classes)
        self.fine_classes = list(fine_classes)
        self.part = (
            np.concatenate([np.full(len(r), i, dtype=np.int64) for i, r in enumerate(records)])
            if records
            else np.zeros(0, dtype=np.int64)
        )
        self.local = (
            np.concatenate([np.arange(len(r), dtype=np.int64) for r in records])
            if records
            else np.zeros(0, dtype=np.int64)
        )
        self.slide_ids = np.asarray(slide_ids, dtype=np.int64)[self.part]

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitem__(self, index: int):
        import torch

        index = int(index)
        patch = np.asarray(self.images[self.part[index]][self.local[index]])
        return torch.from_numpy(np.ascontiguousarray(patch.transpose(2, 0, 1))), int(
            self.labels[index]
        )

    def pixels(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(N, P, P, 3) uint8 of `indices` in that order (each memory map read in sorted order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        p = self.images[0].shape[1] if self.images else 0
        out = np.empty((idx.size, p, p, 3), dtype=np.uint8)
        parts = self.part[idx]
        for part in np.unique(parts):
            where = np.flatnonzero(parts == part)
            local = self.local[idx[where]]
            order = np.argsort(local, kind="stable")
            out[where[order]] = self.images[part][local[order]]
        return out

    def get_batch(self, indices: Sequence[int] | np.ndarray):
        """(N, 3, P, P) uint8 and (N,) int64 tensors for `indices` in that order."""
        import torch

        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        block = self.pixels(idx)
        return (
            torch.from_numpy(np.ascontiguousarray(block.transpose(0, 3, 1, 2))),
            torch.from_numpy(self.labels[idx].copy()),
        )


def load_snapshot_arrays(dataset: Dataset) -> SnapshotPatchDataset:
    """The whole snapshot as one memory-mapped dataset; `DatasetError` if a file is missing or
    does not match the record."""
    folder = dataset.folder
    images, records, ids = [], [], []
    for rec in dataset.slide_records:
        sid = rec["id"]
        lpath, ppath = labels_path(folder, sid), patches_path(folder, sid)
        if not lpath.exists():
            raise DatasetError(f"dataset {dataset.pk}: label file {lpath.name} is missing")
        rows = np.load(lpath, allow_pickle=False)
        if rows.dtype != LABEL_DTYPE or _digest(rows) != rec["labels_sha256"]:
            raise DatasetError(
                f"dataset {dataset.pk}: {lpath.name} does not match the snapshot's record"
            )
        if not ppath.exists():
            raise DatasetError(f"dataset {dataset.pk}: patch file {ppath.name} is missing")
        pixels = np.load(ppath, mmap_mode="r", allow_pickle=False)
        expected = (len(rows), dataset.patch_px, dataset.patch_px, 3)
        if pixels.shape != expected or pixels.dtype != np.uint8:
            raise DatasetError(
                f"dataset {dataset.pk}: {ppath.name} holds {pixels.dtype} {pixels.shape}, "
                f"expected uint8 {expected}"
            )
        images.append(pixels)
        records.append(rows)
        ids.append(sid)
    return SnapshotPatchDataset(
        images=images,
        records=records,
        slide_ids=ids,
        fine_classes=dataset.classes,
        classes=dataset.training_classes or TRAINING_CLASSES,
    )


def open_snapshot(dataset_id: int) -> tuple[Any, Any, str, dict[str, Any]]:
    """(training set, validation set, content hash, summary) of a ready snapshot.

    The sets are `inference.datasets.PatchSubset`s of one memory-mapped `SnapshotPatchDataset`,
    split as recorded at creation (by case).
    """
    from inference.datasets import PatchSubset

    dataset = Dataset.objects.filter(pk=dataset_id).first()
    if dataset is None:
        raise DatasetError(f"no dataset {dataset_id}")
    if dataset.status != Dataset.Status.READY:
        why = f": {dataset.status_reason}" if dataset.status_reason else ""
        raise DatasetError(
            f"dataset {dataset.pk} ({dataset.name}) is {dataset.status}, not ready{why}"
        )
    full = load_snapshot_arrays(dataset)
    train_idx = np.flatnonzero(~full.in_val)
    val_idx = np.flatnonzero(full.in_val)
    train_set, val_set = PatchSubset(full, train_idx), PatchSubset(full, val_idx)
    counts = np.bincount(full.labels, minlength=len(full.classes))
    summary = {
        "kind": "snapshot",
        "id": dataset.pk,
        "name": dataset.name,
        "classes": list(full.classes),
        "counts": {name: int(counts[i]) for i, name in enumerate(full.classes)},
        "fine_classes": list(dataset.classes),
        "fine_counts": dict(dataset.class_counts),
        "train": len(train_set),
        "val": len(val_set),
        "train_cases": [c["id"] for c in dataset.split_cases("train")],
        "val_cases": [c["id"] for c in dataset.split_cases("val")],
        "split": "by case: no case is in both training and validation",
        "grid": {
            "patch_px": dataset.patch_px,
            "target_mpp": dataset.target_mpp,
            "stride_px": dataset.stride_px,
        },
        "content_hash": dataset.content_hash,
    }
    return train_set, val_set, dataset.content_hash, summary
