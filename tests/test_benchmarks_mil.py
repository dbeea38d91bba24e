"""benchmarks/mil.py runs in --quick mode and ends with one JSON object (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mil_benchmark_quick_mode_prints_json_last():
    done = subprocess.run(
        [sys.executable, "benchmarks/mil.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == "mil" and figures["quick"] is True
    assert {f["backbone"] for f in figures["features"]} == {"resnet-small", "mobilenetv2"}
    assert all(f["patches_per_s"] > 0 and f["one_by_one_per_s"] > 0 for f in figures["features"])
    training = figures["training"]
    assert training["bags_per_s"] > 0 and training["one_bag_per_step_per_s"] > 0
    assert training["ratio"] == round(
        training["bags_per_s"] / training["one_bag_per_step_per_s"], 2
    )
    assert set(figures["learning"]) == {"image_only", "with_clinical"}
