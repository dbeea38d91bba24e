"""Training through real Celery worker processes: a tiny model to a good AUC; SIGKILL and resume."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from inference.jobs import launch_training
from inference.records import ModelVersion, TrainingRun
from tests.inference.test_jobs import write_blob_folder
from tests.integration.workers import start_worker, wait_for


@pytest.mark.worker
def test_real_worker_trains_a_tiny_model_well_above_chance(
    training_queue, tmp_path, people, settings
):
    queue, workers = training_queue
    folder = write_blob_folder(tmp_path / "blobs", n=48, size=16)
    # an admin's run reads files under the import roots only, at launch and on the worker
    settings.SLIDE_IMPORT_ROOTS = [tmp_path]
    workers.append(
        start_worker(queue, tmp_path / "worker.log", NODESCOPE_IMPORT_ROOTS=str(tmp_path))
    )
    run = launch_training(
        dataset_source={"kind": "image-folder", "path": str(folder)},
        recipe={"max_epochs": 4, "batch_size": 16, "model_kwargs": {"width_mult": 0.25}},
        user=people.admin,
    )
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).is_finished, 120, "the run to finish")
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.status_reason
    assert run.worker.startswith(queue)
    assert run.progress["epoch"] >= 1 and run.progress["fraction"] > 0
    assert run.model_version.val_auc > 0.8


@pytest.mark.worker
def test_sigkilled_worker_resumes_from_its_checkpoint(training_queue, tmp_path):
    queue, workers = training_queue
    folder = write_blob_folder(tmp_path / "blobs", n=96, size=16)
    first = start_worker(queue, tmp_path / "worker.log")
    workers.append(first)
    run = launch_training(
        dataset_source={"kind": "image-folder", "path": str(folder)},
        recipe={
            "max_epochs": 3,
            "batch_size": 8,
            "early_stopping_patience": 10,
            "model_kwargs": {"width_mult": 0.25},
        },
    )
    # Kill the worker mid-epoch once epoch 1 is checkpointed (progress has moved into epoch 2).
    wait_for(
        lambda: (TrainingRun.objects.get(pk=run.pk).progress or {}).get("epoch", 0) >= 2,
        300,
        "epoch 2",
    )
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    killed = TrainingRun.objects.get(pk=run.pk)
    assert killed.status == TrainingRun.Status.RUNNING  # truthfully: still running, worker gone
    assert not ModelVersion.objects.exists()
    time.sleep(4)  # let its heartbeat go stale
    workers.append(start_worker(queue, tmp_path / "worker.log"))
    wait_for(
        lambda: TrainingRun.objects.get(pk=run.pk).is_finished, 400, "the resumed run to finish"
    )
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.status_reason
    assert run.attempts == 2
    assert "resumed from epoch" in run.status_reason
    version = run.model_version
    assert Path(version.weights_path).stat().st_size > 0
    assert len(version.curves["epoch"]) == run.progress["epoch"]
