"""benchmarks/images.py --quick: ResNet-50 (224 px) and Inception-v3 (299 px) training and
inference images/s against a baseline in the same process, JSON last (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_images_benchmark_quick_mode_prints_json_last():
    done = subprocess.run(
        [sys.executable, "benchmarks/images.py", "--quick", "--device", "cpu"]
        + ["--batch-size", "2", "--iters", "1", "--warmup", "0", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["benchmark"] == "images" and figures["quick"] is True
    assert figures["device"] == "cpu" and figures["batch_size"] == 2
    sizes = {m["model"]: m["input_px"] for m in figures["models"]}
    assert sizes == {"resnet50": 224, "inception-v3": 299}
    for model in figures["models"]:
        infer, train = model["inference"], model["training"]
        # the platform path computes the same probabilities (batch norms folded, channels-last)
        assert infer["max_abs_diff"] <= 1e-4 and infer["max_rel_logit_diff"] <= 1e-4
        assert infer["batch_norms_folded"] > 0
        for part in (infer, train):
            assert part["baseline_images_per_s"] > 0 and part["platform_images_per_s"] > 0
            assert part["ratio"] == round(
                part["platform_images_per_s"] / part["baseline_images_per_s"], 2
            )
