"""The benchmark scripts run in --quick mode and end with one JSON object (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_tiles_benchmark_quick_mode_prints_json_last():
    result = subprocess.run(
        [sys.executable, "benchmarks/tiles.py", "--quick", "--tiles", "40", "--size", "3000"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    generated = figures["generated"]
    assert generated["endpoint_cold"]["n"] == generated["raw_getTile"]["n"] > 0
    assert generated["native_share"] > 0.5  # generated TIFFs store YCbCr JPEG tiles that pass through
    assert "cold_p50_ratio" in generated
