"""Fixtures of the integration tests: real Celery workers on private queues, stopped afterwards."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from .workers import print_log, start_worker, stop


@pytest.fixture
def worker(transactional_db, tmp_path):
    """One worker on a private queue; yields the queue name."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    proc = start_worker(queue, tmp_path / "worker.log")
    yield queue
    stop(proc)
    print_log(tmp_path / "worker.log", 3000)


@pytest.fixture
def training_queue(transactional_db, settings, tmp_path):
    """A private training/scoring queue (settings.TRAINING_QUEUE) and a list to put the workers
    started on it in; every worker still running is stopped afterwards."""
    queue = f"test-gpu-{uuid.uuid4().hex[:8]}"
    settings.TRAINING_QUEUE = queue
    workers: list[subprocess.Popen] = []
    yield queue, workers
    for proc in workers:
        stop(proc)
    print_log(tmp_path / "worker.log")
