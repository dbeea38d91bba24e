"""benchmarks/review.py runs in --quick mode and ends with one JSON object (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_review_benchmark_quick_mode_prints_json_last():
    result = subprocess.run(
        [sys.executable, "benchmarks/review.py", "--quick", "--cases", "60", "--requests", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["nodes"] == 300
    for key in ("queue_page", "queue_api", "triage_api"):
        assert figures[key]["n"] == 5 and figures[key]["p95_ms"] >= figures[key]["p50_ms"] > 0
        assert figures[key]["queries"] > 0
    assert figures["baseline"]["triage_p50_ratio"] > 0
