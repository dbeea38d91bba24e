#!/usr/bin/env python
"""Tile endpoint through the full Django stack versus large-image's getTile, same tiles, same process.

Cold: every tile requested once, encoded-tile cache empty (tile sources already open in both).
Warm: the same tiles again, served from the encoded-tile cache.
Slides: the real CMU-1 SVS (when ../shared/data is here) and a generated slide
(40,000 x 40,000 px in full mode, 8,000 x 8,000 px with --quick).

The last line printed is one JSON object with the figures and ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._django import ROOT, WSGIClient, setup_django  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarise(label: str, times: list[float]) -> dict:
    ms = [t * 1000 for t in times]
    out = {
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "tiles_per_s": round(len(ms) / (sum(times) or 1e-9), 1),
        "n": len(ms),
    }
    print(
        f"  {label:<28} p50 {out['p50_ms']:8.3f} ms   p95 {out['p95_ms']:8.3f} ms   {out['tiles_per_s']:9.1f} tiles/s"
    )
    return out


def tile_addresses(slide, n: int, rng: random.Random) -> list[tuple[int, int, int]]:
    """A random sample of tiles: mostly full resolution, some from the two levels below."""
    out = []
    top = slide.levels - 1
    for _ in range(n):
        z = top if rng.random() < 0.7 else max(0, top - rng.choice((1, 2)))
        scale = 2 ** (top - z)
        nx = math.ceil(math.ceil(slide.width / scale) / slide.tile_width)
        ny = math.ceil(math.ceil(slide.height / scale) / slide.tile_height)
        out.append((z, rng.randrange(nx), rng.randrange(ny)))
    return list(dict.fromkeys(out))


def bench_slide(
    name: str, path: Path, n_tiles: int, client: WSGIClient, node, rng: random.Random
) -> dict:
    import large_image
    from django.core.cache import caches

    from slides import tiles
    from slides.ingest import register_slide
    from slides.sources import open_source

    slide = register_slide(node=node, path=path)
    addresses = tile_addresses(slide, n_tiles, rng)
    print(
        f"{name}: {slide.width} x {slide.height} px, {slide.levels} levels, {len(addresses)} tiles, source {slide.source}"
    )
    path.read_bytes() if path.is_file() and path.stat().st_size < 4 * 1024**3 else None  # page cache warm for both

    # Baseline: large-image's getTile on an already-open source (its own tile cache off: each tile once).
    large_image.cache_util.cachesClear()
    raw = open_source(path)
    raw.getTile(0, 0, 0)
    raw_times = []
    for z, x, y in addresses:
        t0 = time.perf_counter()
        raw.getTile(x, y, z)
        raw_times.append(time.perf_counter() - t0)

    caches["tiles"].clear()
    tiles.source_cache.clear()
    client.get(
        f"/api/slides/{slide.pk}/tiles/0/0/0.jpg"
    )  # opens the source and checks access, as a running server has
    caches["tiles"].clear()
    cold, warm, native = [], [], 0
    for z, x, y in addresses:
        t0 = time.perf_counter()
        status, headers, body = client.get(f"/api/slides/{slide.pk}/tiles/{z}/{x}/{y}.jpg")
        cold.append(time.perf_counter() - t0)
        assert status.startswith("200") and headers["Content-Type"] == "image/jpeg" and body, status
        native += tiles.open_slide(slide).native.get(z, x, y) is not None
    for z, x, y in addresses:
        t0 = time.perf_counter()
        status, _headers, body = client.get(f"/api/slides/{slide.pk}/tiles/{z}/{x}/{y}.jpg")
        warm.append(time.perf_counter() - t0)
        assert status.startswith("200") and body
    print(f"  stored JPEG passed through for {native} of {len(addresses)} tiles")
    result = {
        "raw_getTile": summarise("large-image getTile", raw_times),
        "endpoint_cold": summarise("endpoint, cold cache", cold),
        "endpoint_warm": summarise("endpoint, warm cache", warm),
        "native_share": round(native / len(addresses), 3),
    }
    result["cold_p50_ratio"] = round(
        result["endpoint_cold"]["p50_ms"] / result["raw_getTile"]["p50_ms"], 3
    )
    print(
        f"  endpoint cold p50 / getTile p50 = {result['cold_p50_ratio']:.3f} (goal <= 1.2); warm p50 {result['endpoint_warm']['p50_ms']:.3f} ms (goal < 5)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small generated slide, fewer tiles (CI)"
    )
    parser.add_argument("--tiles", type=int, default=None, help="tiles per slide")
    parser.add_argument("--size", type=int, default=None, help="generated slide side in px")
    args = parser.parse_args()
    size = args.size or (8000 if args.quick else 40000)
    n_tiles = args.tiles or (150 if args.quick else 1000)

    var = setup_django()
    from django.contrib.auth import get_user_model

    from slides.access import grant_role
    from slides.models import Lab, Role
    from slides.synthetic import generate_slide
    from tests.factories import make_case

    lab = Lab.objects.create(code="bench", name="Bench")
    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    grant_role(user, Role.PATHOLOGIST)
    lab.members.add(user)
    case = make_case(lab, "BENCH-1", nodes=("svs", "generated"))
    client = WSGIClient.logged_in(user)
    rng = random.Random(7)

    results: dict = {"mode": "quick" if args.quick else "full"}
    svs = ROOT.parent / "shared" / "data" / "cmu-1-small-region" / "CMU-1-Small-Region.svs"
    if svs.exists():
        results["svs"] = bench_slide(
            "CMU-1 SVS (real)", svs, n_tiles, client, case.nodes.get(label="svs"), rng
        )
    else:
        print("CMU-1 SVS not found (../shared/data missing): skipped")

    cache_dir = ROOT / "var" / "bench"
    cache_dir.mkdir(parents=True, exist_ok=True)
    generated = cache_dir / f"generated-{size}.tiff"
    if not generated.exists():
        t0 = time.perf_counter()
        print(
            f"generating a {size} x {size} px synthetic slide (kept in {cache_dir} for later runs)..."
        )
        generate_slide(generated, width=size, height=size, mpp=0.25, seed=5, tumour=True)
        print(f"  generated in {time.perf_counter() - t0:.1f} s")
    results["generated"] = bench_slide(
        f"generated {size} px", generated, n_tiles, client, case.nodes.get(label="generated"), rng
    )
    results["generated"]["size_px"] = size
    import shutil

    shutil.rmtree(var, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
