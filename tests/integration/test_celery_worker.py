"""A Celery round trip through a real worker process on the configured broker (Redis in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from slides.models import Slide
from slides.tasks import register_slide_task

ROOT = Path(__file__).resolve().parents[2]


def database_url_for_tests() -> str:
    """The URL of the test database pytest-django created, for a worker process to share."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def worker(transactional_db, tmp_path):
    """Start `celery worker` on a private queue; yield the queue name; stop the worker."""
    queue = f"test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "DJANGO_SETTINGS_MODULE": "config.settings"}
    log = open(tmp_path / "worker.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queue, "--pool", "solo",
         "--concurrency", "1", "--without-gossip", "--without-mingle", "-n", f"{queue}@%h", "--loglevel", "INFO"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    yield queue
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.seek(0)
    print(log.read()[-3000:])
    log.close()


@pytest.mark.worker
def test_task_round_trip_through_a_real_worker(worker, case, tiny_tiff):
    node = case.nodes.first()
    result = register_slide_task.apply_async(args=[node.pk, str(tiny_tiff)], queue=worker)
    outcome = result.get(timeout=90)
    assert outcome["ok"] is True, outcome
    slide = Slide.objects.get(pk=outcome["slide"])
    assert (slide.width, slide.height) == (1000, 700)
    assert slide.node == node
    # The same file again: the task reports the duplicate instead of registering it twice.
    again = register_slide_task.apply_async(args=[node.pk, str(tiny_tiff)], queue=worker).get(timeout=60)
    assert again["ok"] is False and "already imported" in again["reason"]
    assert Slide.objects.count() == 1
    print("broker:", settings.CELERY_BROKER_URL.split("://")[0])
