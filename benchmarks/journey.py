#!/usr/bin/env python
"""The journey's server side on demo data: each page and API call the browser journey makes,
warm, through Django's full WSGI stack on the embedded default (SQLite), as its user.

Data: `load_demo` (generated slides, the demo model trained, scored, calibrated and promoted, one
case reviewed) in a private folder; ``--quick`` generates 2,000 px slides and trains 2 epochs
(the full mode 6,000 px and 6 epochs, as `make demo`). ``--var`` reuses a folder already made
(e.g. the one `make demo` filled, with NODESCOPE_VAR_DIR).

Timing: every request is made once to warm caches, then the requests are interleaved round-robin
for ``--rounds`` rounds (A, B, C, ..., A, B, C, ...), so machine noise falls on all of them alike.
Per request: median, p95 and spread (p95 - p5) in ms, and p95 against the baseline measured in
the same rounds, ``GET /health/`` (the stack with no view work). Goal: every page under 300 ms
warm at p95. The set-up time (demo generation, training, scoring) is printed as well.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._django import WSGIClient, setup_django  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def build_demo(*, size: int, epochs: int) -> dict[str, float]:
    """Load the demo as `make demo` does (smaller with --quick); seconds per stage."""
    from django.contrib.auth import get_user_model

    from inference.demo import ensure_demo_model
    from review.demo import ensure_demo_decisions
    from slides.demo import load_demo

    seconds = {}
    started = time.perf_counter()
    result = load_demo(size=size, progress=lambda _m: None)
    seconds["slides"] = time.perf_counter() - started
    users = get_user_model().objects.in_bulk(["pathologist", "admin"], field_name="username")
    started = time.perf_counter()
    ensure_demo_model(
        lab=result.lab,
        pathologist=users["pathologist"],
        admin=users["admin"],
        progress=lambda m: print(m, flush=True),
        epochs=epochs,
    )
    seconds["model"] = time.perf_counter() - started
    ensure_demo_decisions(lab=result.lab, pathologist=users["pathologist"])
    return {k: round(v, 1) for k, v in seconds.items()}


def requests_of_the_journey() -> list[tuple[str, str, str]]:
    """(label, user, path) of what the journey's pages and scripts ask for."""
    from annotations.models import Dataset
    from inference.records import ScoringRun
    from review.queues import live_primary
    from slides.models import Case

    case = Case.objects.get(accession_number="DEMO-26-001")
    version = live_primary()
    top = version.node_scores.filter(node__case=case).order_by("-score").first()
    node, slide = top.node, top.max_heatmap.slide
    dataset = Dataset.objects.order_by("pk").first()
    run = ScoringRun.objects.filter(model_version=version).order_by("-pk").first()
    return [
        ("case list", "pathologist", "/"),
        ("case page", "pathologist", f"/cases/{case.pk}/"),
        ("viewer page", "pathologist", f"/slides/{slide.pk}/view/"),
        ("annotations API", "pathologist", f"/api/slides/{slide.pk}/annotations/"),
        ("tile", "pathologist", f"/api/slides/{slide.pk}/tiles/{slide.levels - 1}/2/2.jpg"),
        ("heat-map tile source", "pathologist", f"/api/slides/{slide.pk}/heatmap/tilesource/"),
        ("queue page", "pathologist", f"/review/cases/{case.pk}/"),
        ("queue API", "pathologist", f"/api/review/cases/{case.pk}/queue/"),
        (
            "review viewer page",
            "pathologist",
            f"/review/nodes/{node.pk}/slides/{slide.pk}/view/",
        ),
        ("viewed regions API", "pathologist", f"/api/nodes/{node.pk}/viewed-regions/"),
        ("triage page", "lablead", "/review/triage/"),
        ("metrics page", "lablead", "/review/metrics/"),
        ("datasets page", "admin", "/datasets/"),
        ("datasets API", "admin", "/api/datasets/"),
        ("dataset API", "admin", f"/api/datasets/{dataset.pk}/"),
        ("models page", "admin", "/models/"),
        ("model page", "admin", f"/models/{version.pk}/"),
        ("threshold API", "admin", f"/api/model-versions/{version.pk}/threshold/"),
        ("scoring run API", "admin", f"/api/scoring-runs/{run.pk}/"),
        ("training runs API", "admin", "/api/training-runs/"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller slides, 2 epochs")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--var", type=Path, default=None, help="reuse this demo folder")
    args = parser.parse_args()
    rounds = args.rounds or (15 if args.quick else 40)
    setup_django(args.var)
    from django.contrib.auth import get_user_model

    from review.queues import live_primary

    setup = None
    if live_primary() is None:
        setup = build_demo(size=2000 if args.quick else 6000, epochs=2 if args.quick else 6)
        print(f"demo set up in {setup} s", flush=True)
    users = get_user_model().objects.in_bulk(
        ["pathologist", "lablead", "admin"], field_name="username"
    )
    clients = {name: WSGIClient.logged_in(user) for name, user in users.items()}
    plan = [("baseline: /health/", "pathologist", "/health/"), *requests_of_the_journey()]
    for label, user, path in plan:  # warm: caches, open tile sources, template loading
        status, _headers, _body = clients[user].get(path)
        if not status.startswith(("200", "304")):
            raise SystemExit(f"{label} {path} as {user}: {status}")
    times: dict[str, list[float]] = {label: [] for label, _u, _p in plan}
    for _ in range(rounds):
        for label, user, path in plan:
            started = time.perf_counter()
            clients[user].get(path)
            times[label].append((time.perf_counter() - started) * 1000)
    base_p95 = percentile(times["baseline: /health/"], 95)
    figures = {}
    for label, _user, path in plan:
        ms = times[label]
        p95 = percentile(ms, 95)
        figures[label] = {
            "path": path,
            "median_ms": round(statistics.median(ms), 2),
            "p95_ms": round(p95, 2),
            "spread_ms": round(p95 - percentile(ms, 5), 2),
            "p95_vs_baseline": round(p95 / base_p95, 1),
        }
        print(
            f"{label:22s} median {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms  "
            f"spread {p95 - percentile(ms, 5):6.1f} ms  x{p95 / base_p95:6.1f} baseline",
            flush=True,
        )
    pages = {k: v for k, v in figures.items() if not k.startswith("baseline")}
    slowest = max(pages, key=lambda k: pages[k]["p95_ms"])
    print(
        json.dumps(
            {
                "benchmark": "journey",
                "quick": args.quick,
                "rounds": rounds,
                "setup_s": setup,
                "slowest": slowest,
                "slowest_p95_ms": pages[slowest]["p95_ms"],
                "all_under_300ms": all(v["p95_ms"] < 300 for v in pages.values()),
                "requests": figures,
            }
        )
    )


if __name__ == "__main__":
    main()
