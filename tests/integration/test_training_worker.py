"""Training through real Celery worker processes: a tiny model to a good AUC; SIGKILL and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from inference.jobs import launch_training
from inference.records import ModelVersion, TrainingRun
from tests.inference.test_jobs import write_blob_folder
from tests.integration.test_celery_worker import ROOT, database_url_for_tests


def start_worker(queue: str, log_path: Path, stale_seconds: int = 3) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_tests(),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "NODESCOPE_TRAINING_QUEUE": queue,
        "NODESCOPE_JOB_STALE_SECONDS": str(stale_seconds),
        "NODESCOPE_RESULTS_DIR": os.environ["NODESCOPE_RESULTS_DIR_FOR_WORKER"],
    }
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queue, "--pool", "solo",
         "--concurrency", "1", "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
         "-n", f"{queue}-{uuid.uuid4().hex[:4]}@%h", "--loglevel", "INFO"],
        cwd=ROOT, env=env, stdout=open(log_path, "a"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def training_queue(transactional_db, settings, tmp_path, monkeypatch):
    queue = f"test-gpu-{uuid.uuid4().hex[:8]}"
    settings.TRAINING_QUEUE = queue
    monkeypatch.setenv("NODESCOPE_RESULTS_DIR_FOR_WORKER", str(settings.RESULTS_DIR))
    workers: list[subprocess.Popen] = []
    yield queue, workers
    for proc in workers:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    log = tmp_path / "worker.log"
    if log.exists():
        print(log.read_text()[-4000:])


@pytest.mark.worker
def test_real_worker_trains_a_tiny_model_well_above_chance(training_queue, tmp_path, people):
    queue, workers = training_queue
    folder = write_blob_folder(tmp_path / "blobs", n=48, size=16)
    workers.append(start_worker(queue, tmp_path / "worker.log"))
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
        recipe={"max_epochs": 3, "batch_size": 8, "early_stopping_patience": 10, "model_kwargs": {"width_mult": 0.25}},
    )
    # Kill the worker mid-epoch once epoch 1 is checkpointed (progress has moved into epoch 2).
    wait_for(lambda: (TrainingRun.objects.get(pk=run.pk).progress or {}).get("epoch", 0) >= 2, 300, "epoch 2")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    killed = TrainingRun.objects.get(pk=run.pk)
    assert killed.status == TrainingRun.Status.RUNNING  # truthfully: still running, worker gone
    assert not ModelVersion.objects.exists()
    time.sleep(4)  # let its heartbeat go stale
    workers.append(start_worker(queue, tmp_path / "worker.log"))
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).is_finished, 400, "the resumed run to finish")
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.status_reason
    assert run.attempts == 2
    assert "resumed from epoch" in run.status_reason
    version = run.model_version
    assert Path(version.weights_path).stat().st_size > 0
    assert len(version.curves["epoch"]) == run.progress["epoch"]
