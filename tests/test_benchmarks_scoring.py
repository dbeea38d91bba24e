"""benchmarks/scoring.py --quick: dense scanning against the patch loop, same answers, JSON last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_scoring_benchmark_quick_mode_scans_exactly_and_prints_json_last():
    result = subprocess.run(
        [sys.executable, "benchmarks/scoring.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    dense = figures["region"]["variants"]["stride2"]
    # the same probabilities as classifying every window on its own (float rounding only)
    assert dense["max_abs_diff"] <= 1e-4 and figures["node"]["sample_max_abs_diff"] <= 1e-4
    assert dense["mac_ratio"] > 1  # dense scanning does less work per window than the loop
    assert figures["node"]["tissue_windows"] > 0 and figures["end_to_end_ratio"] > 0
    assert set(figures["seconds_per_cm2"]["cpu"]) >= {"dense", "end_to_end", "model_only"}
