#!/usr/bin/env python
"""Viewport queries over many stored polygons, through the real annotation API.

300,000 polygons (30,000 with --quick) are bulk-inserted on 10 (2) slide rows: on each slide the
real CAMELYON16 outlines of a tenth of the files (repaired with make_valid where drawn invalid,
as `import --repair make_valid` stores them) and, to fill it up, random small star-shaped polygons
(8-32 vertices, 30-600 px) spread over the slide. Then random viewports of a 1920 x 1080 screen
at several zoom levels (1, 4, 16 and 64 level-0 px per screen px) are requested as
`GET /api/slides/<id>/annotations/?bbox=x0,y0,x1,y1` through Django's WSGI handler (middleware,
session authentication, routing, the view, serialisation of the first page), as gunicorn would.
Zoomed out (4 level-0 px per screen px and more) each viewport is also requested as the viewer
asks for it there, with `&simplify=<level-0 px per screen px>`, right after the plain request,
and then once more (the outlines now cached, as for another viewer of the slide): time and body
size with and without, and their ratios.

Database: PostgreSQL when it can be had (the server of `DATABASE_URL` if that is PostgreSQL, else
postgres://postgres@127.0.0.1:5432), in a throw-away database `nodescope_bench`; otherwise SQLite,
with a note. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._django import ROOT, WSGIClient  # noqa: E402

ASAP_DIR = ROOT.parent / "shared" / "data" / "camelyon16-annotations" / "asap-xml"
BENCH_DB = "nodescope_bench"
LOCAL_SERVER = "postgres://postgres@127.0.0.1:5432"
SCREEN = (1920, 1080)
ZOOMS = (1, 4, 16, 64)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ---- database -----------------------------------------------------------------------------------


def postgres_database() -> tuple[str | None, str]:
    """(URL of a fresh benchmark database, note); (None, why) if PostgreSQL cannot be had."""
    try:
        import psycopg
    except ImportError:
        return None, "psycopg is not installed"
    url = os.environ.get("DATABASE_URL", "")
    server = (
        url.rsplit("/", 1)[0] if url.startswith(("postgres://", "postgresql://")) else LOCAL_SERVER
    )
    try:
        with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {BENCH_DB}")
            version = conn.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:  # noqa: BLE001 - any failure means: no PostgreSQL here
        return None, f"PostgreSQL at {server} not usable ({type(exc).__name__}: {exc})"
    return f"{server}/{BENCH_DB}", f"PostgreSQL {version} at {server}, database {BENCH_DB}"


def drop_database(url: str) -> None:
    import psycopg

    server = url.rsplit("/", 1)[0]
    with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def setup(url: str | None) -> Path:
    var = Path(tempfile.mkdtemp(prefix="nodescope-bench-"))
    os.environ["NODESCOPE_VAR_DIR"] = str(var)
    if url:
        os.environ["DATABASE_URL"] = url
    else:
        os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    sys.path.insert(0, str(ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return var


# ---- polygons -----------------------------------------------------------------------------------


def camelyon_outlines(files: list[Path]) -> list[dict]:
    """Polygon/MultiPolygon GeoJSON of the outlines of `files` (invalid ones repaired)."""
    import shapely

    from annotations.formats import read_asap
    from annotations.geometry import to_geojson

    out = []
    for path in files:
        for item in read_asap(path.read_bytes()):
            ring = np.asarray(item.geometry["coordinates"][0], dtype=np.float64)
            if ring.ndim != 2 or len(ring) < 3:
                continue
            shape = shapely.Polygon(ring)
            if not shape.is_valid:
                shape = shapely.make_valid(shape, method="structure")
            parts = [g for g in getattr(shape, "geoms", [shape]) if g.geom_type == "Polygon"]
            parts = [p for p in parts if p.area > 0]
            if not parts:
                continue
            shape = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
            out.append({"geometry": to_geojson(shape), "label_class": item.label_class})
    return out


def random_polygons(rng: np.random.Generator, n: int, width: int, height: int) -> list[dict]:
    """Star-shaped polygons (8-32 vertices, radius 30-600 px) anywhere on the slide."""
    out = []
    for _ in range(n):
        k = int(rng.integers(8, 33))
        r = float(rng.uniform(30, 600))
        cx = float(rng.uniform(r, width - r))
        cy = float(rng.uniform(r, height - r))
        angles = np.sort(rng.uniform(0, 2 * math.pi, k))
        radii = r * rng.uniform(0.5, 1.0, k)
        ring = np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)])
        ring = np.round(np.vstack([ring, ring[:1]]), 1)
        out.append(
            {"geometry": {"type": "Polygon", "coordinates": [ring.tolist()]}, "label_class": None}
        )
    return out


def row_for(slide, item: dict, classes: dict, default_class):
    from annotations.geometry import rings_of
    from annotations.models import Annotation

    rings = rings_of(item["geometry"])
    pts = np.concatenate([r for rs in rings for r in rs])
    area = 0.0
    for rs in rings:
        for j, ring in enumerate(rs):
            x, y = ring[:, 0], ring[:, 1]
            a = 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))
            area += -a if j else a
    return Annotation(
        slide=slide,
        label_class=classes.get(item["label_class"], default_class),
        geometry=item["geometry"],
        min_x=float(pts[:, 0].min()),
        min_y=float(pts[:, 1].min()),
        max_x=float(pts[:, 0].max()),
        max_y=float(pts[:, 1].max()),
        vertex_count=sum(len(r) - 1 for rs in rings for r in rs),
        area_px=area,
    )


def sql_page(slide, bbox, limit: int = 1000) -> list:
    """What the first page would cost if the bbox query were counted and paged in SQL (the
    service materialises every matching row before the view paginates): the count, then the
    first `limit` rows by id, with the same shapely test on those whose bbox is not inside."""
    import shapely

    from annotations.models import Annotation

    x0, y0, x1, y1 = bbox
    qs = (
        Annotation.objects.filter(slide=slide, deleted_at__isnull=True)
        .filter(min_x__lte=x1, max_x__gte=x0, min_y__lte=y1, max_y__gte=y0)
        .select_related("label_class", "author")
        .order_by("id")
    )
    qs.count()
    rows = list(qs[:limit])
    edge = [
        a for a in rows if not (a.min_x >= x0 and a.max_x <= x1 and a.min_y >= y0 and a.max_y <= y1)
    ]
    if edge:
        shapes = shapely.from_geojson([json.dumps(a.geometry) for a in edge])
        shapely.intersects(shapes, shapely.box(x0, y0, x1, y1))
    return rows


# ---- requests -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="30,000 polygons on 2 slides, fewer requests"
    )
    parser.add_argument("--polygons", type=int, default=None, help="polygons in all")
    parser.add_argument("--requests", type=int, default=None, help="requests per zoom level")
    parser.add_argument(
        "--sqlite", action="store_true", help="use SQLite even if PostgreSQL is there"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the PostgreSQL benchmark database"
    )
    args = parser.parse_args()
    total = args.polygons or (30_000 if args.quick else 300_000)
    n_slides = 2 if args.quick else 10
    # Wide viewports are slow and alike: fewer of them.
    per_zoom = (
        {1: 200, 4: 200, 16: 100, 64: 30} if not args.quick else {1: 40, 4: 40, 16: 20, 64: 10}
    )
    if args.requests:
        per_zoom = dict.fromkeys(ZOOMS, args.requests)

    url, note = (None, "SQLite requested") if args.sqlite else postgres_database()
    if url is None:
        print(f"note: {note}; falling back to SQLite (the production figure needs PostgreSQL)")
    var = setup(url)
    from django.contrib.auth import get_user_model
    from django.db import connection

    from annotations.models import Annotation, LabelClass
    from annotations.services import viewport_annotations
    from slides.access import grant_role
    from slides.models import Lab, Role, Slide
    from tests.factories import make_case

    engine = connection.vendor
    print(f"database: {note if url else 'SQLite'} ({engine})")
    lab = Lab.objects.create(code="bench", name="Bench")
    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    grant_role(user, Role.PATHOLOGIST)
    lab.members.add(user)
    case = make_case(lab, "BENCH-1", nodes=("node",))
    classes = {c.key: c for c in LabelClass.objects.all()}
    default_class = classes["non-tumour"]

    files = sorted(ASAP_DIR.glob("*.xml")) if ASAP_DIR.exists() else []
    if not files:
        print("CAMELYON16 outlines not found: random polygons only")
    rng = np.random.default_rng(11)
    per_slide = total // n_slides
    slides = []
    t0 = time.perf_counter()
    real = 0
    for i in range(n_slides):
        outlines = camelyon_outlines(files[i::n_slides])[:per_slide]
        real += len(outlines)
        width, height = 100_000, 220_000  # a CAMELYON16-sized slide at 0.243 µm/px
        for o in outlines:
            pts = np.concatenate(
                [
                    np.asarray(r)
                    for rs in o["geometry"]["coordinates"]
                    for r in (rs if o["geometry"]["type"] == "MultiPolygon" else [rs])
                ]
            ).reshape(-1, 2)
            width, height = (
                max(width, int(pts[:, 0].max()) + 1),
                max(height, int(pts[:, 1].max()) + 1),
            )
        slide = Slide.objects.create(
            node=case.nodes.get(),
            name=f"bench-{i}.tif",
            file_path=f"/nonexistent/bench-{i}.tif",
            source="tiff",
            checksum=f"bench-{i}".ljust(64, "0"),
            file_size=1,
            width=width,
            height=height,
            levels=10,
            tile_width=256,
            tile_height=256,
            mpp_x=0.243,
            mpp_y=0.243,
        )
        items = outlines + random_polygons(rng, per_slide - len(outlines), width, height)
        Annotation.objects.bulk_create(
            (row_for(slide, item, classes, default_class) for item in items), batch_size=5000
        )
        slides.append(slide)
    inserted = Annotation.objects.count()
    load_s = time.perf_counter() - t0
    if engine == "postgresql":
        with connection.cursor() as cur:
            cur.execute("ANALYZE annotations_annotation")
    print(
        f"inserted {inserted:,} polygons ({real:,} CAMELYON16 outlines) on {n_slides} slides in {load_s:.1f} s"
    )

    client = WSGIClient.logged_in(user, accept="application/json")
    client.get(
        f"/api/slides/{slides[0].pk}/annotations/", "bbox=0,0,10,10"
    )  # warm: connection, URLconf

    results: dict = {
        "mode": "quick" if args.quick else "full",
        "database": engine,
        "polygons": inserted,
        "camelyon16_outlines": real,
        "slides": n_slides,
        "insert_s": round(load_s, 1),
        "zooms": {},
    }
    everything: list[float] = []
    for zoom in ZOOMS:
        w, h = SCREEN[0] * zoom, SCREEN[1] * zoom
        times, service, paged, counts, sizes = [], [], [], [], []
        simple_times, simple_sizes, warm_times = [], [], []
        for _ in range(per_zoom[zoom]):
            slide = slides[int(rng.integers(len(slides)))]
            x0 = float(rng.uniform(0, max(1, slide.width - w)))
            y0 = float(rng.uniform(0, max(1, slide.height - h)))
            query = f"bbox={x0:.0f},{y0:.0f},{x0 + w:.0f},{y0 + h:.0f}"
            t = time.perf_counter()
            status, _headers, body = client.get(f"/api/slides/{slide.pk}/annotations/", query)
            times.append(time.perf_counter() - t)
            assert status.startswith("200"), (status, body[:300])
            counts.append(json.loads(body)["count"])
            sizes.append(len(body))
            if zoom >= 4:  # as the viewer asks when zoomed out: about one screen pixel
                t = time.perf_counter()
                status, _headers, simple = client.get(
                    f"/api/slides/{slide.pk}/annotations/", f"{query}&simplify={zoom}"
                )
                simple_times.append(time.perf_counter() - t)
                assert status.startswith("200"), (status, simple[:300])
                simple_sizes.append(len(simple))
                # the same view again (another viewer, or panning back): outlines from the cache
                t = time.perf_counter()
                status, _headers, again = client.get(
                    f"/api/slides/{slide.pk}/annotations/", f"{query}&simplify={zoom}"
                )
                warm_times.append(time.perf_counter() - t)
                assert status.startswith("200") and again == simple, status
            t = time.perf_counter()  # the same query without HTTP, auth and serialisation
            viewport_annotations(slide=slide, bbox=(x0, y0, x0 + w, y0 + h))
            service.append(time.perf_counter() - t)
            t = time.perf_counter()  # for comparison: count and first page in SQL
            sql_page(slide, (x0, y0, x0 + w, y0 + h))
            paged.append(time.perf_counter() - t)
        ms = [t * 1000 for t in times]
        everything += ms
        entry = {
            "viewport_px": [w, h],
            "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(percentile(ms, 95), 2),
            "median_polygons": int(statistics.median(counts)),
            "max_polygons": int(max(counts)),
            "median_kb": round(statistics.median(sizes) / 1024, 1),
            "service_p50_ms": round(statistics.median(service) * 1000, 2),
            "sql_page_p50_ms": round(statistics.median(paged) * 1000, 2),
            "n": len(ms),
        }
        if simple_times:
            simple_ms = [t * 1000 for t in simple_times]
            entry["simplified"] = {
                "p50_ms": round(statistics.median(simple_ms), 2),
                "p95_ms": round(percentile(simple_ms, 95), 2),
                "median_kb": round(statistics.median(simple_sizes) / 1024, 1),
                "p50_ratio": round(statistics.median(ms) / statistics.median(simple_ms), 2),
                "kb_ratio": round(statistics.median(sizes) / statistics.median(simple_sizes), 2),
                "cached_p50_ms": round(statistics.median(warm_times) * 1000, 2),
                "cached_p50_ratio": round(
                    statistics.median(times) / statistics.median(warm_times), 2
                ),
            }
        results["zooms"][str(zoom)] = entry
        print(
            f"  zoom 1:{zoom:<3} viewport {w:>7,} x {h:>6,} px: p50 {entry['p50_ms']:8.2f} ms  "
            f"p95 {entry['p95_ms']:8.2f} ms  polygons median {entry['median_polygons']:>6,} "
            f"(max {entry['max_polygons']:,}), body {entry['median_kb']:,} kB; "
            f"viewport_annotations() alone p50 {entry['service_p50_ms']:.2f} ms, "
            f"count + first page in SQL p50 {entry['sql_page_p50_ms']:.2f} ms"
        )
        if simple_times:
            simple = entry["simplified"]
            print(
                f"    with simplify={zoom}: p50 {simple['p50_ms']:8.2f} ms  p95 {simple['p95_ms']:8.2f} ms,"
                f" body {simple['median_kb']:,} kB: {simple['p50_ratio']}x faster (p50),"
                f" {simple['kb_ratio']}x smaller; the same view again (outlines cached): p50"
                f" {simple['cached_p50_ms']:.2f} ms, {simple['cached_p50_ratio']}x faster"
            )
    results["p50_ms"] = round(statistics.median(everything), 2)
    results["p95_ms"] = round(percentile(everything, 95), 2)
    print(
        f"all viewports: p50 {results['p50_ms']} ms, p95 {results['p95_ms']} ms (goal p50 < 100 ms)"
    )

    if engine == "postgresql":
        with connection.cursor() as cur:
            cur.execute(
                "EXPLAIN SELECT id FROM annotations_annotation WHERE slide_id = %s AND deleted_at IS NULL "
                "AND min_x <= %s AND max_x >= %s AND min_y <= %s AND max_y >= %s",
                [slides[0].pk, 60000, 58000, 60000, 58000],
            )
            plan = " / ".join(r[0].strip() for r in cur.fetchall()[:2])
        print(f"  plan: {plan}")
        results["plan"] = plan[:200]
    connection.close()
    if url and not args.keep:
        drop_database(url)
    import shutil

    shutil.rmtree(var, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
