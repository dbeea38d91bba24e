"""The benchmark scripts run in --quick mode and end with one JSON object (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_tiles_benchmark_quick_mode_prints_json_last():
    result = subprocess.run(
        [sys.executable, "benchmarks/tiles.py", "--quick", "--tiles", "40", "--size", "3000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    generated = figures["generated"]
    assert generated["endpoint_cold"]["n"] == generated["raw_getTile"]["n"] > 0
    assert (
        generated["native_share"] > 0.5
    )  # generated TIFFs store YCbCr JPEG tiles that pass through
    assert "cold_p50_ratio" in generated


QUEUES_DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/nodescope_bench_queues"


def _postgres_url() -> str:
    """The PostgreSQL the queue benchmark may use: DATABASE_URL if it names one, else the default."""
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://")) else QUEUES_DEFAULT_DATABASE_URL


def _postgres_unreachable(url: str) -> str | None:
    """Why the benchmark cannot reach PostgreSQL at `url`'s server, or None if it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    try:
        psycopg.connect(admin, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at {parts.hostname}:{parts.port or 5432} is unreachable: {exc}"
    return None


@pytest.mark.timeout(300)
def test_queues_benchmark_quick_mode_prints_json_last():
    """benchmarks/queues.py on PostgreSQL: queries per request constant, JSON last."""
    url = _postgres_url()
    reason = _postgres_unreachable(url)
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        [sys.executable, "benchmarks/queues.py", "--quick", "--cases", "40", "--requests", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "DATABASE_URL": url},
    )
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["database"] == "postgresql" and figures["nodes"] == 40 * 10 + 35
    assert figures["failures"] == []
    queries = figures["queries"]
    assert queries["queue_5_nodes"] == queries["queue_10_nodes"] == queries["queue_20_nodes"]
    assert queries["triage_10_rows"] == queries["triage_100_rows"]
    assert queries["naive_queue_20_nodes"] > queries["naive_queue_5_nodes"]  # the baseline grows
    for key in ("queue_api", "triage_api"):
        assert figures[key]["n"] == 5 and figures[key]["p95_ms"] >= figures[key]["p50_ms"] > 0
    assert figures["baseline"]["triage_p50_ratio"] > 0


@pytest.mark.timeout(300)
def test_load_benchmark_quick_mode_serves_many_viewers_without_errors():
    result = subprocess.run(
        [sys.executable, "benchmarks/load.py", "--quick", "--viewers", "4", "--seconds", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["errors"] == 0
    crowd, single = figures["crowd"], figures["single"]
    assert crowd["viewers"] == 4 and single["viewers"] == 1
    for kind in ("tile", "annotations", "queue_page", "queue_api"):
        assert crowd["kinds"][kind]["n"] > 0 and crowd["kinds"][kind]["p95_ms"] > 0
    assert figures["p95_ratio"]["all"] > 0 and crowd["requests_per_s"] > 0
