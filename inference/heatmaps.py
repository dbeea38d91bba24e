"""Heat maps: the compact raster on disk, its HeatMap row, node scores, overlay tiles and the
outline of the regions at or above the threshold.

The raster holds one uint8 per stride cell: how many windows covering the cell the cascade called
tumour (0 ... 16 for a 40 px window at stride 10), so score = count / 16 exactly. It is written to
``RESULTS_DIR/heatmaps/run-<run>/slide-<slide>.npz`` through a temporary file in the same folder
(a dot-name ending ``.tmp``) that is fsynced and then renamed into place; the HeatMap row is
created only after the rename, in a transaction. A worker killed at any point therefore leaves
either no file under the final name, or a complete file (possibly without a row, which the next
attempt replaces); never a partial heat map.
"""

from __future__ import annotations

import io
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings
from django.db import transaction

from .records import HeatMap, ModelVersion, NodeScore, ScoringRun

if TYPE_CHECKING:  # pragma: no cover
    from slides.models import Node, Slide

    from .scoring import ScanResult

RASTER_FORMAT = "nodescope-heatmap/1"
#: seed 002's node threshold, used for outlines only when the model has no locked threshold
PAPER_THRESHOLD = 0.6875
#: matplotlib's viridis at nine stops (perceptually uniform, readable over H&E purple and pink)
VIRIDIS = (
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
)


def heatmap_dir() -> Path:
    return Path(settings.RESULTS_DIR) / "heatmaps"


def raster_path_for(*, run_id: int | None, slide_id: int) -> Path:
    folder = f"run-{run_id}" if run_id is not None else "adhoc"
    return heatmap_dir() / folder / f"slide-{slide_id}.npz"


# ---- the raster ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Raster:
    """A heat map raster: ``counts`` per cell, score = counts / denominator."""

    counts: np.ndarray
    denominator: int
    stride_px: float
    window_px: float
    tissue: np.ndarray | None = None

    @property
    def scores(self) -> np.ndarray:
        return self.counts.astype(np.float32) / self.denominator

    def count_at_or_above(self, threshold: float) -> int:
        """The smallest count whose score is >= ``threshold`` (exact on the 1/denominator grid)."""
        return max(0, int(np.ceil(threshold * self.denominator - 1e-9)))


def _temporary_for(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def remove_temporaries(path: Path) -> int:
    """Delete leftovers of interrupted writes of ``path`` (a worker killed mid-write)."""
    removed = 0
    if path.parent.is_dir():
        for leftover in path.parent.glob(f".{path.stem}.*.tmp"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def write_raster(
    path: Path,
    *,
    counts: np.ndarray,
    denominator: int,
    stride_px: float,
    window_px: float,
    tissue: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the raster atomically: temporary file, fsync, rename (then fsync the folder)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = np.asarray(counts)
    if counts.dtype != np.uint8 or counts.ndim != 2:
        raise ValueError("counts must be a 2-D uint8 array")
    arrays: dict[str, np.ndarray] = {
        "format": np.array(RASTER_FORMAT),
        "counts": counts,
        "denominator": np.int64(denominator),
        "stride_px": np.float64(stride_px),
        "window_px": np.float64(window_px),
        "meta": np.array(json.dumps(meta or {})),
    }
    if tissue is not None:
        arrays["tissue"] = np.asarray(tissue, dtype=bool)
    tmp = _temporary_for(path)
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems cannot fsync a folder
        pass
    return path


def read_raster(path: str | Path) -> Raster:
    with np.load(Path(path), allow_pickle=False) as data:
        if str(data["format"]) != RASTER_FORMAT:
            raise ValueError(f"{path} is not a NodeScope heat map")
        return Raster(
            counts=data["counts"],
            denominator=int(data["denominator"]),
            stride_px=float(data["stride_px"]),
            window_px=float(data["window_px"]),
            tissue=data.get("tissue", None),
        )


class _RasterCache:
    """Recently used rasters per process (heat maps never change once written)."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._items: OrderedDict[str, Raster] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> Raster:
        with self._lock:
            hit = self._items.get(path)
            if hit is not None:
                self._items.move_to_end(path)
                return hit
        raster = read_raster(path)
        with self._lock:
            self._items[path] = raster
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return raster

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


raster_cache = _RasterCache()


def load_raster(heatmap: HeatMap) -> Raster:
    return raster_cache.get(heatmap.raster_path)


# ---- rows ----------------------------------------------------------------------------------


def write_heatmap_file(
    *,
    slide: Slide,
    scan: ScanResult,
    model_version: ModelVersion,
    secondary_version: ModelVersion | None = None,
    scoring_run: ScoringRun | None = None,
    path: Path | None = None,
) -> Path:
    """Write a scan's raster atomically (removing leftovers of an interrupted earlier write)."""
    path = path or raster_path_for(run_id=getattr(scoring_run, "pk", None), slide_id=slide.pk)
    remove_temporaries(path)
    return write_raster(
        path,
        counts=scan.counts,
        denominator=scan.geometry.denominator,
        stride_px=scan.stride_px,
        window_px=scan.window_px,
        tissue=scan.tissue_cells,
        meta={
            "slide": slide.pk,
            "model_version": model_version.pk,
            "secondary_version": getattr(secondary_version, "pk", None),
            "scoring_run": getattr(scoring_run, "pk", None),
            **scan.summary(),
        },
    )


def create_heatmap_row(
    *,
    slide: Slide,
    scan: ScanResult,
    path: Path,
    model_version: ModelVersion,
    secondary_version: ModelVersion | None = None,
    scoring_run: ScoringRun | None = None,
) -> HeatMap:
    """The HeatMap row of a raster already in place (call inside the caller's transaction)."""
    max_x, max_y = scan.max_location()
    return HeatMap.objects.create(
        slide=slide,
        model_version=model_version,
        secondary_version=secondary_version,
        scoring_run=scoring_run,
        raster_path=str(path),
        stride_px=scan.stride_px,
        window_px=scan.window_px,
        rows=int(scan.counts.shape[0]),
        cols=int(scan.counts.shape[1]),
        max_score=scan.max_score,
        max_x=max_x,
        max_y=max_y,
    )


def save_heatmap(
    *,
    slide: Slide,
    scan: ScanResult,
    model_version: ModelVersion,
    secondary_version: ModelVersion | None = None,
    scoring_run: ScoringRun | None = None,
    path: Path | None = None,
) -> HeatMap:
    """Write the raster atomically, then create its HeatMap row (only once the file is whole)."""
    versions = {"model_version": model_version, "secondary_version": secondary_version}
    path = write_heatmap_file(
        slide=slide, scan=scan, scoring_run=scoring_run, path=path, **versions
    )
    with transaction.atomic():
        return create_heatmap_row(
            slide=slide, scan=scan, path=path, scoring_run=scoring_run, **versions
        )


def screened_positive(score: float, threshold: float | None) -> bool | None:
    """score >= threshold (a tie is positive); None without a threshold."""
    if threshold is None:
        return None
    return bool(score >= threshold - 1e-9)


def record_node_score(
    *,
    node: Node,
    heatmaps: list[HeatMap],
    model_version: ModelVersion,
    scoring_run: ScoringRun | None = None,
    threshold: float | None = None,
) -> NodeScore:
    """Node score = the maximum pixel score over its slides' heat maps, with where it lies."""
    if not heatmaps:
        raise ValueError(f"node {node.pk} has no heat map to score")
    best = max(heatmaps, key=lambda h: (h.max_score, -h.pk))
    return NodeScore.objects.create(
        node=node,
        model_version=model_version,
        scoring_run=scoring_run,
        score=best.max_score,
        threshold=threshold,
        screened_positive=screened_positive(best.max_score, threshold),
        max_heatmap=best,
        max_x=best.max_x,
        max_y=best.max_y,
    )


# ---- overlay tiles -------------------------------------------------------------------------


def colour_table(denominator: int) -> np.ndarray:
    """RGBA per count 0 ... denominator: transparent at 0 (score below 1/16), viridis above, with
    alpha rising with the score so that faint evidence stays faint."""
    stops = np.asarray(VIRIDIS, dtype=np.float64)
    table = np.zeros((denominator + 1, 4), np.uint8)
    positions = np.linspace(0.0, 1.0, len(stops))
    for count in range(1, denominator + 1):
        t = (count - 1) / max(1, denominator - 1)
        rgb = [np.interp(t, positions, stops[:, k]) for k in range(3)]
        alpha = 255 * (0.45 + 0.55 * count / denominator)
        table[count] = [round(v) for v in (*rgb, alpha)]
    return table


def legend(denominator: int = 16) -> list[dict[str, Any]]:
    """The colour table as JSON for the viewer's legend."""
    table = colour_table(denominator)
    return [
        {"score": count / denominator, "rgba": [int(v) for v in table[count]]}
        for count in range(1, denominator + 1)
    ]


def tile_box(
    *,
    width: int,
    height: int,
    levels: int,
    tile_width: int,
    tile_height: int,
    z: int,
    x: int,
    y: int,
) -> tuple[int, int, int] | None:
    """(scale, tile px width, tile px height) of large-image tile z/x/y, or None if outside."""
    if not 0 <= z < levels or x < 0 or y < 0:
        return None
    scale = 2 ** (levels - 1 - z)
    level_w, level_h = -(-width // scale), -(-height // scale)
    if x * tile_width >= level_w or y * tile_height >= level_h:
        return None
    return (
        scale,
        min(tile_width, level_w - x * tile_width),
        min(tile_height, level_h - y * tile_height),
    )


def render_tile(
    raster: Raster,
    *,
    width: int,
    height: int,
    levels: int,
    tile_width: int,
    tile_height: int,
    z: int,
    x: int,
    y: int,
) -> bytes | None:
    """PNG (RGBA) of overlay tile z/x/y on the slide's own tile grid; None if outside the pyramid.

    Zoomed in (a cell spans several screen pixels) each pixel shows the cell under its centre, so
    cells stay crisp; zoomed out (a pixel spans several cells) each pixel shows the maximum of the
    cells it covers, so a small focus of high scores never disappears from the overview."""
    from PIL import Image

    box = tile_box(
        width=width,
        height=height,
        levels=levels,
        tile_width=tile_width,
        tile_height=tile_height,
        z=z,
        x=x,
        y=y,
    )
    if box is None:
        return None
    scale, tw, th = box
    counts = tile_counts(raster, x0=x * tile_width, y0=y * tile_height, w=tw, h=th, scale=scale)
    rgba = colour_table(raster.denominator)[counts]
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, format="PNG", compress_level=3)
    return out.getvalue()


def _max_pool_axis(values: np.ndarray, edges: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Max of ``values`` over the cell ranges [edges[i], edges[i+1]) along ``axis`` (strictly
    increasing edges), for the pixels whose range starts inside the raster; and their number."""
    n_cells = values.shape[axis]
    n = int(np.searchsorted(edges[:-1], n_cells, side="left"))
    if n == 0:
        shape = list(values.shape)
        shape[axis] = 0
        return np.zeros(shape, values.dtype), 0
    lo, hi = int(edges[0]), int(min(edges[n], n_cells))
    block = np.take(values, np.arange(lo, hi), axis=axis)
    return np.maximum.reduceat(block, edges[:n] - lo, axis=axis), n


def tile_counts(raster: Raster, *, x0: int, y0: int, w: int, h: int, scale: float) -> np.ndarray:
    """Counts for a (h, w) tile whose top-left pixel is (x0, y0) at a level of ``scale`` level-0
    px per pixel: nearest cell when zoomed in, maximum over the covered cells when zoomed out."""
    rows, cols = raster.counts.shape
    ratio = scale / raster.stride_px  # cells per pixel
    out = np.zeros((h, w), np.uint8)
    if ratio <= 1:
        xs = ((x0 + np.arange(w) + 0.5) * ratio).astype(np.int64)
        ys = ((y0 + np.arange(h) + 0.5) * ratio).astype(np.int64)
        inside_x, inside_y = xs < cols, ys < rows
        if inside_x.any() and inside_y.any():
            block = raster.counts[np.ix_(ys[inside_y], xs[inside_x])]
            out[np.ix_(np.flatnonzero(inside_y), np.flatnonzero(inside_x))] = block
        return out
    x_edges = np.floor((x0 + np.arange(w + 1)) * ratio + 1e-9).astype(np.int64)
    y_edges = np.floor((y0 + np.arange(h + 1)) * ratio + 1e-9).astype(np.int64)
    pooled, ny = _max_pool_axis(raster.counts, y_edges, axis=0)
    pooled, nx = _max_pool_axis(pooled, x_edges, axis=1)
    out[:ny, :nx] = pooled
    return out


# ---- outlines ------------------------------------------------------------------------------


def regions_at_threshold(
    raster: Raster, *, threshold: float, max_regions: int = 2000
) -> list[dict[str, Any]]:
    """GeoJSON features (level-0 px) of the connected regions (4-connected cells) whose score is at
    or above ``threshold``: exact cell-edge outlines, holes included, with each region's maximum
    score, its location and its area. The highest-scoring ``max_regions`` are kept."""
    import shapely
    from scipy import ndimage
    from shapely.geometry import mapping

    at = raster.count_at_or_above(threshold)
    mask = raster.counts >= max(at, 1)
    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    maxima = ndimage.maximum(raster.counts, labels, index)
    sizes = ndimage.sum_labels(mask, labels, index)
    keep = np.argsort(-np.asarray(maxima), kind="stable")[:max_regions]
    slices = ndimage.find_objects(labels)
    s = raster.stride_px
    features = []
    for k in keep:
        label = int(k) + 1
        sl = slices[k]
        sub = labels[sl] == label
        r0, c0 = sl[0].start, sl[1].start
        boxes = []
        for i, row in enumerate(sub):
            padded = np.concatenate(([False], row, [False]))
            edges = np.flatnonzero(padded[1:] != padded[:-1])
            for a, b in zip(edges[::2], edges[1::2], strict=True):
                boxes.append(
                    shapely.box((c0 + a) * s, (r0 + i) * s, (c0 + b) * s, (r0 + i + 1) * s)
                )
        geometry = shapely.union_all(boxes).simplify(0)  # drop collinear vertices only
        sub_counts = np.where(sub, raster.counts[sl], 0)
        mr, mc = np.unravel_index(int(np.argmax(sub_counts)), sub_counts.shape)
        features.append(
            {
                "type": "Feature",
                "geometry": mapping(geometry),
                "properties": {
                    "max_score": float(maxima[k]) / raster.denominator,
                    "max_x": (c0 + mc + 0.5) * s,
                    "max_y": (r0 + mr + 0.5) * s,
                    "cells": int(sizes[k]),
                    "area_px": float(sizes[k]) * s * s,
                },
            }
        )
    return features
