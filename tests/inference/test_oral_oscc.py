"""Training on real H&E pixels: the oral OSCC fields in ../shared/data (skipped without them).

A small, fast check that the default architecture learns real tumour morphology: MobileNetV2
(width 0.5, 64 px, output stride 8) with the recipe's dihedral and colour augmentation, 3 epochs
on the 100x fields (520 images, 364 for training), through the experiment script end to end.
The split is random per image (the set has no patient ids), so the figure is optimistic; the
assertion only asks for an AUC well above chance (0.5).
"""

from __future__ import annotations

import json

import pytest

from inference.experiments import oral_oscc
from tests.conftest import SHARED_DATA

ORAL = SHARED_DATA / "oral-oscc-images"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(
        not (ORAL / "labels.csv").is_file(), reason="../shared/data/oral-oscc-images is missing"
    ),
]


def test_mobilenetv2_learns_oral_tumour_vs_normal(capsys):
    # --quick: MobileNetV2 width 0.5, 64 px, output stride 8, no dropout, batch 16, 3 epochs,
    # the recipe's dihedral and colour augmentation, 100x fields only
    summary = oral_oscc.main(["--quick"])
    out = capsys.readouterr().out.strip().splitlines()
    assert "no patient ids" in "\n".join(out)
    assert json.loads(out[-1]) == summary
    assert summary["model"] == "mobilenetv2" and summary["n_train"] == 364
    assert summary["colour_jitter"] == 1.0 and summary["epochs_run"] == 3
    assert summary["val_auc"] > 0.75, summary
    assert summary["train_s"] < 120
