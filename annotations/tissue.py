"""Tissue masks: which parts of a slide hold tissue, from a low-resolution thumbnail.

Otsu's threshold on HSV saturation separates stained tissue (saturated pink/purple) from glass
(white or grey, unsaturated). A floor on the threshold keeps a blank slide from turning its noise
into "tissue". Then every hole the tissue encloses is filled: pale sinuses, the gaps between
lymphocytes, fat and vessels inside a node are part of it (a metastasis often starts in the
subcapsular sinus), while glass around the section touches the image border and stays out. On
generated nodes this took the mask from 63-71 % of the true tissue pixels (26-46 % of the sinus)
to 99.8 % (100 %), with no more glass (0.11 %). The mask is cached per slide (by checksum, so a
replaced file is recomputed) as a small .npy under `settings.RESULTS_DIR/tissue/`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings

from slides.models import Slide

DEFAULT_MAX_SIZE = 2048
MIN_SATURATION = 0.07  # tissue is never greyer than this, whatever Otsu says


@dataclass(frozen=True)
class TissueMask:
    """A boolean mask covering the whole slide; one mask pixel is `width / mask.shape[1]` level-0 px."""

    mask: np.ndarray
    width: int
    height: int

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in 0..1 of an H × W × 3 (or 4) uint8 image; 0 where the pixel is black.

    The channel maximum and minimum are taken on the integer channels, one channel at a time
    (reducing over a length-3 last axis is ~10x slower in NumPy), then converted once: the same
    values as converting first, since max and min commute with an exact uint8 -> float32 cast."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = np.maximum(np.maximum(r, g), b).astype(np.float32)
    low = np.minimum(np.minimum(r, g), b).astype(np.float32)
    spread = np.subtract(high, low, out=low)
    return np.divide(spread, high, out=np.zeros_like(high), where=high > 0)


def otsu_threshold(values: np.ndarray, *, bins: int = 256) -> float:
    """Otsu's threshold of values in 0..1: the cut that maximises the between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def mask_from_rgb(
    rgb: np.ndarray, *, min_saturation: float = MIN_SATURATION, fill_holes: bool = True
) -> np.ndarray:
    """Tissue where saturation exceeds max(Otsu's threshold, `min_saturation`), with the holes
    the tissue encloses filled (`fill_holes`; regions of glass that reach the border stay out)."""
    if rgb.ndim == 2:  # greyscale: no colour, so no stained tissue to find
        return np.zeros(rgb.shape, dtype=bool)
    sat = saturation(rgb)
    mask = sat > max(otsu_threshold(sat), min_saturation)
    if fill_holes and mask.any():
        mask = fill_enclosed_holes(mask)
    return mask


def fill_enclosed_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every hole it encloses filled: the background regions (4-connected) that do
    not reach the image border become True. The same as ``scipy.ndimage.binary_fill_holes``
    (tested), from one labelling of the background instead of dilating from the border until
    nothing changes: ~3x faster on a 2048 px mask."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    background, n = ndimage.label(~mask)  # 4-connected, as binary_fill_holes' default
    if n == 0:
        return mask.copy()
    border = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    outside = np.zeros(n + 1, bool)
    outside[border] = True
    outside[0] = False  # label 0 is the tissue itself
    return ~outside[background]


#: Bumped when the way masks are made changes, so that masks cached by an older way are not used.
MASK_VERSION = 2  # 2: enclosed holes filled


def cache_path(slide: Slide, max_size: int) -> Path:
    name = f"{slide.checksum[:24]}-{max_size}-v{MASK_VERSION}.npy"
    return Path(settings.RESULTS_DIR) / "tissue" / name


def tissue_mask(
    slide: Slide, *, max_size: int = DEFAULT_MAX_SIZE, use_cache: bool = True
) -> TissueMask:
    """The slide's tissue mask at most `max_size` px on its longer side, from the cache or computed."""
    path = cache_path(slide, max_size)
    if use_cache and path.exists():
        return TissueMask(mask=np.load(path), width=slide.width, height=slide.height)
    from large_image.constants import TILE_FORMAT_NUMPY

    from slides.tiles import source_for

    rgb, _mime = source_for(slide).getRegion(
        output={"maxWidth": max_size, "maxHeight": max_size}, format=TILE_FORMAT_NUMPY
    )
    mask = mask_from_rgb(np.asarray(rgb))
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, mask)
        os.replace(tmp, path)
    return TissueMask(mask=mask, width=slide.width, height=slide.height)
