"""Seed 002 end to end (benchmarks/seed002.py --quick): generated nodes, annotations through the
API, snapshot, primary, hard-negative mining, secondary, locked thresholds, test nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
def test_seed002_quick_runs_the_whole_chain_and_reports_node_level_results():
    result = subprocess.run(
        [sys.executable, "benchmarks/seed002.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=880,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["annotations_posted"] > 0 and figures["snapshot_patches"] > 0
    assert figures["primary_val_auc"] > 0.8  # the primary learnt the generated morphology
    assert figures["hard_negatives"] > 0  # mining found false positives to train the secondary on
    for model in ("primary", "cascade"):
        m = figures[model]
        assert m["tp"] + m["fn"] == 4 and m["tn"] + m["fp"] == 4
        assert 0 < m["threshold"] <= 1
    # the secondary vetoes windows: never more tumour windows on negative nodes than the primary
    fp = figures["negative_test_windows_called_tumour"]
    assert fp["cascade"] <= fp["primary"]
    assert set(figures["stage_seconds"]) >= {
        "generate nodes",
        "annotate via API",
        "train primary",
        "mine hard negatives + train secondary",
        "score test nodes",
    }
