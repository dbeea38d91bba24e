"""Synthetic lymph-node H&E slides with exact ground truth (for tests, the demo and benchmarks).

These images are generated, never real tissue. `generate_slide` lays out the geometry of a node
analytically (shapely polygons in level-0 pixels): an irregular bean-shaped outline with a thin
capsule, sinuses (a broken subcapsular band and elongated medullary channels), lymphoid follicles
(pale germinal centres of large vesicular cells inside a dark mantle: the hard negatives) and,
optionally, metastatic tumour nests (irregular blobs of large pleomorphic nuclei in eosinophilic
cytoplasm). It then renders the slide tile by tile with vectorised numpy and streams it into a
pyramidal, tiled JPEG TIFF, so a 40,000 px square slide needs bounded memory.

Beside `<stem>.tiff` it writes `<stem>.masks.npz` (boolean rasters of the same polygons at
1/`mask_downsample`) and `<stem>.regions.geojson` (the polygons themselves). The classes are
exclusive except "tissue", which covers the whole section: tumour wins over follicle, which wins
over sinus.

Rendering model: every pixel gets a haematoxylin and an eosin concentration, turned into RGB by
Beer-Lambert absorption (`255 * exp(-OD)`, through a per-slide colour table). Nuclei are
pre-rendered sprites (lymphocytes, centroblasts, histiocytes, pleomorphic tumour nuclei...) on
several overlapping grids of cells, at most one per cell and anywhere in it, bent by a smooth warp.
Which sprite a cell shows comes from a hash of the cell's global index and the region under it, so
a nucleus is drawn the same whichever tile it falls in, and no tile needs its neighbours.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import shapely
import tifffile
from shapely.geometry import LineString, MultiPolygon, Polygon, box, mapping
from shapely.ops import unary_union

Progress = Callable[[int, int], None]

MASK_CLASSES = ("tumour", "follicle", "sinus", "tissue")
GEOJSON_CLASS = {
    "tumour": "tumour",
    "follicle": "lymphoid follicle",
    "sinus": "sinus",
    "tissue": "tissue",
}

# Render labels (what a pixel is drawn as); finer than the ground-truth classes.
BG, CORTEX, SINUS, MANTLE, GERMINAL, TUMOUR, CAPSULE = range(7)
_N_LABELS = 7

# Stain optical densities (R, G, B) per unit concentration: a common H&E reference pair.
_HAEMATOXYLIN = np.array([0.5626, 0.7201, 0.4062], np.float32)
_EOSIN = np.array([0.2159, 0.8012, 0.5581], np.float32)
_GLASS_OD = 0.06  # about (240, 240, 240) where there is no tissue
_QSCALE = 80  # colour table steps per unit optical density
_HQ, _EQ = 320, 160  # colour table size (haematoxylin x eosin)
_DITHER = 1.8  # uniform dither before quantisation, in colour-table steps: the pixel grain

#                      BG    CORTEX SINUS MANTLE GERM  TUMOUR CAPSULE
_EOSIN_BASE = np.array([0.0, 0.24, 0.30, 0.22, 0.34, 0.62, 0.85], np.float32)
_EOSIN_VAR = np.array([0.0, 0.25, 0.60, 0.25, 0.30, 0.30, 0.30], np.float32)
_HAEM_BASE = np.array([0.0, 0.15, 0.05, 0.15, 0.10, 0.10, 0.04], np.float32)


class _Kind(NamedTuple):
    """A kind of nucleus (sizes in micrometres)."""

    r: float  # mean radius
    spread: float  # relative spread of the radius
    elong: float  # up to 1 + elong times longer than wide
    haem: float  # haematoxylin density
    vesicular: bool  # pale centre, dark rim, nucleoli (else solid)
    irregular: float  # outline irregularity
    texture: float  # chromatin texture


_LYMPHOCYTE = _Kind(3.2, 0.12, 0.25, 1.6, False, 0.06, 0.12)
_LYMPHOCYTE_DARK = _LYMPHOCYTE._replace(haem=1.75)
_FIBROBLAST = _Kind(2.4, 0.15, 3.5, 1.2, False, 0.05, 0.10)
_IMMUNOBLAST = _Kind(4.0, 0.10, 0.30, 0.95, True, 0.06, 0.20)
_CENTROBLAST = _Kind(4.6, 0.15, 0.35, 0.85, True, 0.10, 0.25)
_CENTROCYTE = _Kind(3.7, 0.12, 0.50, 1.25, False, 0.28, 0.15)
_HISTIOCYTE = _Kind(4.2, 0.15, 0.60, 0.60, True, 0.10, 0.20)
_TUMOUR_VESICULAR = _Kind(6.0, 0.35, 0.60, 1.10, True, 0.25, 0.30)
_TUMOUR_HYPERCHROMATIC = _TUMOUR_VESICULAR._replace(r=5.6, haem=1.65, vesicular=False, texture=0.25)

# Nucleus layers: each a (warped) grid of cells holding at most one nucleus, drawn from a bank of
# pre-rendered sprites; per render label: presence probability and a mix of kinds. A nucleus sits
# anywhere in its cell (its sprite is two cells wide) and layers of different cell sizes overlap,
# so no lattice shows.
_LYMPH_MIX = [(0.92, _LYMPHOCYTE), (0.08, _IMMUNOBLAST)]
_GC_MIX = [(0.55, _CENTROBLAST), (0.45, _CENTROCYTE)]
_TUMOUR_MIX = [(0.55, _TUMOUR_VESICULAR), (0.45, _TUMOUR_HYPERCHROMATIC)]
_LAYERS = (
    {
        "cell_um": 7.8,
        CORTEX: (0.95, _LYMPH_MIX),
        SINUS: (0.18, [(1.0, _LYMPHOCYTE)]),
        MANTLE: (0.97, [(1.0, _LYMPHOCYTE_DARK)]),
        GERMINAL: (0.25, [(1.0, _LYMPHOCYTE)]),
        TUMOUR: (0.05, [(1.0, _LYMPHOCYTE)]),
        CAPSULE: (0.18, [(1.0, _FIBROBLAST)]),
    },
    {
        "cell_um": 9.0,
        CORTEX: (0.55, [(1.0, _LYMPHOCYTE)]),
        SINUS: (0.05, [(1.0, _LYMPHOCYTE)]),
        MANTLE: (0.70, [(1.0, _LYMPHOCYTE_DARK)]),
        GERMINAL: (0.10, [(1.0, _LYMPHOCYTE)]),
        CAPSULE: (0.08, [(1.0, _FIBROBLAST)]),
    },
    {
        "cell_um": 11.0,
        GERMINAL: (0.90, _GC_MIX),
        SINUS: (0.35, [(1.0, _HISTIOCYTE)]),
    },
    {
        "cell_um": 15.0,
        TUMOUR: (0.97, _TUMOUR_MIX),
        GERMINAL: (0.25, _GC_MIX),
    },
    {
        "cell_um": 19.0,
        TUMOUR: (0.45, _TUMOUR_MIX),
    },
)
_VARIANTS = 128  # sprites per render label and layer
_WARP_UM = 3.5  # how far the grids of cells are bent (breaks their regularity)
_WARP_SPACING_UM = 20.0
_IN_MEMORY_BYTES = 64 * 2**20  # reduced levels larger than this go through a memory-mapped file


@dataclass(frozen=True)
class SyntheticSlide:
    """A generated slide and where its ground truth lies."""

    path: Path
    masks_path: Path
    regions_path: Path
    width: int
    height: int
    mpp: float
    has_tumour: bool


# --------------------------------------------------------------------------------------------
# Geometry


@dataclass(frozen=True)
class _Geometry:
    tissue: MultiPolygon
    capsule_inner: MultiPolygon
    sinus: MultiPolygon
    follicle: MultiPolygon
    germinal: MultiPolygon
    tumour: MultiPolygon


def _polygons(geom) -> list[Polygon]:
    """The polygonal parts of any shapely geometry (lines and points dropped)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    out: list[Polygon] = []
    for part in getattr(geom, "geoms", []):
        out.extend(_polygons(part))
    return [p for p in out if p.area > 0]


def _multi(geom) -> MultiPolygon:
    return MultiPolygon(_polygons(geom))


def _blob(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    *,
    angle: float,
    amp: float,
    kmax: int,
    n: int = 96,
) -> Polygon:
    """An irregular ellipse: radius modulated by random low-order harmonics."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, kmax + 1):
        r += amp * rng.uniform(0.3, 1.0) / k**0.7 * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    x, y = rx * r * np.cos(t), ry * r * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    poly = Polygon(np.column_stack([cx + ca * x - sa * y, cy + sa * x + ca * y]))
    return poly if poly.is_valid else poly.buffer(0)


def _random_point_in(
    rng: np.random.Generator, area, tries: int = 256
) -> tuple[float, float] | None:
    """A uniformly random point inside `area`, or None if `tries` samples all miss."""
    if area.is_empty:
        return None
    x0, y0, x1, y1 = area.bounds
    xs, ys = rng.uniform(x0, x1, tries), rng.uniform(y0, y1, tries)
    inside = np.flatnonzero(shapely.contains_xy(area, xs, ys))
    return (float(xs[inside[0]]), float(ys[inside[0]])) if len(inside) else None


def _build_geometry(
    rng: np.random.Generator,
    *,
    width: int,
    height: int,
    mpp: float,
    tumour: bool,
    n_follicles: int | None,
    n_tumour_nests: int | None,
) -> _Geometry:
    """Lay out the node: outline, capsule, sinuses, follicles, tumour nests (level-0 px)."""
    s = min(width, height)

    def px(um: float, lo: float, frac: float) -> float:
        """A physical length in px, at least `lo` px and at most `frac` of the short side."""
        return float(min(max(um / mpp, lo), frac * s))

    # Outline: a bean (irregular ellipse with a hilum dent), kept clear of the slide border.
    t = np.linspace(0.0, 2 * math.pi, 360, endpoint=False)
    r = np.ones_like(t)
    for k in range(2, 7):
        r += 0.05 * rng.uniform(0.4, 1.0) / k**0.6 * np.cos(k * t + rng.uniform(0, 2 * math.pi))
    hilum = rng.uniform(0, 2 * math.pi)
    dist = np.angle(np.exp(1j * (t - hilum)))
    r *= 1 - 0.16 * np.exp(-((dist / 0.35) ** 2))
    rx, ry = 0.40 * width * rng.uniform(0.95, 1.03), 0.40 * height * rng.uniform(0.95, 1.03)
    cx = width / 2 * (1 + rng.uniform(-0.02, 0.02))
    cy = height / 2 * (1 + rng.uniform(-0.02, 0.02))
    outline = Polygon(np.column_stack([cx + rx * r * np.cos(t), cy + ry * r * np.sin(t)]))
    margin = 0.02 * s
    tissue = outline.buffer(0).intersection(box(margin, margin, width - margin, height - margin))
    tissue = max(_polygons(tissue), key=lambda p: p.area)

    cap = px(12, 3, 0.008)
    inner = tissue.buffer(-cap, quad_segs=4)
    inner = max(_polygons(inner), key=lambda p: p.area)
    hx, hy = cx + rx * math.cos(hilum), cy + ry * math.sin(hilum)  # hilum on the outline
    mean_r = math.sqrt(tissue.area / math.pi)

    # Sinuses: a broken subcapsular band and medullary channels running in from the hilum.
    sw = px(22, 4, 0.018)
    band = inner.difference(inner.buffer(-sw, quad_segs=4))
    wedges = []
    for _ in range(int(rng.integers(3, 7))):
        a0 = rng.uniform(0, 2 * math.pi)
        a1 = a0 + rng.uniform(0.3, 1.1)
        aa = np.linspace(a0, a1, 24)
        big = 3 * max(width, height)
        wedges.append(
            Polygon([(cx, cy), *zip(cx + big * np.cos(aa), cy + big * np.sin(aa), strict=True)])
        )
    sinus_parts = [band.intersection(unary_union(wedges))]
    channel_w = px(70, 6, 0.03)
    for _ in range(int(rng.integers(4, 9))):
        heading = math.atan2(cy - hy, cx - hx) + rng.uniform(-0.9, 0.9)
        x, y = hx, hy
        pts = [(x, y)]
        length = mean_r * rng.uniform(0.35, 0.75)
        step = length / 24
        for _ in range(24):
            heading += rng.normal(0, 0.22)
            x, y = x + step * math.cos(heading), y + step * math.sin(heading)
            pts.append((x, y))
        w = channel_w * rng.uniform(0.6, 1.4)
        sinus_parts.append(LineString(pts).buffer(w / 2, quad_segs=4))
    sinus_all = unary_union(sinus_parts).intersection(inner)

    # Follicles: round, in the cortex (a band under the subcapsular sinus), not touching each other.
    rf = px(230, 12, 0.10)
    cortex = inner.buffer(-(sw + 0.9 * rf), quad_segs=4).difference(
        inner.buffer(-(sw + 3.2 * rf), quad_segs=4)
    )
    cortex = cortex.difference(shapely.Point(hx, hy).buffer(0.6 * mean_r))  # medulla at the hilum
    if n_follicles is None:
        n_follicles = int(np.clip(round(cortex.area / (math.pi * (1.6 * rf) ** 2)), 2, 40))
    follicles, germinals, centres = [], [], []
    attempts = 0
    while len(follicles) < n_follicles and attempts < 400 * max(n_follicles, 1):
        attempts += 1
        p = _random_point_in(rng, cortex)
        if p is None:
            continue
        r_i = rf * rng.uniform(0.7, 1.15)
        if any(math.dist(p, c) < r_i + rc + 0.25 * rf for c, rc in centres):
            continue
        centres.append((p, r_i * 1.25))
        angle = rng.uniform(0, math.pi)
        follicles.append(
            _blob(rng, p[0], p[1], r_i * rng.uniform(1.0, 1.25), r_i, angle=angle, amp=0.06, kmax=5)
        )
        # Germinal centre: eccentric, pushed away from the capsule (mantle thicker outside).
        d = math.dist(p, (cx, cy)) or 1.0
        gx = p[0] + 0.12 * r_i * (cx - p[0]) / d
        gy = p[1] + 0.12 * r_i * (cy - p[1]) / d
        germinals.append(
            _blob(
                rng,
                gx,
                gy,
                0.66 * r_i * rng.uniform(1.0, 1.2),
                0.66 * r_i,
                angle=angle,
                amp=0.08,
                kmax=5,
            )
        )
    follicle_all = unary_union(follicles).intersection(inner) if follicles else Polygon()

    # Tumour nests: irregular lobulated blobs with satellites, anywhere inside the capsule.
    nests = []
    if tumour:
        if n_tumour_nests is None:
            n_tumour_nests = int(rng.integers(1, 4)) + (1 if s * mpp > 4000 else 0)
        for i in range(n_tumour_nests):
            rt = px(rng.uniform(120, 600) if i else rng.uniform(250, 650), 20, 0.13)
            p = None
            for _ in range(6):
                q = _random_point_in(rng, inner.buffer(-1.2 * rt, quad_segs=4))
                q = q or _random_point_in(rng, inner.buffer(-0.5 * rt, quad_segs=4))
                q = q or _random_point_in(rng, inner)
                if q is None:
                    break
                p = q
                if follicle_all.is_empty or follicle_all.distance(shapely.Point(q)) > rt:
                    break
            if p is None:
                continue
            parts = [
                _blob(
                    rng,
                    p[0],
                    p[1],
                    rt * rng.uniform(0.8, 1.2),
                    rt,
                    angle=rng.uniform(0, 6.3),
                    amp=0.22,
                    kmax=9,
                )
            ]
            for _ in range(int(rng.integers(0, 4))):  # lobes on the rim
                a = rng.uniform(0, 2 * math.pi)
                rl = rt * rng.uniform(0.3, 0.6)
                parts.append(
                    _blob(
                        rng,
                        p[0] + 0.8 * rt * math.cos(a),
                        p[1] + 0.8 * rt * math.sin(a),
                        rl,
                        rl * rng.uniform(0.7, 1.0),
                        angle=a,
                        amp=0.2,
                        kmax=7,
                    )
                )
            for _ in range(int(rng.integers(0, 5))):  # small satellite clusters
                a = rng.uniform(0, 2 * math.pi)
                rs = rt * rng.uniform(0.08, 0.2)
                dd = rt * rng.uniform(1.3, 1.9)
                parts.append(
                    _blob(
                        rng,
                        p[0] + dd * math.cos(a),
                        p[1] + dd * math.sin(a),
                        rs,
                        rs,
                        angle=0.0,
                        amp=0.25,
                        kmax=5,
                        n=32,
                    )
                )
            nests.append(unary_union(parts))
    tumour_all = unary_union(nests).intersection(inner) if nests else Polygon()

    # Exclusive classes: tumour over follicle over sinus.
    tumour_g = _multi(tumour_all)
    follicle_g = _multi(follicle_all.difference(tumour_all))
    germinal_g = _multi(unary_union(germinals).intersection(follicle_g) if germinals else None)
    sinus_g = _multi(sinus_all.difference(follicle_all).difference(tumour_all))
    return _Geometry(
        tissue=_multi(tissue),
        capsule_inner=_multi(inner),
        sinus=sinus_g,
        follicle=follicle_g,
        germinal=germinal_g,
        tumour=tumour_g,
    )


# --------------------------------------------------------------------------------------------
# Rasterisation (even-odd scanline fill at pixel centres: exact, fast, no extra dependency)


class _Shape:
    """A (multi)polygon prepared for scanline filling: its edges, per part, with bounding boxes."""

    def __init__(self, geom: MultiPolygon):
        self.edges: list[np.ndarray] = []
        bounds = []
        for poly in _polygons(geom):
            rings = [np.asarray(poly.exterior.coords)] + [
                np.asarray(i.coords) for i in poly.interiors
            ]
            e = np.concatenate([np.column_stack([r[:-1], r[1:]]) for r in rings])
            self.edges.append(e.astype(np.float64))
            bounds.append(poly.bounds)
        self.bounds = np.array(bounds, np.float64).reshape(-1, 4)
        self.geom = geom
        self.lock = threading.Lock()
        shapely.prepare(geom)

    def coverage(self, x0: int, y0: int, w: int, h: int) -> int:
        """0 if the level-0 rectangle misses the shape, 2 if the shape holds it whole, else 1."""
        b = self.bounds
        if (
            not len(b)
            or not ((b[:, 0] < x0 + w) & (b[:, 2] > x0) & (b[:, 1] < y0 + h) & (b[:, 3] > y0)).any()
        ):
            return 0
        rect = box(x0, y0, x0 + w, y0 + h)
        with self.lock:  # GEOS builds a prepared geometry's index lazily: not from two threads
            if self.geom.contains(rect):
                return 2
            return 1 if self.geom.intersects(rect) else 0

    def fill(self, x0: int, y0: int, w: int, h: int, scale: float = 1.0) -> np.ndarray:
        """Boolean (h, w): pixel (i, j) is inside if ((x0+j+.5)*scale, (y0+i+.5)*scale) is."""
        out = np.zeros((h, w), bool)
        if not len(self.bounds) or w <= 0 or h <= 0:
            return out
        bx0, by0, bx1, by1 = x0 * scale, y0 * scale, (x0 + w) * scale, (y0 + h) * scale
        b = self.bounds
        hit = (b[:, 0] < bx1) & (b[:, 2] > bx0) & (b[:, 1] < by1) & (b[:, 3] > by0)
        if not hit.any():
            return out
        edges = np.concatenate([self.edges[i] for i in np.flatnonzero(hit)])
        lo = np.minimum(edges[:, 1], edges[:, 3])
        hi = np.maximum(edges[:, 1], edges[:, 3])
        step = max(1, min(h, 4_000_000 // len(edges)))
        for r0 in range(0, h, step):
            r1 = min(h, r0 + step)
            yc = (y0 + np.arange(r0, r1) + 0.5) * scale
            e = edges[(hi > yc[0]) & (lo <= yc[-1])]
            if not len(e):
                continue
            ex1, ey1, ex2, ey2 = e.T
            cross = (ey1[None, :] <= yc[:, None]) != (ey2[None, :] <= yc[:, None])
            rows, idx = np.nonzero(cross)
            if not len(rows):
                continue
            xi = ex1[idx] + (yc[rows] - ey1[idx]) * (ex2[idx] - ex1[idx]) / (ey2[idx] - ey1[idx])
            col = np.clip(np.ceil(xi / scale - x0 - 0.5), 0, w).astype(np.int64)
            # Even-odd along the flattened rows: every crossing toggles inside/outside, and each
            # row holds an even number of them, so runs alternate outside, inside, outside...
            toggles = np.sort(rows * w + col)
            runs = np.diff(toggles, prepend=0, append=(r1 - r0) * w)
            inside = (np.arange(len(runs)) & 1).astype(bool)
            out[r0:r1] = np.repeat(inside, runs).reshape(r1 - r0, w)
        return out


def _rasterise(shape: _Shape, width: int, height: int, ds: int) -> np.ndarray:
    """A mask at 1/ds: pixel (i, j) is the level-0 block whose centre is ((j+.5)ds, (i+.5)ds)."""
    return shape.fill(0, 0, -(-width // ds), -(-height // ds), scale=float(ds))


# --------------------------------------------------------------------------------------------
# Rendering


def _mix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _hash_uniform(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Uniform floats in [0, 1) that depend only on the integers (ix, iy) and `salt`."""
    with np.errstate(over="ignore"):
        h = np.asarray(ix).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        h = h ^ (np.asarray(iy).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(salt))
        h = _mix64(h)
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _salt(seed: int, *keys: int) -> int:
    h = np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64)
    with np.errstate(over="ignore"):
        for k in keys:
            h = _mix64(h ^ np.uint64(k * 0x2545F4914F6CDD1D & 0xFFFFFFFFFFFFFFFF))
    return int(h[0])


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


def _value_noise(
    x0: int, y0: int, w: int, h: int, spacing: float, salt: int, *, step: int = 1
) -> np.ndarray:
    """Smooth value noise in [-1, 1] over pixel centres of a rectangle; seamless across chunks.

    With `step` > 1 it is computed at one point per step x step block (blocks aligned on
    multiples of `step`) and repeated: for fields far smoother than a block.
    """
    if step > 1:
        bx0, by0 = x0 // step, y0 // step
        bw, bh = (x0 + w - 1) // step - bx0 + 1, (y0 + h - 1) // step - by0 + 1
        small = _value_noise(bx0, by0, bw, bh, spacing / step, salt)
        big = np.repeat(np.repeat(small, step, axis=0), step, axis=1)
        return big[y0 - by0 * step : y0 - by0 * step + h, x0 - bx0 * step : x0 - bx0 * step + w]
    gx = (x0 + np.arange(w, dtype=np.float64) + 0.5) / spacing
    gy = (y0 + np.arange(h, dtype=np.float64) + 0.5) / spacing
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    tx, ty = _smooth((gx - ix).astype(np.float32)), _smooth((gy - iy).astype(np.float32))
    lx, ly = np.arange(ix[0], ix[-1] + 2), np.arange(iy[0], iy[-1] + 2)
    lattice = _hash_uniform(lx[None, :], ly[:, None], salt) * 2 - 1
    iyl, ixl = iy - ly[0], ix - lx[0]
    rows = lattice[iyl] * (1 - ty)[:, None] + lattice[iyl + 1] * ty[:, None]
    left, right = rows.take(ixl, axis=1), rows.take(ixl + 1, axis=1)
    right -= left
    right *= tx
    right += left
    return right


def _value_noise_at(x: np.ndarray, y: np.ndarray, spacing: float, salt: int) -> np.ndarray:
    """The same noise as `_value_noise`, at arbitrary points (level-0 coordinates)."""
    gx, gy = np.asarray(x, np.float64) / spacing, np.asarray(y, np.float64) / spacing
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    tx, ty = _smooth((gx - ix).astype(np.float32)), _smooth((gy - iy).astype(np.float32))

    def v(dx: int, dy: int) -> np.ndarray:
        return _hash_uniform(ix + dx, iy + dy, salt) * 2 - 1

    top = v(0, 0) * (1 - tx) + v(1, 0) * tx
    bottom = v(0, 1) * (1 - tx) + v(1, 1) * tx
    return top * (1 - ty) + bottom * ty


def _sprites(rng: np.random.Generator, n: int, cell: int, kind: _Kind, mpp: float) -> np.ndarray:
    """`n` images (haematoxylin) of one kind of nucleus, 2 cells wide, the cell in their middle.

    The nucleus centre lies anywhere in the middle cell and the nucleus may spill half a cell
    beyond it, so a grid of such cells shows no lattice.
    """
    from scipy.ndimage import gaussian_filter

    half = cell / 2 - 0.5
    r = kind.r / mpp * (1 + kind.spread * rng.uniform(-1, 1, n))
    e = 1 + kind.elong * rng.uniform(0, 1, n)
    a, b = r * np.sqrt(e), r / np.sqrt(e)
    ks = np.arange(2, 6)  # harmonics of the outline
    amp = (
        kind.irregular
        * rng.uniform(0.3, 1.0, (n, 1))
        / ks**0.8
        * rng.uniform(0.3, 1.0, (n, len(ks)))
    )
    phase = rng.uniform(0, 2 * math.pi, (n, len(ks)))
    fit = np.minimum(1.0, half / np.maximum(a * (1 + amp.sum(1)), 1e-6))
    a, b = np.maximum(a * fit, 0.7), np.maximum(b * fit, 0.6)
    cx = cell / 2 + rng.uniform(0, cell, n)
    cy = cell / 2 + rng.uniform(0, cell, n)
    cell = 2 * cell  # the canvas
    th = rng.uniform(0, math.pi, n)

    def col(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32)[:, None, None]

    yy, xx = (np.mgrid[0:cell, 0:cell] + 0.5).astype(np.float32)
    dx, dy = xx[None] - col(cx), yy[None] - col(cy)
    c, s = col(np.cos(th)), col(np.sin(th))
    u = (c * dx + s * dy) / col(a)
    v = (-s * dx + c * dy) / col(b)
    rho = np.hypot(u, v)
    # Wavy outline: radius 1 + sum_k amp_k cos(k phi + phase_k), with z = e^(i phi).
    z = (u + 1j * v) / np.maximum(rho, 1e-6)
    zk = z.copy()
    edge = np.ones_like(rho)
    for j in range(len(ks)):  # k = 2, 3, 4, 5
        zk *= z
        rot = np.exp(1j * phase[:, j]).astype(np.complex64)[:, None, None]
        edge += col(amp[:, j]) * (zk * rot).real
    d = rho / edge
    alpha = np.clip((1 - d) * col(b) + 0.5, 0, 1)
    noise = rng.standard_normal((n, cell, cell), dtype=np.float32)
    grain = gaussian_filter(noise, sigma=(0, 0.6 / mpp, 0.6 / mpp))
    grain /= grain.std() + 1e-9
    if kind.vesicular:
        profile = 0.42 + 0.58 * np.clip((d - 0.55) / 0.35, 0, 1) ** 2
        # One or two nucleoli, off centre.
        for _ in range(2):
            na = rng.uniform(0, 2 * math.pi, n)
            nr = rng.uniform(0, 0.45, n)
            nx = cx + nr * a * np.cos(na)
            ny = cy + nr * b * np.sin(na)
            size = rng.uniform(0.45, 0.9, n) / mpp * (rng.uniform(0, 1, n) < 0.8)
            dist2 = (xx[None] - col(nx)) ** 2 + (yy[None] - col(ny)) ** 2
            profile = profile + 1.1 * np.exp(-dist2 / (2 * col(np.maximum(size, 1e-3)) ** 2))
    else:
        profile = 0.9 + 0.15 * np.clip(d, 0, 1)
    gain = kind.haem * col(rng.uniform(0.85, 1.15, n))
    out = gain * alpha * np.maximum(profile * (1 + kind.texture * grain), 0.1)
    return out.astype(np.float32)


class _Layer:
    """One grid of cells: its size in px and, per render label, sprites and presence."""

    def __init__(self, spec: dict, *, mpp: float, rng: np.random.Generator, salts: list[int]):
        self.cell = cell = max(4, 2 * round(spec["cell_um"] / mpp / 2))  # even
        self.present = np.zeros(_N_LABELS, np.float32)
        self.first = np.zeros(_N_LABELS, np.int64)  # first sprite of each label (0: the empty one)
        bank = [np.zeros((1, 2 * cell, 2 * cell), np.float32)]
        count = 1
        for label in range(1, _N_LABELS):
            if label not in spec:
                continue
            p, mix = spec[label]
            self.present[label] = p
            self.first[label] = count
            weights = np.array([wt for wt, _ in mix])
            picks = rng.choice(len(mix), size=_VARIANTS, p=weights / weights.sum())
            for i, (_, kind) in enumerate(mix):
                k = int((picks == i).sum())
                if k:
                    bank.append(_sprites(rng, k, cell, kind, mpp))
            count += _VARIANTS
        self.bank = np.concatenate(bank)  # (sprites, 2 cell, 2 cell)
        self.salts = salts


class _Renderer:
    """Draws any level-0 rectangle of the slide, deterministically, from the geometry."""

    def __init__(self, geometry: _Geometry, *, width: int, height: int, mpp: float, seed: int):
        self.width, self.height, self.mpp, self.seed = width, height, mpp, seed
        # Paint order: later wins.
        self.paint = [
            (CAPSULE, _Shape(geometry.tissue)),
            (CORTEX, _Shape(geometry.capsule_inner)),
            (SINUS, _Shape(geometry.sinus)),
            (MANTLE, _Shape(geometry.follicle)),
            (GERMINAL, _Shape(geometry.germinal)),
            (TUMOUR, _Shape(geometry.tumour)),
        ]
        self.tissue_bounds = geometry.tissue.bounds
        rng = np.random.default_rng([seed, 7])
        self.layers = [
            _Layer(spec, mpp=mpp, rng=rng, salts=[_salt(seed, 100 + n, k) for k in range(2)])
            for n, spec in enumerate(_LAYERS)
        ]
        self.warp = _WARP_UM / mpp
        self.warp_spacing = _WARP_SPACING_UM / mpp
        self.margin = int(math.ceil(self.warp)) + 1
        self.pad = self.margin + 2 * max(layer.cell for layer in self.layers) + 2
        self.salts = [_salt(seed, 200 + k) for k in range(6)]
        self.um = 1.0 / mpp  # px per micrometre
        # Per-slide stain variation (as between labs and batches), baked into a colour table
        # indexed by quantised (haematoxylin, eosin) optical density.
        h_vec = _HAEMATOXYLIN * rng.uniform(0.93, 1.07, 3) * rng.uniform(0.88, 1.12)
        e_vec = _EOSIN * rng.uniform(0.93, 1.07, 3) * rng.uniform(0.85, 1.15)
        hq = np.arange(_HQ)[:, None, None] / _QSCALE
        eq = np.arange(_EQ)[None, :, None] / _QSCALE
        rgb = 255 * np.exp(-(hq * h_vec + eq * e_vec + _GLASS_OD))
        lut = np.zeros((_HQ, _EQ, 4), np.uint8)
        lut[..., :3] = np.clip(np.round(rgb), 0, 255)
        self.lut = lut.view(np.uint32).reshape(-1)
        for layer in self.layers:
            layer.bank *= np.float32(_QSCALE)
        self.eosin_base = (_EOSIN_BASE * _QSCALE).astype(np.float32)
        self.haem_base = (_HAEM_BASE * _QSCALE).astype(np.float32)
        # A block of dither (pixel grain), sampled at a random offset per chunk.
        self.grain = np.random.default_rng([seed, 8]).uniform(0, _DITHER, (512, 4096))
        self.grain = self.grain.astype(np.float32)

    def labels(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Render labels of a level-0 rectangle (may reach outside the slide)."""
        lab = np.zeros((h, w), np.uint8)
        for value, shape in self.paint:
            cover = shape.coverage(x0, y0, w, h)
            if cover == 2:
                lab.fill(value)
            elif cover == 1:
                np.copyto(lab, np.uint8(value), where=shape.fill(x0, y0, w, h))
        return lab

    def _grain(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        gh, gw = self.grain.shape
        if h > gh or w > gw:
            return rng.uniform(0, _DITHER, (h, w)).astype(np.float32)
        oy, ox = int(rng.integers(0, gh - h + 1)), int(rng.integers(0, gw - w + 1))
        return self.grain[oy : oy + h, ox : ox + w]

    def _nuclei(self, layer: _Layer, lab: np.ndarray, ox: int, oy: int, out: np.ndarray) -> None:
        """Max one layer's nuclei (haematoxylin, unwarped) into `out`, whose origin is (ox, oy)."""
        c, pad = layer.cell, self.pad
        half = c // 2
        h2, w2 = out.shape
        gx = np.arange((ox - half) // c - 1, (ox + w2 + half) // c + 1)
        gy = np.arange((oy - half) // c - 1, (oy + h2 + half) // c + 1)
        # Each cell takes the label found where its centre lands once warped.
        ccx, ccy = np.broadcast_arrays((gx[None, :] + 0.5) * c, (gy[:, None] + 0.5) * c)
        wxc = _value_noise_at(ccx, ccy, self.warp_spacing, self.salts[4]) * self.warp
        wyc = _value_noise_at(ccx, ccy, self.warp_spacing, self.salts[5]) * self.warp
        lab_x0 = ox + self.margin - pad
        lab_y0 = oy + self.margin - pad
        lx = np.clip(np.floor(ccx - wxc).astype(np.int64) - lab_x0, 0, lab.shape[1] - 1)
        ly = np.clip(np.floor(ccy - wyc).astype(np.int64) - lab_y0, 0, lab.shape[0] - 1)
        cls = lab[ly, lx]
        u0 = _hash_uniform(gx[None, :], gy[:, None], layer.salts[0])
        on = u0 < layer.present[cls]
        if not on.any():
            return
        u1 = _hash_uniform(gx[None, :], gy[:, None], layer.salts[1])
        sprite = np.where(on, layer.first[cls] + (u1 * _VARIANTS).astype(np.int64), 0)
        # Sprites are two cells wide, so cells of one parity (every other row and column) tile
        # the plane without overlapping: compose the four parities one after the other.
        size = 2 * c
        for jy in (0, 1):
            for jx in (0, 1):
                sub = sprite[jy::2, jx::2]
                if not sub.any():
                    continue
                ny, nx = sub.shape
                image = (
                    layer.bank.take(sub, axis=0).transpose(0, 2, 1, 3).reshape(ny * size, nx * size)
                )
                ix0, iy0 = gx[jx] * c - half - ox, gy[jy] * c - half - oy  # image origin in `out`
                xa, xb = max(0, ix0), min(w2, ix0 + nx * size)
                ya, yb = max(0, iy0), min(h2, iy0 + ny * size)
                if xa < xb and ya < yb:
                    region = out[ya:yb, xa:xb]
                    np.maximum(region, image[ya - iy0 : yb - iy0, xa - ix0 : xb - ix0], out=region)

    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """The RGB uint8 pixels of the level-0 rectangle (x0, y0, w, h) (maybe a strided view)."""
        rng = np.random.default_rng([self.seed, 1, x0, y0])
        dither = self._grain(rng, h, w)  # uniform in [0, _DITHER)
        bx0, by0, bx1, by1 = self.tissue_bounds
        pad = self.pad
        lab = None
        if x0 + w + pad > bx0 and x0 - pad < bx1 and y0 + h + pad > by0 and y0 - pad < by1:
            lab = self.labels(x0 - pad, y0 - pad, w + 2 * pad, h + 2 * pad)
            if not lab.any():
                lab = None
        if lab is None:  # glass only
            q = dither.astype(np.intp)
            idx = q * _EQ
            idx += q
            return self.lut.take(idx).view(np.uint8).reshape(h, w, 4)[:, :, :3]

        core = lab[pad : pad + h, pad : pad + w]
        um, ns, m = self.um, self.salts, self.margin
        # Nuclei, drawn on straight grids of cells, then sampled through a smooth warp.
        w2, h2 = w + 2 * m, h + 2 * m
        straight = np.zeros((h2, w2), np.float32)
        here = np.flatnonzero(np.bincount(lab.reshape(-1), minlength=_N_LABELS))
        for layer in self.layers:
            if layer.present[here].any():
                self._nuclei(layer, lab, x0 - m, y0 - m, straight)
        warp = np.float32(self.warp)
        wx = _value_noise(x0, y0, w, h, self.warp_spacing, ns[4])
        wx *= warp
        wx += np.arange(w, dtype=np.float32) + np.float32(m + 0.5)
        wy = _value_noise(x0, y0, w, h, self.warp_spacing, ns[5])
        wy *= warp
        wy += np.arange(h, dtype=np.float32)[:, None] + np.float32(m + 0.5)
        idx = wy.astype(np.intp)
        idx *= w2
        idx += wx.astype(np.intp)
        del wx, wy
        haem = straight.reshape(-1).take(idx)  # in colour-table steps
        haem *= core > 0

        # Cytoplasm texture: two octaves at unrelated spacings hide the noise lattice.
        mid = _value_noise(x0, y0, w, h, 9.3 * um, ns[1])
        mid *= np.float32(0.6)
        mid += np.float32(0.4) * _value_noise(x0, y0, w, h, 4.1 * um, ns[0])
        coarse = _value_noise(x0, y0, w, h, 250 * um, ns[2], step=8) * np.float32(0.6)
        coarse += _value_noise(x0, y0, w, h, 60 * um, ns[3], step=8) * np.float32(0.4)
        # Cytoplasm and stroma: eosin, pushed aside by nuclei.
        eos = self.eosin_base.take(core)
        f = _EOSIN_VAR.take(core)
        f *= mid
        f += 1
        f += np.float32(0.15) * coarse
        eos *= f
        np.multiply(haem, np.float32(-0.45 / _QSCALE), out=f)
        f += 1
        np.maximum(f, np.float32(0.25), out=f)
        eos *= f
        np.multiply(mid, np.float32(0.5), out=f)
        f += 1
        f *= self.haem_base.take(core)
        haem += f
        coarse *= np.float32(0.1)
        coarse += 1
        haem *= coarse
        # Quantise (dithered) and look the colours up.
        haem += dither
        eos += dither
        np.clip(haem, 0, _HQ - 1, out=haem)
        np.clip(eos, 0, _EQ - 1, out=eos)
        idx = haem.astype(np.intp)
        idx *= _EQ
        idx += eos.astype(np.intp)
        return self.lut.take(idx).view(np.uint8).reshape(h, w, 4)[:, :, :3]


# --------------------------------------------------------------------------------------------
# Writing


def _level_shapes(width: int, height: int, tile: int) -> list[tuple[int, int]]:
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append((max(1, h // 2), max(1, w // 2)))
    return shapes


def _half(strip: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """2x2 box average (rounded) of the top-left (2*rows, 2*cols) of an RGB `strip`."""
    v = strip[: 2 * rows, : 2 * cols].reshape(rows, 2, cols * 6)
    pairs = v[:, 0].astype(np.uint16)
    pairs += v[:, 1]
    pairs = pairs.reshape(rows, cols, 2, 3)
    out = pairs[:, :, 0] + pairs[:, :, 1]
    out += 2
    out >>= 2
    return out.astype(np.uint8)


def _buffer(shape: tuple[int, int, int], path: Path) -> np.ndarray:
    """An RGB level buffer: in memory when small, else a temporary memory-mapped file."""
    if math.prod(shape) <= _IN_MEMORY_BYTES:
        return np.empty(shape, np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)


def _write_masks(
    geometry: _Geometry, masks_path: Path, *, width: int, height: int, mpp: float, ds: int
) -> None:
    arrays = {
        "tumour": _rasterise(_Shape(geometry.tumour), width, height, ds),
        "follicle": _rasterise(_Shape(geometry.follicle), width, height, ds),
        "sinus": _rasterise(_Shape(geometry.sinus), width, height, ds),
        "tissue": _rasterise(_Shape(geometry.tissue), width, height, ds),
    }
    with open(masks_path, "wb") as fh:
        np.savez_compressed(
            fh,
            **arrays,
            downsample=np.int64(ds),
            width=np.int64(width),
            height=np.int64(height),
            mpp=np.float64(mpp),
        )


def _write_regions(geometry: _Geometry, regions_path: Path, *, width: int, height: int, mpp: float):
    features = []
    for key in ("tissue", "sinus", "follicle", "tumour"):
        for poly in _polygons(getattr(geometry, key)):
            features.append(
                {
                    "type": "Feature",
                    "geometry": mapping(poly),
                    "properties": {"class": GEOJSON_CLASS[key]},
                }
            )
    doc = {
        "type": "FeatureCollection",
        "properties": {
            "synthetic": True,
            "coordinates": "level-0 pixels",
            "width": width,
            "height": height,
            "mpp": mpp,
        },
        "features": features,
    }
    regions_path.write_text(json.dumps(doc))


def load_masks(masks_path: Path) -> tuple[dict[str, np.ndarray], int]:
    """The ground-truth masks ({"tumour", "follicle", "sinus", "tissue"} -> bool) and downsample.

    Mask pixel (i, j) stands for the level-0 block [j*ds, (j+1)*ds) x [i*ds, (i+1)*ds), sampled at
    its centre; the shape is (ceil(height/ds), ceil(width/ds)).
    """
    with np.load(masks_path) as data:
        masks = {k: data[k].astype(bool) for k in MASK_CLASSES}
        return masks, int(data["downsample"])


def generate_slide(
    path: Path,
    *,
    width: int,
    height: int,
    mpp: float = 0.5,
    seed: int = 0,
    tumour: bool = True,
    n_follicles: int | None = None,
    n_tumour_nests: int | None = None,
    tile_size: int = 256,
    quality: int = 85,
    mask_downsample: int = 8,
    progress: Progress | None = None,
    workers: int | None = None,
) -> SyntheticSlide:
    """Write a synthetic pyramidal JPEG TIFF lymph-node slide at `path`, with its ground truth.

    `tumour=False` gives a negative node (still with follicles, the hard negatives);
    `n_follicles` / `n_tumour_nests` default to counts that suit the size. The masks
    (`load_masks`) are at 1/`mask_downsample`; `progress(done, total)` counts tiles over all
    levels. Deterministic for a given seed and arguments (whatever `workers`: the threads that
    render and encode tiles; default the CPU count, at most 8). Memory stays bounded: level 0 is
    streamed tile row by tile row, and large reduced levels go through temporary memory-mapped
    files beside `path`, removed afterwards.
    """
    if width < 64 or height < 64:
        raise ValueError("a synthetic slide needs at least 64 x 64 px")
    if tile_size % 16:
        raise ValueError("tile_size must be a multiple of 16")
    if mpp <= 0 or mask_downsample < 1:
        raise ValueError("mpp and mask_downsample must be positive")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    masks_path = path.with_name(stem + ".masks.npz")
    regions_path = path.with_name(stem + ".regions.geojson")
    workers = workers or min(8, os.cpu_count() or 1)

    geometry = _build_geometry(
        np.random.default_rng(seed),
        width=width,
        height=height,
        mpp=mpp,
        tumour=tumour,
        n_follicles=n_follicles,
        n_tumour_nests=n_tumour_nests,
    )
    _write_masks(geometry, masks_path, width=width, height=height, mpp=mpp, ds=mask_downsample)
    _write_regions(geometry, regions_path, width=width, height=height, mpp=mpp)
    renderer = _Renderer(geometry, width=width, height=height, mpp=mpp, seed=seed)

    ts = tile_size
    shapes = _level_shapes(width, height, ts)
    total = sum(-(-h // ts) * -(-w // ts) for h, w in shapes)
    done = 0
    chunk_w = ts * max(1, 2048 // ts)
    temps: list[Path] = []

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None and (done % 16 == 0 or done == total):
            progress(done, total)

    def render_strip(y0: int) -> np.ndarray:
        h = min(ts, height - y0)
        strip = np.empty((h, width, 3), np.uint8)
        for x0 in range(0, width, chunk_w):
            w = min(chunk_w, width - x0)
            strip[:, x0 : x0 + w] = renderer.render(x0, y0, w, h)
        return strip

    def strips_level0(pool: ThreadPoolExecutor) -> Iterator[tuple[int, np.ndarray]]:
        """Level-0 tile rows, rendered ahead by the pool (at most workers + 1 rows in memory)."""
        ys = list(range(0, height, ts))
        pending: deque = deque()
        for i, y0 in enumerate(ys):
            pending.append((y0, pool.submit(render_strip, y0)))
            if i >= workers:
                y, fut = pending.popleft()
                yield y, fut.result()
        while pending:
            y, fut = pending.popleft()
            yield y, fut.result()

    def strips_from(buf: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        for y0 in range(0, buf.shape[0], ts):
            yield y0, np.asarray(buf[y0 : y0 + ts])

    def tiles(strips: Iterator[tuple[int, np.ndarray]], nxt: np.ndarray | None) -> Iterator:
        for y0, strip in strips:
            if nxt is not None:
                r0 = y0 // 2
                r1 = min((y0 + strip.shape[0]) // 2, nxt.shape[0])
                if r1 > r0:
                    nxt[r0:r1] = _half(strip, r1 - r0, nxt.shape[1])
            for x0 in range(0, strip.shape[1], ts):
                yield strip[:, x0 : x0 + ts]
                tick()

    res = 1e4 / mpp  # pixels per centimetre
    bigtiff = width * height * 3 * 4 // 3 > 2**31
    description = (
        f"NodeScope synthetic lymph node (generated, not real tissue); seed={seed}; "
        f"tumour={bool(tumour)}; mpp={mpp}"
    )
    try:
        with (
            ThreadPoolExecutor(max(1, workers)) as pool,
            tifffile.TiffWriter(path, bigtiff=bigtiff) as tif,
        ):
            prev: np.ndarray | None = None
            for level, (h, w) in enumerate(shapes):
                nxt = None
                if level + 1 < len(shapes):
                    nh, nw = shapes[level + 1]
                    tmp = path.with_name(f".{stem}.level{level + 1}.tmp")
                    temps.append(tmp)
                    nxt = _buffer((nh, nw, 3), tmp)
                strips = strips_level0(pool) if level == 0 else strips_from(prev)
                tif.write(
                    tiles(strips, nxt),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(ts, ts),
                    photometric="rgb",
                    compression="jpeg",
                    compressionargs={"level": quality},
                    resolution=(res / 2**level, res / 2**level),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if level else 0,
                    description=description if level == 0 else None,
                    metadata=None,
                    maxworkers=workers,
                    buffersize=32 * 2**20,  # tiles held for encoding at once
                )
                prev = nxt
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    if progress is not None:
        progress(total, total)
    return SyntheticSlide(
        path=path,
        masks_path=masks_path,
        regions_path=regions_path,
        width=width,
        height=height,
        mpp=mpp,
        has_tumour=not geometry.tumour.is_empty,
    )
