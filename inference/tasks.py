"""Celery tasks of inference (routed to the `gpu` queue): thin wrappers around `inference.jobs`."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from celery.signals import worker_ready

from .jobs import execute_training_run
from .records import TrainingRun

log = logging.getLogger(__name__)


@shared_task(bind=True, name="inference.train", acks_late=True, reject_on_worker_lost=True)
def run_training(self, run_id: int) -> str:
    """Train one TrainingRun; idempotent (a finished or claimed run is left alone)."""
    return execute_training_run(run_id=run_id, worker=self.request.hostname or "worker")


def recover_stale_runs() -> list[int]:
    """Queue again every run left `running` by a worker that stopped sending heartbeats."""
    stale = list(
        TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING, heartbeat_at__lt=TrainingRun.stale_before())
        .values_list("pk", flat=True)
    )
    for pk in stale:
        log.warning("training run %s lost its worker; queueing it to resume from its checkpoint", pk)
        run_training.apply_async(args=[pk], queue=settings.TRAINING_QUEUE)
    return stale


@worker_ready.connect
def _recover_on_start(sender=None, **kwargs):
    """A training worker that starts (e.g. after a crash) queues again what its predecessor left."""
    consumer = getattr(sender, "task_consumer", None)
    queues = {q.name for q in getattr(consumer, "queues", [])}
    if settings.TRAINING_QUEUE in queues:
        recover_stale_runs()
