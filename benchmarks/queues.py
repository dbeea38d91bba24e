#!/usr/bin/env python
"""Case queue and triage through the API on PostgreSQL: latency, and queries per request.

Data (in bulk, in a fresh schema of the PostgreSQL database named by `DATABASE_URL`, default
postgres://postgres@127.0.0.1:5432/nodescope_bench_queues, created if missing): 1,000 cases of
10 nodes (100 with --quick) in one lab, one slide per node with a heat map of the live primary
model, every node scored by an older model and by the live one (threshold 0.5), a third of the
nodes decided; plus one case each of 5, 10 and 20 nodes for the query counts. The schema is
dropped at the end; nothing else in the database is touched.

Requests go through Django's WSGI handler (middleware, session authentication, routing, DRF
view, JSON rendering) as gunicorn would call it, for a lab lead:

- case queue API   GET /api/review/cases/<id>/queue/                  (random 10-node case)
- triage API       GET /api/review/triage/?limit=100&offset=<random page>
- triage API       GET /api/review/triage/?limit=100                  (first page)

Queries per request are counted with CaptureQueriesContext for cases of 5, 10 and 20 nodes and
for triage pages of 10 and 100 nodes: they must not grow with the nodes (the script fails if
they do). Baseline, same process, same data: the naive way to build the same answers with one
query (or more) per node: its latest live score, its latest decision, its slides, its heat maps,
its viewed regions; triage filters and sorts every node of every open case in Python. Ratios are
naive / ours. Also the previous triage query (correlated per-node subqueries and a COUNT), whose
plan was the reason for the current one: before / ours.

The last line printed is one JSON object with the figures. Goal: p95 under 50 ms for both APIs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._django import WSGIClient  # noqa: E402
from benchmarks.review import add_cases, seed_lab, summarise, timed  # noqa: E402

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/nodescope_bench_queues"
GOAL_P95_MS = 50.0


def ensure_database(url: str) -> None:
    """Create the database of `url` if it does not exist (connecting to the `postgres` database)."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not found:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def setup_postgres(url: str) -> tuple[Path, str]:
    """Django on `url`, in a fresh schema of its own (migrated); returns (var dir, schema)."""
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit(f"DATABASE_URL must name a PostgreSQL database, not {url.split(':')[0]}")
    ensure_database(url)
    var = Path(tempfile.mkdtemp(prefix="nodescope-bench-queues-"))
    os.environ["NODESCOPE_VAR_DIR"] = str(var)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, connections

    schema = f"bench_queues_{os.getpid()}"
    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        cursor.execute(f'CREATE SCHEMA "{schema}"')
    connections.close_all()
    connections["default"].settings_dict.setdefault("OPTIONS", {})["options"] = (
        f"-c search_path={schema}"
    )
    call_command("migrate", verbosity=0)
    return var, schema


def drop_schema(schema: str) -> None:
    from django.db import connection, connections

    connections.close_all()
    connections["default"].settings_dict["OPTIONS"].pop("options", None)
    with connection.cursor() as cursor:
        cursor.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    connections.close_all()


# ---- the naive baseline -------------------------------------------------------------------------


def naive_queue(case, version, user) -> list[dict]:
    """Baseline: the same queue rows, with per-node queries for score, decision, slides, heat
    maps and viewed regions."""
    from inference.records import HeatMap, NodeScore
    from review.models import ReviewDecision, ViewedRegion

    rows = []
    for node in case.nodes.all():
        score = (
            NodeScore.objects.filter(node=node, model_version=version)
            .order_by("-created_at", "-id")
            .first()
        )
        decision = ReviewDecision.objects.filter(node=node).order_by("-id").first()
        slides = list(node.slides.order_by("name", "id"))
        maps = [
            HeatMap.objects.filter(slide=s, model_version=version).order_by("-created_at").first()
            for s in slides
        ]
        viewed = set(
            ViewedRegion.objects.filter(node=node, user=user).values_list("region_key", flat=True)
        )
        rows.append(
            {
                "id": node.pk,
                "label": node.label,
                "score": score.score if score else None,
                "status": decision.status if decision else "unreviewed",
                "slide": slides[0].pk if slides else None,
                "maxima": [(m.max_x, m.max_y, m.max_score) for m in maps if m],
                "viewed": sorted(viewed),
            }
        )
    rows.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0), r["label"], r["id"]))
    return rows


def naive_triage(user, version, offset: int, limit: int = 100) -> list[int]:
    """Baseline: every node of every open case, latest score and decision per node, in Python."""
    from inference.records import NodeScore
    from review.models import ReviewDecision
    from slides.access import nodes_for
    from slides.models import Case

    out = []
    for node in nodes_for(user).filter(case__status=Case.Status.OPEN).select_related("case"):
        score = (
            NodeScore.objects.filter(node=node, model_version=version)
            .order_by("-created_at", "-id")
            .first()
        )
        threshold = score.threshold if score and score.threshold is not None else version.threshold
        if score is None or score.score >= threshold:
            continue
        decision = ReviewDecision.objects.filter(node=node).order_by("-id").first()
        if decision is None:
            out.append(node)
    out.sort(key=lambda n: (n.case.created_at, n.case_id, n.label, n.pk))
    return [n.pk for n in out[offset : offset + limit]]


def correlated_triage(user, version, offset: int, limit: int = 100) -> list[int]:
    """The previous way (same SQL answer): correlated per-node subqueries for the latest score's
    margin and the current status, compared with `<` and `=`, plus a separate COUNT. PostgreSQL
    cannot estimate what such a subquery keeps and chose nested loops over every case."""
    from django.db.models import CharField, F, FloatField, OuterRef, Subquery, Value
    from django.db.models.functions import Coalesce

    from inference.records import NodeScore
    from review.models import ReviewDecision
    from slides.access import nodes_for
    from slides.models import Case

    margin = (
        NodeScore.objects.filter(node=OuterRef("pk"), model_version=version)
        .order_by("-created_at", "-id")
        .annotate(
            margin=F("score")
            - Coalesce(F("threshold"), Value(version.threshold, output_field=FloatField()))
        )
        .values("margin")[:1]
    )
    current = (
        ReviewDecision.objects.filter(node=OuterRef("pk")).order_by("-id").values("status")[:1]
    )
    nodes = (
        nodes_for(user)
        .filter(case__status=Case.Status.OPEN)
        .annotate(rv_margin=Subquery(margin, output_field=FloatField()))
        .filter(rv_margin__lt=0)
        .annotate(
            rv_current=Coalesce(Subquery(current), Value("unreviewed", output_field=CharField()))
        )
        .filter(rv_current="unreviewed")
        .order_by("case__created_at", "case_id", "label", "id")
    )
    nodes.count()
    return list(nodes.values_list("pk", flat=True)[offset : offset + limit])


# ---- the run ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100 cases, fewer requests (CI)")
    parser.add_argument("--cases", type=int, default=None, help="cases of 10 nodes (default 1000)")
    parser.add_argument("--requests", type=int, default=None, help="requests per endpoint")
    args = parser.parse_args()
    n_cases = args.cases or (100 if args.quick else 1000)
    n_requests = args.requests or (40 if args.quick else 300)
    n_naive = 3 if args.quick else 2  # runs of the naive triage (slow: queries per node)
    url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    if not url.startswith(("postgres://", "postgresql://")):
        url = DEFAULT_DATABASE_URL  # the SQLite default of the settings does not count here

    var, schema = setup_postgres(url)
    try:
        results = run(n_cases=n_cases, n_requests=n_requests, n_naive=n_naive, quick=args.quick)
    finally:
        drop_schema(schema)
        import shutil

        shutil.rmtree(var, ignore_errors=True)
    print(json.dumps(results))
    if results["failures"]:
        raise SystemExit("; ".join(results["failures"]))


def run(*, n_cases: int, n_requests: int, n_naive: int, quick: bool) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from review.models import ViewedRegion
    from review.queues import TriageFilter, case_queue, triage_nodes
    from review.views import queue_json
    from slides.access import nodes_for

    rng = random.Random(7)
    t0 = time.perf_counter()
    lab, lead, old, live = seed_lab("queues")
    cases = add_cases(
        lab, lead, (old, live), n_cases=n_cases, nodes_per_case=10, rng=rng, heatmaps=True
    )
    sized = {
        size: add_cases(
            lab,
            lead,
            (old, live),
            n_cases=1,
            nodes_per_case=size,
            rng=rng,
            prefix=f"Q{size}-",
            heatmaps=True,
            decided_share=0.5,
        )[0]
        for size in (5, 10, 20)
    }
    # The lead has opened the highest-scoring region of some nodes.
    some = rng.sample(cases, max(1, len(cases) // 5))
    viewed = []
    for case in some + list(sized.values()):
        _, rows = case_queue(case=case, user=lead)
        for row in rows[:3]:
            if row.regions:
                r = row.regions[0]
                viewed.append(
                    ViewedRegion(
                        node=row.node,
                        heatmap_id=r.heatmap_id,
                        slide_id=r.slide_id,
                        region_key=r.key,
                        x=r.x,
                        y=r.y,
                        user=lead,
                    )
                )
    ViewedRegion.objects.bulk_create(viewed, batch_size=5000)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    n_nodes = 10 * n_cases + 35
    print(
        f"PostgreSQL: populated {n_cases} cases x 10 nodes (+ cases of 5, 10, 20 nodes), "
        f"{len(viewed)} viewed regions, in {time.perf_counter() - t0:.1f} s"
    )
    triage_total = triage_nodes(nodes_for(lead), version=live, filters=TriageFilter()).count()
    pages = max(1, -(-triage_total // 100))
    client = WSGIClient.logged_in(lead, accept="application/json")

    def get(path: str) -> bytes:
        status, _headers, body = client.get(path)
        if not status.startswith("200"):
            raise SystemExit(f"{path}: {status}\n{body[:500]!r}")
        return body

    def queries(path: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            get(path)
        return len(ctx.captured_queries)

    results: dict = {
        "mode": "quick" if quick else "full",
        "database": "postgresql",
        "cases": n_cases + 3,
        "nodes": n_nodes,
        "triage_nodes": triage_total,
        "goal_p95_ms": GOAL_P95_MS,
        "failures": [],
    }

    # -- queries per request: constant in the nodes of a case and the rows of a page
    counts = {
        f"queue_{size}_nodes": queries(f"/api/review/cases/{case.pk}/queue/")
        for size, case in sized.items()
    }
    counts["triage_10_rows"] = queries("/api/review/triage/?limit=10")
    counts["triage_100_rows"] = queries("/api/review/triage/?limit=100")
    for size, case in sized.items():
        with CaptureQueriesContext(connection) as ctx:
            naive_queue(case, live, lead)
        counts[f"naive_queue_{size}_nodes"] = len(ctx.captured_queries)
    results["queries"] = counts
    print("queries per request (ours through the API; naive in-process):")
    print(
        f"  case queue API, 5 / 10 / 20 nodes      {counts['queue_5_nodes']} / "
        f"{counts['queue_10_nodes']} / {counts['queue_20_nodes']}"
    )
    print(
        f"  triage API, 10 / 100 rows per page     {counts['triage_10_rows']} / "
        f"{counts['triage_100_rows']}"
    )
    print(
        f"  naive queue, 5 / 10 / 20 nodes         {counts['naive_queue_5_nodes']} / "
        f"{counts['naive_queue_10_nodes']} / {counts['naive_queue_20_nodes']}"
    )
    if len({counts["queue_5_nodes"], counts["queue_10_nodes"], counts["queue_20_nodes"]}) != 1:
        results["failures"].append("queue queries grow with the nodes of a case")
    if counts["triage_10_rows"] != counts["triage_100_rows"]:
        results["failures"].append("triage queries grow with the rows of a page")

    # -- the same answer as the naive way
    _, rows = case_queue(case=sized[10], user=lead)
    naive = naive_queue(sized[10], live, lead)
    if [r.node.pk for r in rows] != [r["id"] for r in naive]:
        results["failures"].append("queue order differs from the naive baseline")
    ours_ids = [
        r["id"] for r in json.loads(get("/api/review/triage/?limit=100&offset=0"))["results"]
    ]
    if ours_ids != naive_triage(lead, live, 0) or ours_ids != correlated_triage(lead, live, 0):
        results["failures"].append("triage page differs from the naive baseline")

    # -- latency through the WSGI handler
    print(f"through the WSGI handler ({n_requests} requests each, {n_nodes} nodes):")
    get(f"/api/review/cases/{cases[0].pk}/queue/")  # warm up
    results["queue_api"] = summarise(
        "case queue API (10 nodes)",
        timed(lambda: get(f"/api/review/cases/{rng.choice(cases).pk}/queue/"), n_requests),
        counts["queue_10_nodes"],
    )
    results["triage_api"] = summarise(
        "triage API (100 per page)",
        timed(
            lambda: get(f"/api/review/triage/?limit=100&offset={100 * rng.randrange(pages)}"),
            n_requests,
        ),
        counts["triage_100_rows"],
    )
    results["triage_api_first_page"] = summarise(
        "triage API first page",
        timed(lambda: get("/api/review/triage/?limit=100"), n_requests),
        counts["triage_100_rows"],
    )
    for key in ("queue_api", "triage_api"):
        results[key]["meets_goal"] = results[key]["p95_ms"] < GOAL_P95_MS

    # -- in-process: ours versus the naive per-node way
    print("in-process, ours versus the naive per-node baseline:")

    def ours_queue() -> None:
        case = rng.choice(cases)
        queue_json(case, lead, queue=case_queue(case=case, user=lead))

    def ours_triage() -> None:
        from review.queues import triage_ids, triage_page

        qs = triage_nodes(nodes_for(lead), version=live, filters=TriageFilter())
        ids, _total = triage_ids(qs, offset=100 * rng.randrange(pages), limit=100)
        triage_page(ids, version=live)

    n_queue = max(10, n_requests // 3)
    ours_q = summarise("queue: ours", timed(ours_queue, n_queue))
    base_q = summarise(
        "queue: naive", timed(lambda: naive_queue(rng.choice(cases), live, lead), n_queue)
    )
    ours_t = summarise("triage: ours", timed(ours_triage, max(10, n_requests // 3)))
    before_t = summarise(
        "triage: per-node subqueries (before)",
        timed(lambda: correlated_triage(lead, live, 100 * rng.randrange(pages)), 10),
    )
    base_t = summarise(
        "triage: naive",
        timed(lambda: naive_triage(lead, live, 100 * rng.randrange(pages)), n_naive),
    )
    results["baseline"] = {
        "queue_ours": ours_q,
        "queue_naive": base_q,
        "queue_p50_ratio": round(base_q["p50_ms"] / ours_q["p50_ms"], 2),
        "triage_ours": ours_t,
        "triage_naive": base_t,
        "triage_p50_ratio": round(base_t["p50_ms"] / ours_t["p50_ms"], 2),
        "triage_before": before_t,
        "triage_before_p50_ratio": round(before_t["p50_ms"] / ours_t["p50_ms"], 2),
    }
    print(
        f"  naive / ours p50: queue {results['baseline']['queue_p50_ratio']}x, "
        f"triage {results['baseline']['triage_p50_ratio']}x; "
        f"before / ours p50: triage {results['baseline']['triage_before_p50_ratio']}x"
    )
    return results


if __name__ == "__main__":
    main()
