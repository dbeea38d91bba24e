#!/usr/bin/env python
"""Patch labels from polygons: the vectorised scanline rasteriser versus a per-patch shapely loop.

Every CAMELYON16 outline file in ../shared/data/camelyon16-annotations/asap-xml/ (10 with --quick)
is parsed with `annotations.formats.read_asap`; its polygons label the 40 px / 1.0 µm/px grid of a
slide covering the outlines at 0.243 µm/px (165 level-0 px patches). Both sides label tumour
patches and drop patches under exclusion polygons; neither reads pixels (there are no slides here,
so no tissue mask):

- ours: `annotations.labels.coverage` (exact pixel-centre rule, vectorised) for tumour and for
  exclusions, over every patch of every slide;
- baseline: for each patch of a random sample, `shapely.intersects` of its box with the file's
  (repaired) tumour and exclusion polygons, one patch at a time; its time per patch is
  extrapolated to every patch.

The two answer slightly different questions at the boundary (a box that grazes a polygon without
holding a pixel centre is tumour for shapely, not for the pixel rule): agreement is printed.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._django import ROOT, setup_django  # noqa: E402

ASAP_DIR = ROOT.parent / "shared" / "data" / "camelyon16-annotations" / "asap-xml"
MPP = 0.243


def closed(ring: np.ndarray) -> np.ndarray:
    ring = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
    return ring if (ring[0] == ring[-1]).all() else np.vstack([ring, ring[:1]])


def load(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Tumour rings and exclusion rings (closed, at least 3 vertices) of one ASAP file."""
    from annotations.formats import read_asap
    from annotations.models import LabelClass

    kinds = dict(LabelClass.objects.values_list("key", "kind"))
    tumour, excluded = [], []
    for item in read_asap(path.read_bytes()):
        ring = np.asarray(item.geometry["coordinates"][0], dtype=np.float64)
        if ring.ndim != 2 or len(ring) < 3:
            continue
        kind = kinds.get(item.label_class)
        if kind == LabelClass.Kind.TUMOUR:
            tumour.append(closed(ring))
        elif kind == LabelClass.Kind.EXCLUDE:
            excluded.append(closed(ring))
    return tumour, excluded


def ours(grid, tumour: list[np.ndarray], excluded: list[np.ndarray]) -> np.ndarray:
    """(n_rows, n_cols) int8: 1 tumour, 0 not, -1 dropped (under an exclusion)."""
    from annotations.labels import coverage

    label = coverage([[r] for r in tumour], grid).astype(np.int8)
    if excluded:
        label[coverage([[r] for r in excluded], grid)] = -1
    return label


def baseline(grid, tumour, excluded, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The same labels, one patch at a time with shapely (polygons repaired first, untimed)."""
    import shapely

    out = np.zeros(len(rows), dtype=np.int8)
    for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        x0, y0 = c * grid.step, r * grid.step
        patch = shapely.box(x0, y0, x0 + grid.size, y0 + grid.size)
        if len(excluded) and shapely.intersects(excluded, patch).any():
            out[i] = -1
        elif len(tumour) and shapely.intersects(tumour, patch).any():
            out[i] = 1
    return out


def shapely_polygons(rings: list[np.ndarray]):
    import shapely

    polys = [shapely.make_valid(shapely.Polygon(r)) for r in rings]
    return np.array(polys, dtype=object)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10 files, smaller baseline sample")
    parser.add_argument("--files", type=int, default=None, help="how many outline files")
    parser.add_argument("--sample", type=int, default=None, help="baseline patches per file")
    args = parser.parse_args()
    if not ASAP_DIR.exists():
        print(f"{ASAP_DIR} not found: nothing to measure")
        print(json.dumps({"skipped": "no CAMELYON16 outlines"}))
        return
    var = setup_django()
    from annotations.labels import patch_grid
    from slides.models import Slide

    files = sorted(ASAP_DIR.glob("*.xml"))
    n_files = args.files or (10 if args.quick else len(files))
    files = files[:n_files]
    sample = args.sample or (400 if args.quick else 1500)
    rng = np.random.default_rng(0)

    total_patches = tumour_patches = 0
    ours_s = base_s = 0.0
    base_n = agree = 0
    polygons = vertices = 0
    per_file_ratio = []
    for path in files:
        tumour, excluded = load(path)
        if not tumour and not excluded:
            continue
        extent = np.concatenate(tumour + excluded)
        slide = Slide(
            name=path.stem,
            width=int(np.ceil(extent[:, 0].max())) + 1,
            height=int(np.ceil(extent[:, 1].max())) + 1,
            mpp_x=MPP,
            mpp_y=MPP,
        )
        grid = patch_grid(slide, patch_px=40, target_mpp=1.0)
        polygons += len(tumour) + len(excluded)
        vertices += sum(len(r) - 1 for r in tumour + excluded)

        t0 = time.perf_counter()
        label = ours(grid, tumour, excluded)
        t_ours = time.perf_counter() - t0
        n = grid.n_rows * grid.n_cols
        total_patches += n
        tumour_patches += int((label == 1).sum())
        ours_s += t_ours

        rows = rng.integers(0, grid.n_rows, size=sample)
        cols = rng.integers(0, grid.n_cols, size=sample)
        tumour_g, excluded_g = shapely_polygons(tumour), shapely_polygons(excluded)
        t0 = time.perf_counter()
        expected = baseline(grid, tumour_g, excluded_g, rows, cols)
        t_base = time.perf_counter() - t0
        base_s += t_base
        base_n += sample
        agree += int((expected == label[rows, cols]).sum())
        per_file_ratio.append((t_base / sample) / (t_ours / n))
        print(
            f"  {path.stem}: {len(tumour)} tumour + {len(excluded)} exclusion polygons, "
            f"{grid.n_rows} x {grid.n_cols} = {n:,} patches in {t_ours * 1000:.1f} ms; "
            f"shapely {t_base / sample * 1e6:.1f} µs/patch"
        )

    ours_rate = total_patches / ours_s
    base_rate = base_n / base_s
    ratio = ours_rate / base_rate
    print(
        f"{len(files)} files, {polygons:,} polygons, {vertices:,} vertices, "
        f"{total_patches:,} patches ({tumour_patches:,} tumour)"
    )
    print(f"  vectorised: {ours_s:.2f} s, {ours_rate:,.0f} patches/s")
    print(
        f"  per-patch shapely loop: {base_rate:,.0f} patches/s on {base_n:,} sampled patches "
        f"(all patches would take {total_patches / base_rate:,.0f} s)"
    )
    print(f"  ratio {ratio:,.0f}x (goal >= 50x); agreement on the sample {agree / base_n:.4%}")
    import shutil

    shutil.rmtree(var, ignore_errors=True)
    print(
        json.dumps(
            {
                "mode": "quick" if args.quick else "full",
                "files": len(files),
                "polygons": polygons,
                "vertices": vertices,
                "patches": total_patches,
                "tumour_patches": tumour_patches,
                "ours_s": round(ours_s, 4),
                "ours_patches_per_s": round(ours_rate),
                "baseline_patches_per_s": round(base_rate),
                "baseline_sample": base_n,
                "ratio": round(ratio, 1),
                "median_file_ratio": round(statistics.median(per_file_ratio), 1),
                "agreement": round(agree / base_n, 5),
            }
        )
    )


if __name__ == "__main__":
    main()
