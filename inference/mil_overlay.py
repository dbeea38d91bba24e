"""The MIL attention of a case painted over its slides: one heat-map raster per slide whose cells
are the bag's patch grid (seed 001, issue 8).

A MIL model (:mod:`inference.mil`) weighs each patch of a case's outlined cancer areas; the
viewer shows those weights as an overlay. Each slide of the case gets a raster in the heat-map
format of :mod:`inference.heatmaps` (one uint8 per patch-grid cell, ``stride_px`` = the patch side
in level-0 px; the bag's patches sit exactly on that grid, see ``annotations.labels.patch_grid``)
so the heat-map tile renderer serves it unchanged: nearest cell zoomed in, the maximum of the
covered cells zoomed out, so the most-attended patch never vanishes from the overview.

A cell holds ``max(1, round(255 * weight / max weight on the slide))``: normalised to the slide's
maximum (attention sums to one over the whole bag, so raw weights shrink with bag size), and never
0 for a patch of the bag, so 0 (transparent) means "no patch here" and nothing else.

The rasters are computed on request from the cached bag (``case_bag``) and the model, through
:func:`clinical.prediction.case_prediction`, the very function behind the prediction API, so the
overlay and the API cannot disagree. They are cached under
``RESULTS_DIR/mil-attention/version-<id>/slide-<slide>-<bag key>.npz``, where the bag key is the
digest ``case_bag`` names the bag by (the grid, the case's slides and the versions of their tumour
outlines): an edited outline gives a new key, never a stale overlay. Files are written atomically
by :func:`inference.heatmaps.write_raster` (temporary file, fsync, rename); every slide of the
case is written in one go, slides without a patch included (all zero), so a second slide of the
case is a cache hit too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from .heatmaps import colour_table, raster_cache, write_raster

#: the raster's denominator: a cell's value / 255 is its weight over the slide's maximum
ATTENTION_LEVELS = 255
#: what a bag key looks like in a tile URL (the first 16 hex digits of the bag digest)
BAG_KEY = re.compile(r"^[0-9a-f]{16}$")


class OverlayUnavailable(Exception):  # noqa: N818 - the name says what happened
    """No attention overlay can be made now; the message says why (the prediction's reason)."""


@dataclass(frozen=True)
class SlideAttention:
    """What the viewer needs about one slide's attention raster."""

    slide_id: int
    version_id: int
    version_name: str
    bag_key: str
    patches: int  # patches of the bag on this slide
    case_patches: int  # patches of the whole bag (all slides of the case)
    patch_size: int  # level-0 px
    max_weight: float  # the highest weight on this slide (0 if no patch)
    top: dict[str, Any] | None  # the most-attended patch on this slide: x, y, size, weight
    cached: bool  # read from disk (True) or computed by this call

    def to_dict(self) -> dict[str, Any]:
        return {
            "slide": self.slide_id,
            "modelVersion": {"id": self.version_id, "name": self.version_name},
            "bag": self.bag_key,
            "patches": self.patches,
            "casePatches": self.case_patches,
            "patchSize": self.patch_size,
            "maxWeight": self.max_weight,
            "top": self.top,
        }


def attention_dir() -> Path:
    return Path(settings.RESULTS_DIR) / "mil-attention"


def overlay_path(*, version_id: int, slide_id: int, bag_key: str) -> Path:
    """Where the attention raster of a slide lies (no file system access)."""
    if not BAG_KEY.match(bag_key):
        raise ValueError("bag key must be 16 lower-case hex digits")
    return attention_dir() / f"version-{int(version_id)}" / f"slide-{int(slide_id)}-{bag_key}.npz"


def attention_counts(
    attention: list[dict[str, Any]], *, slide_id: int, width: int, height: int, size: int
) -> np.ndarray:
    """uint8 (rows, cols) raster of one slide on the patch grid of side ``size``: each patch's
    weight over the slide's maximum, scaled to 1 ... 255; 0 where the bag has no patch."""
    rows, cols = max(1, -(-height // size)), max(1, -(-width // size))
    counts = np.zeros((rows, cols), np.uint8)
    mine = [a for a in attention if a["slide"] == slide_id]
    if not mine:
        return counts
    weights = np.array([a["weight"] for a in mine], np.float64)
    top = float(weights.max())
    scaled = np.rint(ATTENTION_LEVELS * weights / top) if top > 0 else np.ones_like(weights)
    scaled = np.clip(scaled, 1, ATTENTION_LEVELS).astype(np.uint8)
    r = np.array([a["y"] // size for a in mine], np.int64)
    c = np.array([a["x"] // size for a in mine], np.int64)
    counts[r, c] = scaled
    return counts


def legend(stops: int = 9) -> list[dict[str, Any]]:
    """A short colour legend: ``share`` of the slide's maximum weight and its RGBA."""
    table = colour_table(ATTENTION_LEVELS)
    out = []
    for i in range(stops):
        count = max(1, round(ATTENTION_LEVELS * (i + 1) / stops))
        out.append({"share": count / ATTENTION_LEVELS, "rgba": [int(v) for v in table[count]]})
    return out


def _read_meta(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


def _bag_key(case, grid) -> str:
    """The digest ``case_bag`` names this case's bag by (first 16 hex digits)."""
    from .mil import _digest, case_tumour_patches

    _, _, identity = case_tumour_patches(case, grid)
    return _digest(identity)[:16]


def mil_version(version_id: int | None):
    """The MIL ModelVersion asked for, else the one the case page uses (live, else newest)."""
    from clinical.prediction import mil_versions

    versions = mil_versions()
    if version_id is not None:
        version = versions.filter(pk=version_id).first()
        if version is None:
            raise OverlayUnavailable(f"no MIL model version {version_id}")
        return version
    version = versions.filter(is_live=True).first() or versions.first()
    if version is None:
        raise OverlayUnavailable("no MIL model has been trained yet")
    return version


def slide_attention(*, slide, version_id: int | None = None) -> SlideAttention:
    """The attention raster of ``slide`` (a Slide row) from a MIL model version, from the cache or
    computed now (then cached for every slide of its case). OverlayUnavailable says why not."""
    from clinical.prediction import PredictionUnavailable, case_prediction
    from slides.models import Slide

    from .mil import BagGrid, MILError

    version = mil_version(version_id)
    slides = list(Slide.objects.filter(node__case_id=slide.node.case_id).order_by("id"))
    case = slide.node.case
    try:
        grid = BagGrid(**(version.hyperparameters or {})["bag_grid"])
        key = _bag_key(case, grid)
    except (KeyError, TypeError) as exc:
        raise OverlayUnavailable(f"model {version.name} has no bag grid") from exc
    except (MILError, ValueError) as exc:  # PatchLabelError (no mpp) is a ValueError
        raise OverlayUnavailable(str(exc)) from exc
    path = overlay_path(version_id=version.pk, slide_id=slide.pk, bag_key=key)
    cached = path.is_file()
    if not cached:
        try:
            prediction = case_prediction(case, version_id=version.pk)
        except PredictionUnavailable as exc:
            raise OverlayUnavailable(str(exc)) from exc
        attention = prediction["attention"]
        for each in slides:
            mine = [a for a in attention if a["slide"] == each.pk]
            size = int(mine[0]["size"]) if mine else _patch_side(each, grid)
            best = max(mine, key=lambda a: a["weight"]) if mine else None
            write_raster(
                overlay_path(version_id=version.pk, slide_id=each.pk, bag_key=key),
                counts=attention_counts(
                    attention, slide_id=each.pk, width=each.width, height=each.height, size=size
                ),
                denominator=ATTENTION_LEVELS,
                stride_px=size,
                window_px=size,
                meta={
                    "kind": "mil-attention",
                    "case": case.pk,
                    "model_version": version.pk,
                    "patches": len(mine),
                    "case_patches": len(attention),
                    "patch_size": size,
                    "max_weight": best["weight"] if best else 0.0,
                    "top": ({k: best[k] for k in ("x", "y", "size", "weight")} if best else None),
                },
            )
    meta = _read_meta(path)
    return SlideAttention(
        slide_id=slide.pk,
        version_id=version.pk,
        version_name=version.name,
        bag_key=key,
        patches=int(meta["patches"]),
        case_patches=int(meta["case_patches"]),
        patch_size=int(meta["patch_size"]),
        max_weight=float(meta["max_weight"]),
        top=meta["top"],
        cached=cached,
    )


def _patch_side(slide, grid) -> int:
    """The patch side in level-0 px of ``slide`` on the bag grid (slides without a patch)."""
    from annotations.labels import PatchLabelError, patch_grid

    try:
        return patch_grid(slide, patch_px=grid.patch_px, target_mpp=grid.target_mpp).size
    except PatchLabelError:  # no µm per pixel: it cannot hold a patch; any side draws nothing
        return max(1, int(grid.patch_px))


def load_overlay(*, version_id: int, slide_id: int, bag_key: str):
    """The cached raster (FileNotFoundError when it was never computed)."""
    return raster_cache.get(
        str(overlay_path(version_id=version_id, slide_id=slide_id, bag_key=bag_key))
    )
