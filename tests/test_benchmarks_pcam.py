"""benchmarks/pcam.py --quick: seed 002's primary on a few hundred real PCam patches, evaluated on
a sample of pcam-sample/valid; the last line is one JSON object."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.shared_data
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    not (SHARED_DATA / "pcam-sample").is_dir(),
    reason="../shared/data/pcam-sample is not beside this clone (real PCam patches)",
)
def test_pcam_benchmark_quick_mode_prints_patch_auc_last():
    result = subprocess.run(
        [sys.executable, "benchmarks/pcam.py", "--quick", "--bootstrap", "200"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["patch_auc"] > 0.6  # one epoch on 400 patches: 0.83 measured
    low, high = figures["patch_auc_ci95"]
    assert low <= figures["patch_auc"] <= high
    assert {"baseline", "baseline + TTA"} <= set(figures["variants"])
    assert figures["grid"]["patch_px"] == 40 and figures["grid"]["label_rule"] == "centre-32"
    assert figures["train_images_per_s"] > 0
