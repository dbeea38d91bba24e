"""The patch-folder dataset kind on real lymph-node tissue (pcam-sample) and on generated patches.

The PCam tests copy a few hundred patches of ../shared/data/pcam-sample into PCam's layout and
train seed 002's scannable primary for one epoch through launch_training and
execute_training_run; they are skipped when the shared data is not beside the clone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.jobs import TrainingRequestError, execute_training_run, launch_training, load_dataset
from inference.patch_folder import read_patch_folder
from inference.records import TrainingRun
from inference.scope import FOLDER_REFUSAL

from ..conftest import SHARED_DATA

PCAM = SHARED_DATA / "pcam-sample"
needs_pcam = pytest.mark.skipif(
    not PCAM.is_dir(),
    reason="../shared/data/pcam-sample is not beside this clone (real PCam patches)",
)
QUICK_RECIPE = {
    "max_epochs": 1,
    "batch_size": 32,
    "seed": 0,
    "early_stopping_patience": 1,
    "model_kwargs": {"width_mult": 0.5},
}


def _source(path: Path, **kw) -> dict:
    return {
        "kind": "patch-folder",
        "path": str(path),
        "mpp": 0.972,
        "label_rule": "centre-32",
        **kw,
    }


def _copy_pcam(out: Path, *, train: int, valid: int, copies: int = 3) -> Path:
    """The first ``train`` / ``valid`` patches of each class, plus ``copies`` byte-identical
    copies of train/1 patches under new names (PCam repeats patches the same way)."""
    for split, n in (("train", train), ("valid", valid)):
        for label in ("0", "1"):
            (out / split / label).mkdir(parents=True)
            for f in sorted((PCAM / split / label).iterdir())[:n]:
                shutil.copyfile(f, out / split / label / f.name)
    for i, f in enumerate(sorted((out / "train" / "1").iterdir())[:copies]):
        shutil.copyfile(f, out / "train" / "1" / f"copy{i}-{f.name}")
    return out


@needs_pcam
@pytest.mark.shared_data
@pytest.mark.timeout(300)
def test_seed002_primary_learns_real_tissue_through_a_training_run(db, tmp_path):
    folder = _copy_pcam(tmp_path / "pcam", train=400, valid=100)
    run = launch_training(dataset_source=_source(folder), recipe=QUICK_RECIPE, enqueue=False)
    assert run.recipe["model_kwargs"]["padding"] == "valid"  # scannable, like a snapshot's primary
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.SUCCEEDED
    version = TrainingRun.objects.get(pk=run.pk).model_version
    assert version.val_auc > 0.7  # one epoch on 800 real patches: 0.84 measured with seed 0
    summary = version.dataset_summary
    assert summary["deduplication"]["duplicates_dropped"] == 3
    assert summary["deduplication"]["files"] == 1003 and summary["train"] == 800
    assert summary["val"] == 200 and summary["split"].startswith("given by the folder")
    assert summary["label_rule"] == "centre-32" and summary["mpp"] == 0.972
    grid = summary["grid"]
    assert grid["patch_px"] == 40 and grid["source_patch_px"] == 96  # the centre 40 px of 96
    assert grid["target_mpp"] == 0.972 and grid["label_rule"] == "centre-32"


@needs_pcam
@pytest.mark.shared_data
def test_a_corrupt_jpeg_is_refused_by_its_name_without_server_paths(db, tmp_path):
    folder = _copy_pcam(tmp_path / "pcam", train=5, valid=3, copies=0)
    good = sorted((folder / "train" / "1").iterdir())[0].read_bytes()
    (folder / "train" / "1" / "broken.jpg").write_bytes(good[: len(good) // 3])
    with pytest.raises(TrainingRequestError) as refused:
        load_dataset(_source(folder))
    message = str(refused.value)
    assert "train/1/broken.jpg is not a readable image" in message
    assert str(tmp_path) not in message
    run = launch_training(dataset_source=_source(folder), recipe=QUICK_RECIPE, enqueue=False)
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.FAILED
    run.refresh_from_db()
    assert "train/1/broken.jpg" in run.status_reason and str(tmp_path) not in run.status_reason


# ---- generated patches: no shared data needed -----------------------------------------------------


def _write_patches(folder: Path, n: int = 6, size: int = 48) -> Path:
    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        (folder / label).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / label / f"p{i}.png")
    return folder


def test_a_folder_of_0_and_1_is_split_by_seed_and_decoded_once(db, tmp_path):
    folder = _write_patches(tmp_path / "patches")
    loaded = load_dataset(_source(folder, crop=40, val_fraction=0.5, seed=3))
    assert loaded.summary["train"] == 6 and loaded.summary["val"] == 6
    assert "seed 3" in loaded.summary["split"]
    x, _y = loaded.train.get_batch([0])
    assert tuple(x.shape) == (1, 3, 40, 40)
    assert read_patch_folder(folder).decoded_now is False  # the cache answered
    full = load_dataset(_source(folder, crop=None))
    assert full.summary["grid"]["patch_px"] == 48 and full.content_hash != loaded.content_hash


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"crop": 24}, "would cut the labelled centre 32 px"),
        ({"mpp": None}, "needs its mpp"),
        ({"label_rule": "edge"}, "label_rule"),
        ({"crop": 64}, "larger than the 48 px patches"),
    ],
)
def test_bad_sources_are_refused_with_the_reason(db, tmp_path, change, said):
    folder = _write_patches(tmp_path / "patches")
    with pytest.raises(TrainingRequestError, match=said):
        load_dataset({**_source(folder), **change})


def test_a_patch_of_another_size_is_named(db, tmp_path):
    folder = _write_patches(tmp_path / "patches")
    Image.new("RGB", (30, 30)).save(folder / "1" / "odd.png")
    with pytest.raises(TrainingRequestError, match=r"1/odd.png is 30 x 30 px"):
        load_dataset(_source(folder))


def test_a_lab_admin_reads_patch_folders_only_under_the_import_roots(people, settings, tmp_path):
    roots = tmp_path / "imports"
    settings.SLIDE_IMPORT_ROOTS = [str(roots)]
    inside = _write_patches(roots / "patches")
    outside = _write_patches(tmp_path / "elsewhere")
    with pytest.raises(TrainingRequestError, match=FOLDER_REFUSAL):
        launch_training(dataset_source=_source(outside), user=people.admin, enqueue=False)
    with pytest.raises(TrainingRequestError, match="no 0/ and 1/ folders"):
        launch_training(dataset_source=_source(roots), user=people.admin, enqueue=False)
    run = launch_training(dataset_source=_source(inside), user=people.admin, enqueue=False)
    assert run.dataset_source["kind"] == "patch-folder" and not run.server_side
