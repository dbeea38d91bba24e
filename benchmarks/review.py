#!/usr/bin/env python
"""Review queue page, queue API and triage API through Django's WSGI handler, with many cases.

Data: N cases x 5 nodes (2,000 x 5 by default, 200 x 5 with --quick) in one lab, one slide per
node, every node scored by an older model and by the live primary model (threshold 0.5), a third
of the nodes decided. Requests go through the full stack (middleware, session authentication,
URL routing, views, templates), as gunicorn would call it, for a lab lead:

- queue page   GET /review/cases/<id>/        (random case)
- queue API    GET /api/review/cases/<id>/queue/
- triage API   GET /api/review/triage/?limit=100&offset=<random page>  (negative-screened nodes)

Baseline, same process, same data: the naive way to build the same answers, one query per node
for its latest live score and latest decision (N+1), filtering and sorting in Python. Ratios are
baseline / ours, computed in-process (no HTTP) so they compare query strategies only.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._django import WSGIClient, setup_django  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summarise(label: str, times: list[float], queries: int | None = None) -> dict:
    ms = [t * 1000 for t in times]
    out = {
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "n": len(ms),
    }
    if queries is not None:
        out["queries"] = queries
    extra = f"   {queries} queries" if queries is not None else ""
    print(f"  {label:<34} p50 {out['p50_ms']:9.3f} ms   p95 {out['p95_ms']:9.3f} ms{extra}")
    return out


def populate(
    n_cases: int,
    nodes_per_case: int,
    seed: int = 11,
    *,
    heatmaps: bool = False,
    decided_share: float = 1 / 3,
):
    """Cases, nodes, slides, scores (old model + live model) and decisions, in bulk.

    Returns (lab lead, cases, live model version); `seed_lab` and `add_cases` are the pieces, for
    benchmarks that add cases of other sizes to the same lab.
    """
    rng = random.Random(seed)
    lab, lead, old, live = seed_lab()
    cases = add_cases(
        lab,
        lead,
        (old, live),
        n_cases=n_cases,
        nodes_per_case=nodes_per_case,
        rng=rng,
        heatmaps=heatmaps,
        decided_share=decided_share,
    )
    return lead, cases, live


def seed_lab(code: str = "bench"):
    """A lab, its lab lead, an older primary model (threshold 0.6) and the live one (0.5)."""
    from django.contrib.auth import get_user_model

    from inference.records import Stage
    from slides.access import grant_role
    from slides.models import Lab, Role
    from tests.review.factories import make_model_version

    lab = Lab.objects.create(code=code, name=code.title())
    lead = get_user_model().objects.create_user(f"{code}-lead", password="bench-password-1")
    grant_role(lead, Role.LAB_LEAD)
    lab.members.add(lead)
    old = make_model_version(f"{code}-old", threshold=0.6, live=False, stage=Stage.PRIMARY)
    live = make_model_version(f"{code}-live", threshold=0.5, live=True, stage=Stage.PRIMARY)
    return lab, lead, old, live


def add_cases(
    lab,
    lead,
    versions,
    *,
    n_cases: int,
    nodes_per_case: int,
    rng: random.Random,
    prefix: str = "B",
    heatmaps: bool = False,
    decided_share: float = 1 / 3,
) -> list:
    """`n_cases` cases of `nodes_per_case` nodes, one slide per node, every node scored by each
    of `versions` (the last one live); with `heatmaps`, one heat map per slide from the last
    version holding the node's maximum. A share of the nodes gets a decision. Bulk inserts."""
    from inference.records import HeatMap, NodeScore
    from review.models import ReviewDecision
    from slides.models import Case, Node, Slide

    made = Case.objects.bulk_create(
        [
            Case(lab=lab, accession_number=f"{prefix}{i:06d}", patient_pseudonym=f"P{prefix}{i}")
            for i in range(n_cases)
        ],
        batch_size=2000,
    )
    cases = list(Case.objects.filter(pk__in=[c.pk for c in made]).order_by("id"))
    Node.objects.bulk_create(
        [
            Node(case=c, label=f"level {j + 1}, node {j + 1}")
            for c in cases
            for j in range(nodes_per_case)
        ],
        batch_size=5000,
    )
    nodes = list(Node.objects.filter(case__in=cases).order_by("id"))
    slides = Slide.objects.bulk_create(
        [
            Slide(
                node=n,
                name=f"slide-{n.pk}",
                file_path=f"/nonexistent/{n.pk}.tiff",
                source="tiff",
                checksum=f"{n.pk:064x}",
                file_size=1,
                width=40000,
                height=30000,
                levels=8,
                tile_width=256,
                tile_height=256,
                mpp_x=0.25,
                mpp_y=0.25,
                synthetic=True,
            )
            for n in nodes
        ],
        batch_size=5000,
    )
    live = versions[-1]
    draws = {
        (n.pk, v.pk): (rng.betavariate(0.6, 1.4), rng.uniform(0, 40000), rng.uniform(0, 30000))
        for n in nodes
        for v in versions
    }
    maps: dict[int, HeatMap] = {}
    if heatmaps:
        made_maps = HeatMap.objects.bulk_create(
            [
                HeatMap(
                    slide=slide,
                    model_version=live,
                    raster_path=f"/nonexistent/heatmap-{slide.pk}.npy",
                    stride_px=40.0,
                    window_px=160.0,
                    rows=750,
                    cols=1000,
                    max_score=draws[(slide.node_id, live.pk)][0],
                    max_x=draws[(slide.node_id, live.pk)][1],
                    max_y=draws[(slide.node_id, live.pk)][2],
                )
                for slide in slides
            ],
            batch_size=5000,
        )
        maps = {hm.slide.node_id: hm for hm in made_maps}
    scores = []
    for n in nodes:
        for version in versions:
            s, x, y = draws[(n.pk, version.pk)]
            scores.append(
                NodeScore(
                    node=n,
                    model_version=version,
                    score=s,
                    threshold=version.threshold,
                    screened_positive=s >= version.threshold,
                    max_heatmap=maps.get(n.pk) if version is live else None,
                    max_x=x,
                    max_y=y,
                )
            )
    NodeScore.objects.bulk_create(scores, batch_size=5000)
    decided = rng.sample(nodes, round(len(nodes) * decided_share))
    ReviewDecision.objects.bulk_create(
        [
            ReviewDecision(
                node=n,
                status=rng.choice(
                    ["confirmed_negative", "confirmed_positive", "needs_further_work"]
                ),
                user=lead,
                user_name=lead.username,
            )
            for n in decided
        ],
        batch_size=5000,
    )
    return cases


def naive_queue(case, version):
    """Baseline: one query per node for its latest live score and its latest decision."""
    from inference.records import NodeScore
    from review.models import ReviewDecision

    rows = []
    for node in case.nodes.all():
        score = (
            NodeScore.objects.filter(node=node, model_version=version)
            .order_by("-created_at", "-id")
            .first()
        )
        decision = ReviewDecision.objects.filter(node=node).order_by("-id").first()
        slide = node.slides.order_by("name").first()
        rows.append((node, score, decision, slide))
    rows.sort(key=lambda r: (r[1] is None, -(r[1].score if r[1] else 0), r[0].label))
    return rows


def naive_triage(user, version, offset: int, limit: int = 100):
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
        if score is None or score.score >= (
            score.threshold if score.threshold is not None else version.threshold
        ):
            continue
        decision = ReviewDecision.objects.filter(node=node).order_by("-id").first()
        if decision is None or decision.status == "unreviewed":
            out.append((node, score, decision))
    out.sort(key=lambda r: (r[0].case.created_at, r[0].case_id, r[0].label, r[0].pk))
    return out[offset : offset + limit]


def timed(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="200 cases, fewer requests (CI)")
    parser.add_argument("--cases", type=int, default=None, help="number of cases (5 nodes each)")
    parser.add_argument("--requests", type=int, default=None, help="requests per endpoint")
    args = parser.parse_args()
    n_cases = args.cases or (200 if args.quick else 2000)
    n_requests = args.requests or (30 if args.quick else 200)
    n_baseline = 3  # runs of the (slow) triage baseline, and of ours beside it

    var = setup_django()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.urls import NoReverseMatch, clear_url_caches, reverse

    try:
        reverse("review-case-queue", args=[1])
    except NoReverseMatch:  # config/urls.py does not include the review pages yet
        settings.ROOT_URLCONF = "tests.review.urls"
        clear_url_caches()

    from review.queues import TriageFilter, case_queue, triage_nodes, triage_page
    from slides.access import nodes_for

    t0 = time.perf_counter()
    lead, cases, live = populate(n_cases, 5)
    print(f"populated {n_cases} cases x 5 nodes in {time.perf_counter() - t0:.1f} s")

    client = WSGIClient.logged_in(lead, accept="application/json, text/html")
    rng = random.Random(3)
    triage_total = triage_nodes(nodes_for(lead), version=live, filters=TriageFilter()).count()
    pages = max(1, -(-triage_total // 100))

    def get(path: str) -> None:
        status, _headers, body = client.get(path)
        if not status.startswith("200"):
            raise SystemExit(f"{path}: {status}\n{body[:500]!r}")

    def queries(path: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            get(path)
        return len(ctx.captured_queries)

    results: dict = {
        "mode": "quick" if args.quick else "full",
        "cases": n_cases,
        "nodes": n_cases * 5,
        "triage_nodes": triage_total,
    }
    print(f"through the WSGI handler ({n_requests} requests each):")
    some = cases[0].pk
    get(f"/review/cases/{some}/")  # warm up templates and caches
    results["queue_page"] = summarise(
        "queue page",
        timed(lambda: get(f"/review/cases/{rng.choice(cases).pk}/"), n_requests),
        queries(f"/review/cases/{some}/"),
    )
    results["queue_api"] = summarise(
        "queue API",
        timed(lambda: get(f"/api/review/cases/{rng.choice(cases).pk}/queue/"), n_requests),
        queries(f"/api/review/cases/{some}/queue/"),
    )
    results["triage_api"] = summarise(
        "triage API (100 per page)",
        timed(
            lambda: get(f"/api/review/triage/?limit=100&offset={100 * rng.randrange(pages)}"),
            n_requests,
        ),
        queries("/api/review/triage/?limit=100&offset=0"),
    )
    results["triage_api_first_page"] = summarise(
        "triage API first page", timed(lambda: get("/api/review/triage/?limit=100"), n_requests)
    )

    print(f"in-process, ours versus the naive per-node baseline ({n_baseline} runs for triage):")
    ours_q = summarise(
        "queue: ours", timed(lambda: case_queue(case=rng.choice(cases), user=lead), n_requests)
    )
    base_q = summarise(
        "queue: naive", timed(lambda: naive_queue(rng.choice(cases), live), n_requests)
    )

    def ours_triage() -> None:
        from review.queues import triage_ids

        qs = triage_nodes(nodes_for(lead), version=live, filters=TriageFilter())
        ids, _total = triage_ids(qs, offset=100 * rng.randrange(pages), limit=100)
        triage_page(ids, version=live)

    ours_t = summarise("triage: ours", timed(ours_triage, n_baseline))
    base_t = summarise(
        "triage: naive",
        timed(lambda: naive_triage(lead, live, 100 * rng.randrange(pages)), n_baseline),
    )
    results["baseline"] = {
        "queue_ours": ours_q,
        "queue_naive": base_q,
        "queue_p50_ratio": round(base_q["p50_ms"] / ours_q["p50_ms"], 2),
        "triage_ours": ours_t,
        "triage_naive": base_t,
        "triage_p50_ratio": round(base_t["p50_ms"] / ours_t["p50_ms"], 2),
    }
    print(
        f"  naive / ours p50: queue {results['baseline']['queue_p50_ratio']}x, "
        f"triage {results['baseline']['triage_p50_ratio']}x"
    )
    import shutil

    shutil.rmtree(var, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
