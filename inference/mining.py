"""Hard-negative mining for the secondary model (seed 002).

The primary model scans the tissue of nodes known to be negative at a coarser stride (20 px for
a 40 px window in the seed); every window it calls tumour there is a false positive, a *hard
negative*. Those patches, balanced against the tumour patches the primary was trained on (plus
any hard-negative annotations, e.g. reviewers' "not tumour" corrections, in that dataset), form
the dataset the secondary model is trained on. The secondary then only ever sees windows the
primary calls tumour (the cascade in :mod:`inference.scoring`).

One admin action runs the chain: a secondary TrainingRun whose dataset source is
``{"kind": "hard-negatives", "primary": <ModelVersion id>, ...}``. Its worker first mines (with
progress), writes the patches as an arrays folder (``images.npy``, ``labels.npy``, ``groups.npy``,
``val.npy``, ``classes.txt``, ``sources.npy``, ``summary.json``) into the run's folder atomically
(a temporary folder renamed into place), then trains on it like any other run. A worker killed
mid-mining leaves no folder and the resumed run mines again; a killed worker during training
reuses the mined folder.

The split: tumour patches keep the side (training or validation) they had for the primary, so
the secondary is validated on patches the primary never trained on; hard negatives are split by
case (no case on both sides), or per patch when they come from one case only (said in the note).
Each side is then balanced to equal counts of both classes by sampling the larger class.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from config.files import folder_written_atomically
from slides.models import Node, Slide

from .records import ModelVersion, Stage

CLASSES = ("non-tumour", "tumour")
DEFAULT_STRIDE = 20
DEFAULT_MAX_PER_CLASS = 20_000
BLOCK = 480  # scan px per read block when cutting the mined windows out of a slide

MiningProgress = Callable[[dict[str, Any]], None]


class MiningError(ValueError):
    """Mining that cannot run or found nothing to train on, with the reason."""


@dataclass
class MinedPatches:
    """Patches of one class with where they came from."""

    images: np.ndarray  # (N, P, P, 3) uint8
    groups: np.ndarray  # (N,) case id
    in_val: np.ndarray  # (N,) bool
    sources: np.ndarray  # (N, 3) int64: slide id, level-0 x, level-0 y (-1 when not from a scan)

    @classmethod
    def empty(cls, p: int) -> MinedPatches:
        return cls(
            np.zeros((0, p, p, 3), np.uint8),
            np.zeros(0, np.int64),
            np.zeros(0, bool),
            np.zeros((0, 3), np.int64),
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, index: np.ndarray) -> MinedPatches:
        return MinedPatches(
            self.images[index], self.groups[index], self.in_val[index], self.sources[index]
        )

    @staticmethod
    def concat(parts: list[MinedPatches], p: int) -> MinedPatches:
        parts = [x for x in parts if len(x)]
        if not parts:
            return MinedPatches.empty(p)
        return MinedPatches(
            np.concatenate([x.images for x in parts]),
            np.concatenate([x.groups for x in parts]),
            np.concatenate([x.in_val for x in parts]),
            np.concatenate([x.sources for x in parts]),
        )


# ---- what to mine ------------------------------------------------------------------------------


def negative_slides(slide_ids: Iterable[int] | None = None, scope=None) -> list[Slide]:
    """The slides to mine: those given, or every slide of a node whose ground truth is negative
    or that a reviewer confirmed negative. Refuses slides of nodes known to hold tumour. Only
    slides of the labs ``scope`` may read (:mod:`inference.scope`; None: every lab): another
    lab's slide is refused as a missing one is."""
    visible = (
        Slide.objects.all() if scope is None else scope.narrow(Slide.objects.all(), "node__case__")
    )
    if slide_ids is not None:
        ids = [int(i) for i in slide_ids]
        slides = list(visible.filter(pk__in=ids).select_related("node"))
        missing = sorted(set(ids) - {s.pk for s in slides})
        if missing:
            raise MiningError(f"no slides with ids {missing}")
        positive = [s for s in slides if s.node.ground_truth == Node.GroundTruth.POSITIVE]
        if positive:
            names = ", ".join(f"{s.pk} ({s.name})" for s in positive)
            raise MiningError(
                f"slides of nodes known to hold tumour cannot be mined for hard negatives: {names}"
            )
        images = [s for s in slides if s.modality != Slide.Modality.SLIDE]
        if images:
            names = ", ".join(f"{s.pk} ({s.name})" for s in images)
            raise MiningError(f"node images (CT, ultrasound) are not whole slides: {names}")
        return slides
    negative_nodes = set(
        Node.objects.filter(ground_truth=Node.GroundTruth.NEGATIVE).values_list("pk", flat=True)
    )
    from review.models import ReviewDecision, ReviewStatus

    # nodes whose current review decision (the last of its chain) is "confirmed negative"
    negative_nodes |= set(
        ReviewDecision.objects.filter(
            next__isnull=True, status=ReviewStatus.CONFIRMED_NEGATIVE
        ).values_list("node_id", flat=True)
    )
    return list(
        visible.filter(node_id__in=negative_nodes, modality=Slide.Modality.SLIDE)
        .exclude(node__ground_truth=Node.GroundTruth.POSITIVE)
        .select_related("node")
        .order_by("pk")
    )


def check_source(source: dict[str, Any], *, scope=None) -> dict[str, Any]:
    """Refuse, before anything is queued, a mining request that cannot run; returns what it
    will mine (primary, slides, tumour source)."""
    from .scoring import Classifier, NotDenseScannable, ScoringError, geometry_for

    try:
        primary = ModelVersion.objects.get(pk=int(source.get("primary", 0)))
    except (ModelVersion.DoesNotExist, TypeError, ValueError) as exc:
        raise MiningError(f"no primary model version {source.get('primary')!r}") from exc
    if primary.stage != Stage.PRIMARY:
        raise MiningError(
            f"model {primary.name} is a {primary.stage} model; mining needs a primary"
        )
    stride = int(source.get("stride", DEFAULT_STRIDE))
    try:
        geometry = geometry_for(primary, stride=stride)
        Classifier.from_version(primary).check_dense(geometry)
    except NotDenseScannable as exc:
        raise MiningError(str(exc)) from exc
    except ScoringError as exc:
        raise MiningError(f"stride {stride}: {exc}") from exc
    slides = negative_slides(source.get("negative_slides"), scope)
    if not slides:
        raise MiningError(
            "no negative nodes to mine: set the ground truth of negative nodes (or confirm them "
            "negative in review), or name the slides"
        )
    no_mpp = [s for s in slides if not s.mpp]
    if no_mpp:
        raise MiningError(
            "slides without µm per pixel cannot be scanned: "
            + ", ".join(f"{s.pk} ({s.name})" for s in no_mpp)
        )
    tumour_source = source.get("tumour_source") or primary.training_run.dataset_source
    if not isinstance(tumour_source, dict) or tumour_source.get("kind") == "hard-negatives":
        raise MiningError("the tumour patches must come from a patch dataset (snapshot or arrays)")
    return {
        "primary": primary,
        "slides": slides,
        "geometry": geometry,
        "tumour_source": tumour_source,
    }


# ---- mining ------------------------------------------------------------------------------------


def mine_slide(slide: Slide, *, classifier, geometry, scale_progress=None) -> MinedPatches:
    """Scan ``slide``'s tissue with the primary at ``geometry``; cut out every window it calls
    tumour (pixels at the scan mpp, exactly what the primary saw)."""
    from .scoring import SlideReader, scan_slide

    result = scan_slide(slide, primary=classifier, geometry=geometry, progress=scale_progress)
    rows, cols = np.nonzero(result.decisions)
    w, s = geometry.window, geometry.stride
    p = w
    if rows.size == 0:
        return MinedPatches.empty(p)
    reader = SlideReader(slide, target_mpp=geometry.target_mpp)
    xs, ys = cols * s, rows * s
    images = np.empty((rows.size, p, p, 3), np.uint8)
    block_r, block_c = ys // BLOCK, xs // BLOCK
    for br, bc in sorted(set(zip(block_r.tolist(), block_c.tolist(), strict=True))):
        inside = np.flatnonzero((block_r == br) & (block_c == bc))
        x0, y0 = int(xs[inside].min()), int(ys[inside].min())
        x1, y1 = int(xs[inside].max()) + w, int(ys[inside].max()) + w
        region = reader(x0, y0, x1 - x0, y1 - y0)
        for i in inside:
            images[i] = region[ys[i] - y0 : ys[i] - y0 + w, xs[i] - x0 : xs[i] - x0 + w]
    sources = np.column_stack(
        [
            np.full(rows.size, slide.pk, np.int64),
            np.round(xs * result.scale).astype(np.int64),
            np.round(ys * result.scale).astype(np.int64),
        ]
    )
    return MinedPatches(
        images=images,
        groups=np.full(rows.size, slide.node.case_id, np.int64),
        in_val=np.zeros(rows.size, bool),
        sources=sources,
    )


def _tumour_and_annotated_negatives(tumour_source: dict[str, Any], p: int, scope=None):
    """Tumour patches of the primary's dataset (keeping their split) and the hard-negative
    annotations in it (fine classes of kind hard-negative, e.g. reviewer corrections)."""
    from annotations.models import LabelClass

    from .jobs import load_dataset
    from .scope import UNRESTRICTED

    loaded = load_dataset(tumour_source, scope=scope if scope is not None else UNRESTRICTED)
    hard_kinds = set(
        LabelClass.objects.filter(kind=LabelClass.Kind.HARD_NEGATIVE).values_list("key", flat=True)
    )
    tumour_parts, negative_parts = [], []
    for subset, is_val in ((loaded.train, False), (loaded.val, True)):
        base = getattr(subset, "dataset", subset)
        index = np.asarray(getattr(subset, "indices", np.arange(len(subset))), np.int64)
        labels = np.asarray(base.labels)[index]
        classes = [str(c).lower() for c in base.classes]
        positive = classes.index("tumour") if "tumour" in classes else 1
        groups = getattr(base, "groups", None)
        fine = getattr(base, "fine_labels", None)
        fine_classes = list(getattr(base, "fine_classes", []))
        hard = [i for i, key in enumerate(fine_classes) if key in hard_kinds]
        for wanted, parts in (
            (labels == positive, tumour_parts),
            (
                np.isin(np.asarray(fine)[index], hard) if fine is not None and hard else None,
                negative_parts,
            ),
        ):
            if wanted is None or not wanted.any():
                continue
            chosen = index[wanted]
            images, _ = (
                base.get_batch(chosen) if hasattr(base, "get_batch") else _stack(base, chosen)
            )
            images = np.ascontiguousarray(np.asarray(images).transpose(0, 2, 3, 1))
            if images.shape[1:3] != (p, p):
                raise MiningError(
                    f"the tumour patches are {images.shape[1]} px but the primary scans {p} px windows"
                )
            n = len(chosen)
            parts.append(
                MinedPatches(
                    images=images.astype(np.uint8, copy=False),
                    groups=(
                        np.asarray(groups)[chosen].astype(np.int64)
                        if groups is not None
                        else np.full(n, -1, np.int64)
                    ),
                    in_val=np.full(n, is_val),
                    sources=np.full((n, 3), -1, np.int64),
                )
            )
    return MinedPatches.concat(tumour_parts, p), MinedPatches.concat(negative_parts, p), loaded


def _stack(base, indices: np.ndarray):
    items = [base[int(i)] for i in indices]
    return np.stack([np.asarray(t) for t, _ in items]), None


def split_by_case(groups: np.ndarray, *, val_fraction: float, seed: int) -> tuple[np.ndarray, str]:
    """Validation mask for mined patches: whole cases moved to validation until it holds
    ``val_fraction`` of the patches; per patch when there is a single case."""
    rng = np.random.default_rng(seed)
    n = groups.size
    cases = np.unique(groups)
    if cases.size >= 2:
        val = np.zeros(n, bool)
        for case in cases[rng.permutation(cases.size)]:
            if val.sum() >= val_fraction * n:
                break
            val |= groups == case
        if val.all():
            val &= groups != groups[0]
        return (
            val,
            f"hard negatives split by case ({np.unique(groups[val]).size} of {cases.size} in validation)",
        )
    val = np.zeros(n, bool)
    val[rng.permutation(n)[: int(round(val_fraction * n))]] = True
    return val, "hard negatives from one case only: split per patch (validation is optimistic)"


def balance(
    negatives: MinedPatches, tumour: MinedPatches, *, max_per_class: int, seed: int
) -> tuple[MinedPatches, MinedPatches]:
    """Equal counts of both classes on each side (training, validation), at most
    ``max_per_class`` per class overall, by sampling the larger class without replacement."""
    rng = np.random.default_rng(seed)
    keep_neg, keep_tum = [], []
    total = len(negatives) + len(tumour)
    for side in (False, True):
        neg = np.flatnonzero(negatives.in_val == side)
        tum = np.flatnonzero(tumour.in_val == side)
        k = min(neg.size, tum.size)
        share = (neg.size + tum.size) / max(total, 1)
        k = min(k, max(1, int(max_per_class * share))) if k else 0
        keep_neg.append(np.sort(rng.choice(neg, k, replace=False)) if k else neg[:0])
        keep_tum.append(np.sort(rng.choice(tum, k, replace=False)) if k else tum[:0])
    return negatives.take(np.concatenate(keep_neg)), tumour.take(np.concatenate(keep_tum))


def mine(
    source: dict[str, Any], out: Path, *, progress: MiningProgress | None = None, scope=None
) -> dict[str, Any]:
    """Run the whole mining step for ``source`` and write the balanced arrays folder to ``out``
    (atomically). Returns the summary (also written as ``summary.json``). Idempotent: a complete
    folder already at ``out`` is reused."""
    out = Path(out)
    done = out / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    checked = check_source(source, scope=scope)
    from .scoring import Classifier

    primary: ModelVersion = checked["primary"]
    geometry = checked["geometry"]
    slides: list[Slide] = checked["slides"]
    seed = int(source.get("seed", 0))
    val_fraction = float(source.get("val_fraction", 0.3))
    max_per_class = int(source.get("max_per_class", DEFAULT_MAX_PER_CLASS))
    classifier = Classifier.from_version(primary)
    p = geometry.window

    def report(**fields: Any) -> None:
        if progress is not None:
            progress({"phase": "mining", "slides_total": len(slides), **fields})

    mined: list[MinedPatches] = []
    windows_called = 0
    for i, slide in enumerate(slides):
        report(slides_done=i, hard_negatives=windows_called, slide=slide.name)

        def tile_progress(
            done_tiles: int, total_tiles: int, i=i, name=slide.name, called=windows_called
        ) -> None:
            report(
                slides_done=i,
                hard_negatives=called,
                slide=name,
                fraction=round((i + done_tiles / max(total_tiles, 1)) / len(slides), 4),
            )

        patches = mine_slide(
            slide, classifier=classifier, geometry=geometry, scale_progress=tile_progress
        )
        windows_called += len(patches)
        mined.append(patches)
    report(slides_done=len(slides), hard_negatives=windows_called, fraction=1.0)
    scanned = MinedPatches.concat(mined, p)
    tumour, annotated, _loaded = _tumour_and_annotated_negatives(checked["tumour_source"], p, scope)
    if len(scanned):
        scanned.in_val, split_note = split_by_case(
            scanned.groups, val_fraction=val_fraction, seed=seed
        )
    else:
        split_note = "no hard negatives found by the scan"
    negatives = MinedPatches.concat([scanned, annotated], p)
    if len(negatives) < 2:
        raise MiningError(
            f"the primary {primary.name} called {len(scanned)} window(s) of {len(slides)} negative "
            "slide(s) tumour at stride "
            f"{geometry.stride}: too few hard negatives to train a secondary model (at least two "
            "are needed); the primary makes no such mistakes on these nodes"
        )
    if len(tumour) < 2:
        raise MiningError("the primary's dataset holds fewer than two tumour patches")
    negatives, tumour = balance(negatives, tumour, max_per_class=max_per_class, seed=seed)
    for side, name in ((False, "training"), (True, "validation")):
        n_neg = int((negatives.in_val == side).sum())
        if n_neg < 1:
            raise MiningError(
                f"no hard negatives could be balanced into {name}: {split_note}; mine more "
                "negative nodes (from at least two cases) or add hard-negative annotations"
            )
    both = MinedPatches.concat([negatives, tumour], p)
    labels = np.concatenate([np.zeros(len(negatives), np.int64), np.ones(len(tumour), np.int64)])
    summary = {
        "kind": "hard-negatives",
        "primary": primary.pk,
        "primary_name": primary.name,
        "stride": geometry.stride,
        "window": geometry.window,
        "target_mpp": geometry.target_mpp,
        "slides": [s.pk for s in slides],
        "windows_called_tumour": windows_called,
        "annotated_hard_negatives": len(annotated),
        "hard_negatives": len(negatives),
        "tumour": len(tumour),
        "train": int((~both.in_val).sum()),
        "val": int(both.in_val.sum()),
        "split": split_note + "; tumour patches keep the primary's split",
        "seed": seed,
        "grid": {"patch_px": p, "target_mpp": geometry.target_mpp},
    }
    _write_atomically(out, both, labels, summary)
    return summary


def _write_atomically(out: Path, patches: MinedPatches, labels: np.ndarray, summary: dict) -> None:
    with folder_written_atomically(out) as tmp:
        np.save(tmp / "images.npy", patches.images, allow_pickle=False)
        np.save(tmp / "labels.npy", labels, allow_pickle=False)
        np.save(tmp / "groups.npy", patches.groups, allow_pickle=False)
        np.save(tmp / "val.npy", patches.in_val, allow_pickle=False)
        np.save(tmp / "sources.npy", patches.sources, allow_pickle=False)
        (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1))  # written last


# ---- the one admin action ----------------------------------------------------------------------


def launch_secondary_training(
    *,
    primary: ModelVersion,
    negative_slides: list[int] | None = None,
    tumour_source: dict[str, Any] | None = None,
    stride: int = DEFAULT_STRIDE,
    max_per_class: int = DEFAULT_MAX_PER_CLASS,
    seed: int = 0,
    architecture: str | None = None,
    recipe: dict[str, Any] | None = None,
    from_primary: bool = True,
    user=None,
    enqueue: bool = True,
):
    """Queue the chain for ``primary``: mine hard negatives on the negative nodes, balance them
    with the primary's tumour patches, train the secondary. The secondary defaults to the
    primary's architecture and recipe (so it scans densely like the primary) and, unless
    ``from_primary=False`` or the recipe names another network (``model_kwargs``), starts from
    the primary's weights. Refusals are
    :class:`inference.jobs.TrainingRequestError` with the reason, before anything is queued."""
    from .jobs import launch_training

    source: dict[str, Any] = {
        "kind": "hard-negatives",
        "primary": primary.pk,
        "stride": int(stride),
        "max_per_class": int(max_per_class),
        "seed": int(seed),
    }
    if negative_slides is not None:
        source["negative_slides"] = [int(i) for i in negative_slides]
    if tumour_source is not None:  # default: the dataset the primary was trained on
        source["tumour_source"] = tumour_source
    merged = {**(primary.training_run.recipe or {}), **(recipe or {})}
    if from_primary and not {"pretrained_weights", "model_kwargs"} & set(recipe or {}):
        # start from the primary's weights: the secondary only has to learn what separates the
        # primary's false positives from tumour (the seed started from ImageNet weights instead)
        merged["pretrained_weights"] = primary.weights_path
    return launch_training(
        dataset_source=source,
        architecture=architecture or primary.architecture,
        stage=Stage.SECONDARY,
        recipe=merged,
        user=user,
        enqueue=enqueue,
    )
