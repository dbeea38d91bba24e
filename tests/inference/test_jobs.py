"""Training runs as jobs: state machine, ModelVersion only after success, cancel, promotion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.jobs import (
    PromotionRefused,
    TrainingRequestError,
    execute_training_run,
    launch_training,
    promote,
    rollback,
)
from inference.records import ModelVersion, TrainingRun

FAST = {
    "max_epochs": 2,
    "batch_size": 16,
    "early_stopping_patience": 2,
    "model_kwargs": {"width_mult": 0.25},
}


def write_blob_folder(root: Path, n: int = 24, size: int = 16) -> Path:
    """A learnable image folder: tumour patches hold a dark blob, normal ones are plain."""
    rng = np.random.default_rng(0)
    for label in ("normal", "tumour"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.full((size, size, 3), 200, np.uint8) + rng.integers(
                0, 30, (size, size, 3), dtype=np.uint8
            )
            if label == "tumour":
                cy, cx = rng.integers(4, size - 4, 2)
                img[cy - 3 : cy + 3, cx - 3 : cx + 3] = (60, 20, 90)
            Image.fromarray(img).save(root / label / f"{i}.png")
    return root


@pytest.fixture
def blob_folder(tmp_path) -> Path:
    return write_blob_folder(tmp_path / "blobs")


def test_successful_run_creates_a_versioned_model(db, blob_folder, settings):
    run = launch_training(
        dataset_source={"kind": "image-folder", "path": str(blob_folder)},
        recipe=FAST,
        enqueue=False,
    )
    assert run.status == TrainingRun.Status.QUEUED
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.SUCCEEDED
    run.refresh_from_db()
    version = run.model_version
    assert Path(version.weights_path).is_file() and Path(version.weights_path).is_relative_to(
        settings.RESULTS_DIR
    )
    assert len(version.weights_sha256) == 64 and len(version.dataset_hash) == 64
    assert version.classes == ["normal", "tumour"]
    assert 0.0 <= version.val_auc <= 1.0 and version.roc["fpr"][0] == 0.0
    assert len(version.curves["val_auc"]) == run.progress["epoch"] == 2
    assert version.hyperparameters["max_epochs"] == 2 and version.code_version
    assert version.dataset_summary["counts"] == {"normal": 24, "tumour": 24}
    assert "random" in version.dataset_summary["split"]  # no groups: the split says so
    # Running the task again is harmless.
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.SUCCEEDED
    assert ModelVersion.objects.count() == 1


def test_bad_dataset_fails_truthfully_without_a_model(db, blob_folder):
    run = launch_training(
        dataset_source={"kind": "image-folder", "path": str(blob_folder)},
        recipe=FAST,
        enqueue=False,
    )
    for png in blob_folder.rglob("*.png"):
        png.unlink()
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.FAILED
    run.refresh_from_db()
    assert "no labelled images" in run.status_reason
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"architecture": "alexnet"}, "unknown architecture"),
        ({"stage": "tertiary"}, "unknown stage"),
        ({"recipe": {"learning_rat": 1}}, "unknown recipe fields"),
        ({"dataset_source": {"kind": "image-folder", "path": "/nonexistent"}}, "does not exist"),
        ({"dataset_source": {"kind": "pickle", "path": "/"}}, "unknown dataset kind"),
        ({"recipe": {"learning_rate": 50.0}}, "learning_rate=50.0 is outside"),
        ({"recipe": {"max_epochs": 100000}}, "max_epochs=100000 is outside"),
        ({"recipe": {"batch_size": 0}}, "batch sizes and max_epochs must be positive"),
    ],
)
def test_bad_requests_are_refused(db, blob_folder, kwargs, message):
    request = {
        "dataset_source": {"kind": "image-folder", "path": str(blob_folder)},
        "enqueue": False,
        **kwargs,
    }
    with pytest.raises(TrainingRequestError, match=message):
        launch_training(**request)
    assert not TrainingRun.objects.exists()


def test_empty_and_one_class_datasets_are_refused_before_queueing(db, tmp_path):
    empty = tmp_path / "empty"
    (empty / "tumour").mkdir(parents=True)
    with pytest.raises(TrainingRequestError, match="no labelled images"):
        launch_training(dataset_source={"kind": "image-folder", "path": str(empty)}, enqueue=False)
    one = write_blob_folder(tmp_path / "one", n=4)
    for png in (one / "normal").glob("*.png"):
        png.unlink()
    with pytest.raises(TrainingRequestError, match="one class only"):
        launch_training(dataset_source={"kind": "image-folder", "path": str(one)}, enqueue=False)
    arrays = tmp_path / "a.npz"
    np.savez(arrays, images=np.zeros((3, 8, 8, 3), np.uint8), labels=np.array([1, 1, 1]))
    with pytest.raises(TrainingRequestError, match="one class only"):
        launch_training(dataset_source={"kind": "arrays", "path": str(arrays)}, enqueue=False)
    assert not TrainingRun.objects.exists()


def test_cancel_before_start_and_during_training(db, blob_folder):
    source = {"kind": "image-folder", "path": str(blob_folder)}
    queued = launch_training(dataset_source=source, recipe=FAST, enqueue=False)
    queued.request_cancel()
    assert queued.status == TrainingRun.Status.CANCELLED
    assert execute_training_run(run_id=queued.pk) == TrainingRun.Status.CANCELLED

    running = launch_training(dataset_source=source, recipe=FAST, enqueue=False)
    TrainingRun.objects.filter(pk=running.pk).update(cancel_requested=True)
    # a run whose cancel was requested before a worker claimed it never starts
    assert execute_training_run(run_id=running.pk) == TrainingRun.Status.CANCELLED
    assert not ModelVersion.objects.exists()


def test_claim_is_exclusive_and_stale_runs_can_be_reclaimed(db, blob_folder, settings):
    run = launch_training(
        dataset_source={"kind": "image-folder", "path": str(blob_folder)},
        recipe=FAST,
        enqueue=False,
    )
    assert run.claim(worker="a") is True
    assert TrainingRun.objects.get(pk=run.pk).claim(worker="b") is False  # heartbeat is fresh
    settings.JOB_STALE_SECONDS = -1  # every heartbeat is now stale: the worker is taken to be dead
    assert TrainingRun.objects.get(pk=run.pk).claim(worker="c") is True
    run.refresh_from_db()
    assert run.attempts == 2 and run.worker == "c"


def test_promote_and_roll_back(db, blob_folder, people):
    source = {"kind": "image-folder", "path": str(blob_folder)}
    versions = []
    for _ in range(2):
        run = launch_training(dataset_source=source, recipe=FAST, enqueue=False)
        execute_training_run(run_id=run.pk)
        versions.append(ModelVersion.objects.get(training_run=run))
    with pytest.raises(PromotionRefused, match="no locked threshold"):
        promote(version=versions[0], user=people.admin)
    ModelVersion.objects.filter(pk__in=[v.pk for v in versions]).update(threshold=0.5)
    for version in versions:
        version.refresh_from_db()
    promote(version=versions[0], user=people.admin)
    promote(version=versions[1], user=people.admin)
    assert list(ModelVersion.objects.filter(is_live=True)) == [versions[1]]
    back = rollback(stage="primary", user=people.admin)
    assert back == versions[0] and ModelVersion.objects.get(is_live=True) == versions[0]
    from audit.models import AuditEvent

    assert AuditEvent.objects.filter(action="model promoted").count() == 3


def test_snapshot_datasets_must_exist_and_be_ready(db):
    with pytest.raises(TrainingRequestError, match="no dataset snapshot"):
        launch_training(dataset_source={"kind": "snapshot", "id": 999}, enqueue=False)
    assert not TrainingRun.objects.exists()
