"""Mosaic "nodes" of real tissue: labelled H&E patches laid out in a grid, with exact ground truth.

Input is a folder in PatchCamelyon (PCam) layout: `0/` holds non-tumour patches, `1/` tumour
patches (any image Pillow reads; PCam's are 96 x 96 px JPEG at about 0.972 µm/px). The label rule
is PCam's: label 1 means that the centre 32 x 32 px of the patch holds at least one tumour pixel;
tumour in the outer ring of a patch does not count, and nothing is known about where in the
patch the tumour lies. Patches are deduplicated by content hash first (PCam repeats some tumour
patches byte for byte); an image found under both labels is dropped as ambiguous.

Layout of a node (level-0 pixels, at the patches' own µm/px, never resampled): a `grid` x `grid`
lattice of patch cells inside a one-cell glass margin. With `round_node` (the default) only the
cells whose centre lies inside the disc inscribed in the lattice hold tissue, the rest stay glass
(RGB 240, like the synthetic slides), so the tissue mask finds one round node; otherwise every
cell holds a patch. Around the tissue, in the glass, a thin stained-pink line (`outline`, a
capsule stand-in `outline_px` wide; no patch pixel is touched) closes the node: the platform's
tissue mask (Otsu on saturation, enclosed holes filled) otherwise drops the pale patches (fat,
lightly stained slides: half of PCam's non-tumour patches are paler than its threshold), and as
they reach the glass outside, holes are not filled; without the line the mask kept about half
of a node, with it all of it. A negative node holds non-tumour patches only. A positive node
holds one or more tumour deposits: each a k x k block of tumour patches (k from
`deposit_sides`) placed at random wholly inside the node, deposits at least one non-tumour cell
apart, every other cell a non-tumour patch. Patches are drawn without replacement from one
seeded pool, so within one build no two nodes share a patch.

Ground truth is written beside `<stem>.tiff` as `<stem>.regions.geojson` (the synthetic slides'
convention, so `inference.demo` and label tests read it the same way): a FeatureCollection of
level-0 pixel polygons, one "tissue" feature (the placed patch squares) and one "tumour" feature
per deposit. A deposit polygon is the union of its WHOLE patch squares (`tumour_extent` says so):
only the centres are labelled, so this is the deposit as built (a block of tumour patches); the
certain part, the centre squares (each holds tumour), is measured in `centre_*` properties.
Because of the label rule a label-0 patch may still hold tumour in its outer ring, so "negative"
means no placed patch has tumour in its centre, the truth PCam gives and no more. Each deposit
records its block, its extent and largest dimension (the greatest distance across the polygon:
the diagonal of a square block) in mm and its area in mm².
The collection's properties hold the node's truth ("positive"/"negative"), µm/px, the label rule,
and a foreign member `patches` lists every placed patch: cell, box, centre box, label, deposit,
source file (relative to the source folder) and SHA-256.

The slides are real tissue (`synthetic` is false when imported), but a mosaic is not a whole
slide: neighbouring patches come from different slides and hospitals, seams show, and deposit
shapes are squares. The TIFF's ImageDescription and the manifest's `description` column say so.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from shapely.geometry import box, mapping
from shapely.ops import unary_union

PCAM_MPP = 0.972  # µm per pixel of PCam patches (CAMELYON16 at 0.243 µm/px, downsampled 4x)
PCAM_CENTRE_PX = 32  # the labelled centre square of a 96 px PCam patch
GLASS = 240  # background grey outside the node (no stain: the tissue mask calls it glass)
CAPSULE = (205, 95, 160)  # the outline's colour: eosin pink, saturation 0.54
PATCH_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
TUMOUR_EXTENT = "patch squares"
LABEL_RULE = (
    "PCam: label 1 means the centre {c} x {c} px of the {p} px patch holds at least one tumour "
    "pixel; the outer ring is not labelled (a label-0 patch may hold tumour there)"
)
MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ("case", "node", "file", "status", "description")


class NotEnoughPatches(ValueError):
    """The source folder holds fewer distinct patches of a label than the build needs."""


@dataclass(frozen=True)
class Patch:
    """A distinct labelled patch of the source folder."""

    path: Path
    sha256: str
    label: int  # 0 non-tumour, 1 tumour (in the centre square)


@dataclass
class PatchPool:
    """The distinct patches of a PCam-layout folder, by label, and what deduplication dropped."""

    source: Path
    patches: dict[int, list[Patch]]
    duplicates: int = 0  # files byte-identical to one kept (same label)
    conflicts: int = 0  # distinct images found under both labels (all copies dropped)
    patch_px: int = 0

    def count(self, label: int) -> int:
        return len(self.patches.get(label, []))


@dataclass(frozen=True)
class Deposit:
    """A tumour deposit: a block of tumour patch cells (row, col) of the grid."""

    cells: tuple[tuple[int, int], ...]
    side: int


@dataclass(frozen=True)
class Layout:
    """Which grid cells hold tissue and which of them form tumour deposits."""

    grid: int
    cells: tuple[tuple[int, int], ...]  # row-major
    deposits: tuple[Deposit, ...]

    @property
    def tumour_cells(self) -> set[tuple[int, int]]:
        return {cell for d in self.deposits for cell in d.cells}


@dataclass(frozen=True)
class Mosaic:
    """A written mosaic node and its ground truth."""

    path: Path
    regions_path: Path
    width: int
    height: int
    mpp: float
    positive: bool
    n_patches: int
    n_tumour_patches: int
    deposits: tuple[dict, ...]  # the deposits' properties as written

    @property
    def truth(self) -> str:
        return "positive" if self.positive else "negative"


@dataclass
class MosaicBuild:
    """What `build_mosaics` wrote: the nodes, their import manifest and the pool it drew from."""

    mosaics: list[Mosaic]
    manifest_path: Path
    pool: PatchPool
    rows: list[dict[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Patches


def scan_patches(source: Path) -> PatchPool:
    """The distinct patches under `source/0` and `source/1`, deduplicated by SHA-256.

    Of byte-identical files with one label, the first by name is kept; an image present under
    both labels is dropped everywhere (its label is contradictory). All patches must be square
    and of one size (checked on the patches placed, see `read_patch`; here the first one sets it).
    """
    source = Path(source)
    if not (source / "0").is_dir() and not (source / "1").is_dir():
        raise ValueError(f"{source}: no 0/ or 1/ folder (expected PCam layout: 0/ and 1/)")
    seen: dict[str, Patch] = {}
    labels_of: dict[str, set[int]] = {}
    duplicates = 0
    for label in (0, 1):
        folder = source / str(label)
        if not folder.is_dir():
            continue
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PATCH_SUFFIXES
        )
        for path in files:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            labels_of.setdefault(digest, set()).add(label)
            if digest in seen:
                if seen[digest].label == label:
                    duplicates += 1
                continue
            seen[digest] = Patch(path=path, sha256=digest, label=label)
    conflicting = {d for d, labels in labels_of.items() if len(labels) > 1}
    patches: dict[int, list[Patch]] = {0: [], 1: []}
    for digest, patch in seen.items():
        if digest not in conflicting:
            patches[patch.label].append(patch)
    pool = PatchPool(
        source=source, patches=patches, duplicates=duplicates, conflicts=len(conflicting)
    )
    first = next(iter(patches[0] or patches[1]), None)
    if first is not None:
        with Image.open(first.path) as im:
            pool.patch_px = im.size[0]
    return pool


def read_patch(patch: Patch, size: int) -> np.ndarray:
    """The patch as RGB uint8 (size x size x 3); a patch of another size is an error."""
    with Image.open(patch.path) as im:
        if im.size != (size, size):
            raise ValueError(f"{patch.path}: {im.size[0]} x {im.size[1]} px, expected {size} px")
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


class _Sampler:
    """Draws patches without replacement from a pool, in a seeded order."""

    def __init__(self, pool: PatchPool, rng: np.random.Generator):
        self.left = {}
        for label, patches in pool.patches.items():
            order = rng.permutation(len(patches))
            self.left[label] = [patches[i] for i in order]

    def take(self, label: int, n: int) -> list[Patch]:
        left = self.left.get(label, [])
        if n > len(left):
            raise NotEnoughPatches(f"needs {n} more patches of label {label}, {len(left)} left")
        taken, self.left[label] = left[:n], left[n:]
        return taken


# --------------------------------------------------------------------------------------------
# Layout


def node_cells(grid: int, *, round_node: bool = True) -> list[tuple[int, int]]:
    """The cells (row, col) of a grid x grid lattice that hold tissue: those whose centre lies in
    the inscribed disc (radius grid / 2) when `round_node`, else all; row-major."""
    if grid < 1:
        raise ValueError("grid must be at least 1")
    centre, radius = grid / 2, grid / 2
    return [
        (r, c)
        for r in range(grid)
        for c in range(grid)
        if not round_node or (r + 0.5 - centre) ** 2 + (c + 0.5 - centre) ** 2 <= radius**2
    ]


def plan_layout(
    grid: int,
    deposit_sides: Sequence[int],
    rng: np.random.Generator,
    *,
    round_node: bool = True,
) -> Layout:
    """Place a k x k block of tumour cells for each k of `deposit_sides` (largest first) wholly
    inside the node, at random, each at least one cell from the others (so deposits stay apart)."""
    cells = node_cells(grid, round_node=round_node)
    inside = set(cells)
    blocked: set[tuple[int, int]] = set()
    deposits: list[Deposit] = []
    for k in sorted(deposit_sides, reverse=True):
        if k < 1:
            raise ValueError("a deposit is at least 1 x 1 patches")
        candidates = []
        for r0 in range(grid - k + 1):
            for c0 in range(grid - k + 1):
                block = [(r0 + i, c0 + j) for i in range(k) for j in range(k)]
                if all(cell in inside and cell not in blocked for cell in block):
                    candidates.append(block)
        if not candidates:
            raise ValueError(f"no room for a {k} x {k} deposit in a grid of {grid}")
        block = candidates[int(rng.integers(len(candidates)))]
        deposits.append(Deposit(cells=tuple(block), side=k))
        for r, c in block:  # the block and a ring of one cell around it
            blocked.update((r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1))
    return Layout(grid=grid, cells=tuple(cells), deposits=tuple(deposits))


# --------------------------------------------------------------------------------------------
# Writing


def _pyramid(image: np.ndarray, tile: int) -> list[np.ndarray]:
    """`image` and its 2x2-averaged reductions until the longer side fits in one tile."""
    levels = [image]
    while max(levels[-1].shape[:2]) > tile:
        prev = levels[-1]
        h, w = max(1, prev.shape[0] // 2), max(1, prev.shape[1] // 2)
        v = prev[: 2 * h, : 2 * w].astype(np.uint16).reshape(h, 2, w, 2, 3).sum(axis=(1, 3))
        levels.append(((v + 2) // 4).astype(np.uint8))
    return levels


def write_pyramid(
    path: Path,
    image: np.ndarray,
    *,
    mpp: float,
    tile: int = 256,
    quality: int = 90,
    description: str = "",
) -> int:
    """Write `image` as a tiled pyramidal JPEG TIFF with its µm/px (TIFF resolution, as the
    synthetic slides do: large-image reads mm_x from it); returns the number of levels."""
    levels = _pyramid(image, tile)
    res = 1e4 / mpp  # pixels per centimetre
    with tifffile.TiffWriter(path, bigtiff=image.nbytes * 4 // 3 > 2**31) as tif:
        for i, level in enumerate(levels):
            tif.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                resolution=(res / 2**i, res / 2**i),
                resolutionunit="CENTIMETER",
                subfiletype=1 if i else 0,
                description=description if i == 0 else None,
                metadata=None,
            )
    return len(levels)


def _draw_outline(image: np.ndarray, layout: Layout, *, p: int, margin: int, width: int) -> None:
    """Paint a `width` px band of `CAPSULE` in the glass just outside the tissue cells."""
    from scipy import ndimage

    n = layout.grid + 2 * margin
    cells = np.zeros((n, n), bool)
    for r, c in layout.cells:
        cells[margin + r, margin + c] = True
    tissue = np.kron(cells, np.ones((p, p), bool))
    band = ndimage.maximum_filter(tissue, size=2 * width + 1) & ~tissue
    image[band] = CAPSULE


def _largest_dimension(geom) -> float:
    """The greatest distance between two points of a polygon (max Feret diameter)."""
    pts = np.asarray(geom.convex_hull.exterior.coords)
    return max((float(np.hypot(*(a - b))) for a, b in combinations(pts, 2)), default=0.0)


def _measure(geom, mpp: float) -> dict:
    x0, y0, x1, y1 = geom.bounds
    mm = mpp / 1000
    return {
        "extent_mm": [round((x1 - x0) * mm, 4), round((y1 - y0) * mm, 4)],
        "largest_dimension_mm": round(_largest_dimension(geom) * mm, 4),
        "area_mm2": round(geom.area * mm * mm, 6),
    }


def build_mosaic(
    path: Path,
    *,
    layout: Layout,
    sampler: _Sampler,
    pool: PatchPool,
    mpp: float = PCAM_MPP,
    centre_px: int = PCAM_CENTRE_PX,
    margin: int = 1,
    outline: bool = True,
    tile: int = 256,
    quality: int = 90,
    provenance: dict | None = None,
) -> Mosaic:
    """Draw the layout's patches from `sampler`, write the TIFF at `path` and its ground truth
    (`<stem>.regions.geojson`). See the module docstring for the layout and the label rule."""
    p = pool.patch_px
    if p < 1 or centre_px > p:
        raise ValueError(f"patch size {p} px cannot hold a {centre_px} px centre")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    regions_path = path.with_name(stem + ".regions.geojson")

    tumour_cells = layout.tumour_cells
    normal_cells = [cell for cell in layout.cells if cell not in tumour_cells]
    # Draw everything first, so a shortage leaves no half-written node.
    tumour_patches = sampler.take(1, len(tumour_cells))
    normal_patches = sampler.take(0, len(normal_cells))
    deposit_of = {cell: i for i, d in enumerate(layout.deposits) for cell in d.cells}
    tumour_order = [cell for d in layout.deposits for cell in d.cells]
    placed = sorted(
        [*zip(tumour_order, tumour_patches, strict=True)]
        + [*zip(normal_cells, normal_patches, strict=True)],
        key=lambda item: item[0],
    )

    side = (layout.grid + 2 * margin) * p
    image = np.full((side, side, 3), GLASS, np.uint8)
    off = (p - centre_px) // 2
    outline_px = 0
    if outline and margin > 0:
        # at least 2 px on the <= 2048 px thumbnail the tissue mask is made from
        outline_px = max(4, 2 * math.ceil(side / 2048))
        _draw_outline(image, layout, p=p, margin=margin, width=outline_px)
    records = []
    for (r, c), patch in placed:
        x0, y0 = (margin + c) * p, (margin + r) * p
        image[y0 : y0 + p, x0 : x0 + p] = read_patch(patch, p)
        try:
            rel = patch.path.relative_to(pool.source).as_posix()
        except ValueError:
            rel = str(patch.path)
        records.append(
            {
                "row": r,
                "col": c,
                "box": [x0, y0, x0 + p, y0 + p],
                "centre_box": [x0 + off, y0 + off, x0 + off + centre_px, y0 + off + centre_px],
                "label": patch.label,
                "deposit": deposit_of.get((r, c)),
                "file": rel,
                "sha256": patch.sha256,
            }
        )

    def square(r: int, c: int, inset: int = 0, size: int | None = None):
        x0, y0 = (margin + c) * p + inset, (margin + r) * p + inset
        return box(x0, y0, x0 + (size or p), y0 + (size or p))

    tissue = unary_union([square(r, c) for r, c in layout.cells])
    features = [
        {
            "type": "Feature",
            "geometry": mapping(tissue),
            "properties": {"class": "tissue", **_measure(tissue, mpp)},
        }
    ]
    deposits = []
    for i, d in enumerate(layout.deposits):
        poly = unary_union([square(r, c) for r, c in d.cells])
        centres = unary_union([square(r, c, off, centre_px) for r, c in d.cells])
        certain = _measure(centres, mpp)
        props = {
            "class": "tumour",
            "deposit": i,
            "block": [d.side, d.side],
            "patches": len(d.cells),
            "tumour_extent": TUMOUR_EXTENT,
            **_measure(poly, mpp),
            "centre_extent_mm": certain["extent_mm"],
            "centre_area_mm2": certain["area_mm2"],
        }
        deposits.append(props)
        features.append({"type": "Feature", "geometry": mapping(poly), "properties": props})

    positive = bool(layout.deposits)
    description = (
        "NodeScope mosaic node: real H&E patches laid out in a grid (not a whole slide; "
        f"neighbouring patches come from different slides); mpp={mpp}"
    )
    levels = write_pyramid(
        path, image, mpp=mpp, tile=tile, quality=quality, description=description
    )
    doc = {
        "type": "FeatureCollection",
        "properties": {
            "synthetic": False,
            "mosaic": True,
            "description": description,
            "coordinates": "level-0 pixels",
            "width": side,
            "height": side,
            "levels": levels,
            "mpp": mpp,
            "truth": "positive" if positive else "negative",
            "grid": layout.grid,
            "margin_cells": margin,
            "outline_px": outline_px,
            "outline": "stained line drawn in the glass around the tissue (not tissue)"
            if outline_px
            else None,
            "patch_px": p,
            "centre_px": centre_px,
            "label_rule": LABEL_RULE.format(c=centre_px, p=p),
            "tumour_extent": TUMOUR_EXTENT,
            "n_patches": len(records),
            "n_tumour_patches": len(tumour_cells),
            **(provenance or {}),
        },
        "features": features,
        "patches": records,
    }
    regions_path.write_text(json.dumps(doc))
    return Mosaic(
        path=path,
        regions_path=regions_path,
        width=side,
        height=side,
        mpp=mpp,
        positive=positive,
        n_patches=len(records),
        n_tumour_patches=len(tumour_cells),
        deposits=tuple(deposits),
    )


def build_mosaics(
    source: Path,
    out: Path,
    *,
    positive: int,
    negative: int,
    grid: int = 20,
    seed: int = 0,
    deposit_sides: Sequence[int] = (2, 3),
    deposits_per_node: int = 1,
    round_node: bool = True,
    outline: bool = True,
    mpp: float = PCAM_MPP,
    centre_px: int = PCAM_CENTRE_PX,
    nodes_per_case: int = 4,
    case_prefix: str | None = None,
    tile: int = 256,
    quality: int = 90,
    progress=None,
) -> MosaicBuild:
    """Build `positive` + `negative` mosaic nodes from a PCam-layout `source` into `out`, with an
    import manifest (`out/manifest.csv`: case, node, file, status, description) for
    `manage.py import_slides OUT --lab LAB --create-missing`.

    Positive node j gets `deposits_per_node` deposits whose sides cycle through `deposit_sides`.
    Nodes come in a seeded random order (file names do not give the truth away) and are grouped
    `nodes_per_case` to a case named `<case_prefix>-NNN` (default prefix `MOSAIC-S<seed>`).
    Every patch is used at most once in the build; a shortage is reported before anything is
    written.
    """
    if positive < 0 or negative < 0 or positive + negative < 1:
        raise ValueError("build at least one node")
    if positive and (deposits_per_node < 1 or not deposit_sides):
        raise ValueError("positive nodes need at least one deposit")
    if nodes_per_case < 1:
        raise ValueError("nodes_per_case must be at least 1")
    if mpp <= 0:
        raise ValueError("mpp must be positive")
    source, out = Path(source), Path(out)
    pool = scan_patches(source)
    rng = np.random.default_rng(seed)
    sides = list(deposit_sides)
    truths = [True] * positive + [False] * negative
    order = rng.permutation(len(truths))
    truths = [truths[i] for i in order]
    layouts = []
    j = 0
    for is_positive in truths:
        chosen: list[int] = []
        if is_positive:
            chosen = [
                sides[(j * deposits_per_node + d) % len(sides)] for d in range(deposits_per_node)
            ]
            j += 1
        layouts.append(plan_layout(grid, chosen, rng, round_node=round_node))
    need_t = sum(len(lay.tumour_cells) for lay in layouts)
    need_n = sum(len(lay.cells) - len(lay.tumour_cells) for lay in layouts)
    if need_t > pool.count(1) or need_n > pool.count(0):
        raise NotEnoughPatches(
            f"{source}: the build needs {need_n} non-tumour and {need_t} tumour patches; the "
            f"folder holds {pool.count(0)} and {pool.count(1)} distinct ones "
            "(use a smaller --grid or fewer nodes)"
        )
    sampler = _Sampler(pool, rng)
    prefix = case_prefix or f"MOSAIC-S{seed}"
    out.mkdir(parents=True, exist_ok=True)
    mosaics: list[Mosaic] = []
    rows: list[dict[str, str]] = []
    for i, layout in enumerate(layouts):
        name = f"mosaic-s{seed}-{i + 1:03d}.tiff"
        case = f"{prefix}-{i // nodes_per_case + 1:03d}"
        node = f"node {i % nodes_per_case + 1}"
        mosaic = build_mosaic(
            out / name,
            layout=layout,
            sampler=sampler,
            pool=pool,
            mpp=mpp,
            centre_px=centre_px,
            outline=outline,
            tile=tile,
            quality=quality,
            provenance={"source": str(source), "seed": seed, "case": case, "node": node},
        )
        mosaics.append(mosaic)
        blocks = ", ".join(f"{d['block'][0]}x{d['block'][1]}" for d in mosaic.deposits)
        rows.append(
            {
                "case": case,
                "node": node,
                "file": name,
                "status": mosaic.truth,
                "description": (
                    f"mosaic of {mosaic.n_patches} real H&E patches ({source.name}, PCam layout) "
                    f"at {mpp} um/px, not a whole slide; seed {seed}"
                    + (f"; tumour deposits {blocks} patches" if blocks else "")
                ),
            }
        )
        if progress is not None:
            progress(i + 1, len(layouts))
    manifest = out / MANIFEST_NAME
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return MosaicBuild(mosaics=mosaics, manifest_path=manifest, pool=pool, rows=rows)
