"""Patch labels derived from annotations (never edited by hand), as in seed 002.

The grid: square patches of `patch_px` px at `target_mpp` µm/px (default 40 px at 1.0 µm/px),
placed every `stride_px` px (= `patch_px` for labelling), mapped to level-0 px through the slide's
mpp and rounded to whole level-0 px. Patch (row, col) covers level-0 pixels
x0 = col * step ... x0 + size - 1 (and likewise y). A slide without mpp is refused.

The rules, in order of precedence:
1. background (tissue fraction of the patch below `min_tissue`, from `tissue.tissue_mask`) and any
   pixel under an exclude polygon (artefact, ink, out of focus) drop the patch;
2. any tumour pixel makes the patch tumour (every tumour-kind class labels as the first one);
3. any pixel of a hard-negative class keeps that class (the lowest `order` wins if several);
4. the rest of the tissue is non-tumour.
A slide whose node is negative contributes its whole tissue this way (tumour polygons on it are a
contradiction and refused). A slide of any other node needs at least one non-exclude annotation:
an unannotated slide of a positive or unknown node says nothing about where the tumour is.

"Pixel" means a level-0 pixel whose centre lies inside the polygon. Rasterisation is an exact,
vectorised scanline in numpy: every edge is intersected with the centre line of every pixel row
it crosses, crossings are sorted and paired per polygon (even-odd, so holes work), each span of
pixel centres becomes a rectangle of patches, and the rectangles are summed into the patch grid
through a 2-D difference array. The work grows with the polygons' outlines (edges × rows), not
with their area or the number of patches, and there is no per-patch geometry test.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from slides.models import Node, Slide

from .geometry import rings_of
from .models import Annotation, LabelClass
from .tissue import TissueMask, tissue_mask

Shape = list[
    np.ndarray
]  # closed rings (exterior first, then holes) of one polygon, (n + 1, 2) each

MAX_CROSSINGS_PER_BATCH = 4_000_000


class PatchLabelError(ValueError):
    """Patch labels cannot be derived for a slide; the message says why."""


@dataclass(frozen=True)
class PatchGrid:
    """Where the patches of a slide lie, in level-0 px."""

    patch_px: int
    target_mpp: float
    stride_px: int
    size: int  # patch side, level-0 px
    step: int  # stride, level-0 px
    n_rows: int
    n_cols: int

    def x0(self, cols: np.ndarray) -> np.ndarray:
        return cols.astype(np.int64) * self.step

    def y0(self, rows: np.ndarray) -> np.ndarray:
        return rows.astype(np.int64) * self.step


@dataclass(frozen=True)
class PatchLabels:
    """The labelled patches of one slide: parallel arrays, one entry per kept patch."""

    slide_id: int
    grid: PatchGrid
    classes: tuple[str, ...]  # label index → label class key
    row: np.ndarray
    col: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    label: np.ndarray
    annotation_versions: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)


def patch_grid(
    slide: Slide, *, patch_px: int = 40, target_mpp: float = 1.0, stride_px: int | None = None
) -> PatchGrid:
    """The patch grid of a slide; `PatchLabelError` if its mpp is unknown."""
    mpp = slide.mpp
    if not mpp:
        raise PatchLabelError(
            f"slide {slide.pk} ({slide.name}) has no µm per pixel, so a {patch_px} px patch at "
            f"{target_mpp} µm/px has no size on it: set the slide's mpp first"
        )
    stride_px = patch_px if stride_px is None else stride_px
    if patch_px <= 0 or stride_px <= 0 or target_mpp <= 0:
        raise PatchLabelError("patch size, stride and target mpp must be positive")
    size = max(1, round(patch_px * target_mpp / mpp))
    step = max(1, round(stride_px * target_mpp / mpp))

    def count(extent: int) -> int:
        return 0 if extent < size else (extent - size) // step + 1

    return PatchGrid(
        patch_px, target_mpp, stride_px, size, step, count(slide.height), count(slide.width)
    )


# ---- rasterisation ------------------------------------------------------------------------------


def coverage(shapes: Iterable[Shape], grid: PatchGrid) -> np.ndarray:
    """(n_rows, n_cols) bool: which patches hold a pixel centre inside any of `shapes`."""
    diff = np.zeros((grid.n_rows + 1) * (grid.n_cols + 1), dtype=np.int64)
    batch: list[Shape] = []
    pending = 0
    for shape in shapes:
        batch.append(shape)
        pending += sum(int(np.abs(np.diff(r[:, 1])).sum()) + len(r) for r in shape)
        if pending > MAX_CROSSINGS_PER_BATCH:
            diff += _rectangles(batch, grid)
            batch, pending = [], 0
    if batch:
        diff += _rectangles(batch, grid)
    counts = diff.reshape(grid.n_rows + 1, grid.n_cols + 1).cumsum(axis=0).cumsum(axis=1)
    return counts[: grid.n_rows, : grid.n_cols] > 0


def _rectangles(shapes: Sequence[Shape], grid: PatchGrid) -> np.ndarray:
    """Difference-array increments (flattened (n_rows + 1) × (n_cols + 1)) of the shapes' spans."""
    n_rows, n_cols, size, step = grid.n_rows, grid.n_cols, grid.size, grid.step
    width = (n_cols - 1) * step + size if n_cols else 0  # level-0 extent the grid covers
    height = (n_rows - 1) * step + size if n_rows else 0
    out = np.zeros((n_rows + 1) * (n_cols + 1), dtype=np.int64)
    if not n_rows or not n_cols or not shapes:
        return out
    edges = []
    for s, shape in enumerate(shapes):
        for ring in shape:
            e = np.empty((len(ring) - 1, 5))
            e[:, 0], e[:, 1], e[:, 2], e[:, 3] = (
                ring[:-1, 0],
                ring[:-1, 1],
                ring[1:, 0],
                ring[1:, 1],
            )
            e[:, 4] = s
            edges.append(e)
    x_a, y_a, x_b, y_b, shape_id = np.concatenate(edges).T
    # Pixel row r (centre r + 0.5) crosses an edge when min(y) <= r + 0.5 < max(y): half-open,
    # so a vertex on a centre line is counted once and every row sees an even number of crossings.
    lo, hi = np.minimum(y_a, y_b), np.maximum(y_a, y_b)
    first = np.ceil(lo - 0.5).astype(np.int64)
    stop = np.ceil(hi - 0.5).astype(np.int64)
    np.clip(first, 0, height, out=first)
    np.clip(stop, 0, height, out=stop)
    n = np.maximum(stop - first, 0)
    keep = n > 0
    x_a, y_a, x_b, y_b, shape_id, first, n = (
        v[keep] for v in (x_a, y_a, x_b, y_b, shape_id, first, n)
    )
    total = int(n.sum())
    if total == 0:
        return out
    edge = np.repeat(np.arange(len(n)), n)
    starts = np.cumsum(n) - n
    row = first[edge] + (np.arange(total) - starts[edge])
    yc = row + 0.5
    t = (yc - y_a[edge]) / (y_b[edge] - y_a[edge])
    x = x_a[edge] + t * (x_b[edge] - x_a[edge])
    sid = shape_id[edge]
    order = np.lexsort((x, row, sid))
    x, row, sid = x[order], row[order], sid[order]
    if len(x) % 2 or (row[0::2] != row[1::2]).any() or (sid[0::2] != sid[1::2]).any():
        raise PatchLabelError("a polygon's rings are not closed; cannot rasterise it")
    # Pixels whose centre i + 0.5 lies in [x_left, x_right): i from ceil(x_l - .5) to ceil(x_r - .5) - 1.
    first_px = np.ceil(x[0::2] - 0.5).astype(np.int64)
    last_px = np.ceil(x[1::2] - 0.5).astype(np.int64) - 1
    row = row[0::2]
    np.clip(first_px, 0, None, out=first_px)
    np.clip(last_px, None, width - 1, out=last_px)
    ok = first_px <= last_px
    first_px, last_px, row = first_px[ok], last_px[ok], row[ok]
    # Patch k covers pixels k*step .. k*step + size - 1: pixel i lies in patches
    # ceil((i - size + 1) / step) .. floor(i / step).
    c0 = np.clip(-((size - 1 - first_px) // step), 0, n_cols - 1)
    c1 = np.clip(last_px // step, 0, n_cols - 1)
    r0 = np.clip(-((size - 1 - row) // step), 0, n_rows - 1)
    r1 = np.clip(row // step, 0, n_rows - 1)
    ok = (c0 <= c1) & (r0 <= r1)
    c0, c1, r0, r1 = c0[ok], c1[ok], r0[ok], r1[ok]
    stride = n_cols + 1
    cells = len(out)
    out += np.bincount(r0 * stride + c0, minlength=cells)
    out -= np.bincount(r0 * stride + c1 + 1, minlength=cells)
    out -= np.bincount((r1 + 1) * stride + c0, minlength=cells)
    out += np.bincount((r1 + 1) * stride + c1 + 1, minlength=cells)
    return out


def shapes_of(geometries: Iterable[dict]) -> list[Shape]:
    """Closed rings of every polygon (every part of a multipolygon) of stored geometries."""
    return [rings for g in geometries for rings in rings_of(g)]


# ---- tissue -------------------------------------------------------------------------------------


def tissue_fraction(mask: TissueMask, grid: PatchGrid) -> np.ndarray:
    """(n_rows, n_cols) share of each patch's box that the mask calls tissue.

    Each patch box is mapped onto mask pixels (rounded, at least one) and summed through an
    integral image: four look-ups per patch, whatever the stride.
    """
    m = np.asarray(mask.mask, dtype=bool)
    mh, mw = m.shape
    if not grid.n_rows or not grid.n_cols or not m.size:
        return np.zeros((grid.n_rows, grid.n_cols))
    integral = np.zeros((mh + 1, mw + 1), dtype=np.int64)
    integral[1:, 1:] = m.cumsum(axis=0).cumsum(axis=1)

    def spans(n: int, extent: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.arange(n, dtype=np.float64) * grid.step
        lo = np.clip(np.round(start * cells / extent).astype(np.int64), 0, cells - 1)
        hi = np.clip(np.round((start + grid.size) * cells / extent).astype(np.int64), lo + 1, cells)
        return lo, hi

    y0, y1 = spans(grid.n_rows, mask.height, mh)
    x0, x1 = spans(grid.n_cols, mask.width, mw)
    total = (
        integral[np.ix_(y1, x1)]
        - integral[np.ix_(y0, x1)]
        - integral[np.ix_(y1, x0)]
        + integral[np.ix_(y0, x0)]
    )
    return total / ((y1 - y0)[:, None] * (x1 - x0)[None, :])


# ---- derivation ---------------------------------------------------------------------------------


def derive_patch_labels(
    slide: Slide,
    *,
    patch_px: int = 40,
    target_mpp: float = 1.0,
    stride_px: int | None = None,
    min_tissue: float = 0.5,
    mask: TissueMask | None = None,
) -> PatchLabels:
    """Label the patches of a slide from its live annotations and its tissue mask."""
    grid = patch_grid(slide, patch_px=patch_px, target_mpp=target_mpp, stride_px=stride_px)
    classes = list(LabelClass.objects.order_by("order", "key"))
    kinds = {c.key: c.kind for c in classes}
    annotations = list(
        Annotation.objects.filter(slide=slide, deleted_at__isnull=True)
        .select_related("label_class")
        .only("id", "version", "geometry", "label_class", "label_class__key", "label_class__kind")
    )
    negative = slide.node.ground_truth == Node.GroundTruth.NEGATIVE
    tumour_rows = [a for a in annotations if a.label_class.kind == LabelClass.Kind.TUMOUR]
    if negative and tumour_rows:
        raise PatchLabelError(
            f"slide {slide.pk} ({slide.name}) belongs to a node whose ground truth is negative but has "
            f"{len(tumour_rows)} tumour annotation(s): correct the ground truth or the annotations"
        )
    if not negative and not any(a.label_class.kind != LabelClass.Kind.EXCLUDE for a in annotations):
        raise PatchLabelError(
            f"slide {slide.pk} ({slide.name}) has no annotations and its node is not negative: "
            "there is nothing to tell tumour from non-tumour"
        )
    label_keys = tuple(c.key for c in classes if c.kind != LabelClass.Kind.EXCLUDE)
    index = {key: i for i, key in enumerate(label_keys)}

    def covered(keys: Iterable[str]) -> np.ndarray:
        wanted = set(keys)
        return coverage(
            shapes_of(a.geometry for a in annotations if a.label_class.key in wanted), grid
        )

    by_kind = {kind: [k for k, v in kinds.items() if v == kind] for kind in LabelClass.Kind.values}
    tissue = tissue_fraction(mask or tissue_mask(slide), grid) >= min_tissue
    keep = tissue & ~covered(by_kind[LabelClass.Kind.EXCLUDE])
    non_tumour = next(c.key for c in classes if c.kind == LabelClass.Kind.NON_TUMOUR)
    tumour = next(c.key for c in classes if c.kind == LabelClass.Kind.TUMOUR)
    label = np.full((grid.n_rows, grid.n_cols), index[non_tumour], dtype=np.int16)
    present = {a.label_class.key for a in annotations}
    for cls in reversed(
        [c for c in classes if c.kind == LabelClass.Kind.HARD_NEGATIVE and c.key in present]
    ):
        label[covered([cls.key])] = index[cls.key]  # lowest order written last, so it wins
    label[covered(by_kind[LabelClass.Kind.TUMOUR])] = index[tumour]
    rows, cols = np.nonzero(keep)
    return PatchLabels(
        slide_id=slide.pk,
        grid=grid,
        classes=label_keys,
        row=rows.astype(np.int32),
        col=cols.astype(np.int32),
        x0=grid.x0(cols),
        y0=grid.y0(rows),
        label=label[rows, cols],
        annotation_versions={a.pk: a.version for a in annotations},
    )


def summarise(labels: PatchLabels) -> dict[str, int]:
    """Patches per label class key (every class listed, zeros included)."""
    counts = np.bincount(labels.label.astype(np.int64), minlength=len(labels.classes))
    return {key: int(counts[i]) for i, key in enumerate(labels.classes)}
