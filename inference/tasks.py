"""Celery tasks of inference (routed to the `gpu` queue): thin wrappers around `inference.jobs`."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from .jobs import execute_training_run
from .records import TrainingRun, lost_job_ids

log = logging.getLogger(__name__)


@shared_task(bind=True, name="inference.train", acks_late=True, reject_on_worker_lost=True)
def run_training(self, run_id: int) -> str:
    """Train one TrainingRun; idempotent (a finished or claimed run is left alone)."""
    return execute_training_run(run_id=run_id, worker=self.request.hostname or "worker")


def recover_stale_runs() -> list[int]:
    """Queue again every run left `running` by a worker that stopped sending heartbeats, and
    every run still `queued` long after its launch (its message may have died with a broker that
    kept no copy). A second message is harmless: only one worker can claim a run."""
    stale = lost_job_ids(TrainingRun.objects.all())
    for pk in stale:
        log.warning(
            "training run %s lost its worker; queueing it to resume from its checkpoint", pk
        )
        run_training.apply_async(args=[pk], queue=settings.TRAINING_QUEUE)
    return stale


@worker_ready.connect
def _recover_on_start(sender=None, **kwargs):
    """A training worker that starts (e.g. after a crash) queues again what its predecessor left."""
    consumer = getattr(sender, "task_consumer", None)
    queues = {q.name for q in getattr(consumer, "queues", [])}
    if settings.TRAINING_QUEUE in queues:
        recover_stale_runs()


# ---- scoring (inference.rescoring) -----------------------------------------------------------


@shared_task(bind=True, name="inference.score_slide", acks_late=True, reject_on_worker_lost=True)
def score_slide(self, slide_scoring_id: int) -> str:
    """Scan one slide of a ScoringRun into its heat map; idempotent (see `score_slide_job`)."""
    from .rescoring import score_slide_job

    return score_slide_job(slide_scoring_id, worker=self.request.hostname or "worker")


@worker_ready.connect
def _recover_scoring_on_start(sender=None, **kwargs):
    """A scoring worker that starts queues again the slides its predecessor left half-scored."""
    consumer = getattr(sender, "task_consumer", None)
    queues = {q.name for q in getattr(consumer, "queues", [])}
    if settings.TRAINING_QUEUE in queues:
        from .gradcam import recover_stale_gradcams
        from .rescoring import recover_stale_slide_jobs

        recover_stale_slide_jobs()
        recover_stale_gradcams()


# ---- Grad-CAM on demand (inference.gradcam) -------------------------------------------------


@shared_task(bind=True, name="inference.gradcam", acks_late=True, reject_on_worker_lost=True)
def compute_gradcam(self, gradcam_id: int) -> str:
    """Compute one Grad-CAM record; idempotent (see `execute_gradcam`)."""
    from .gradcam import execute_gradcam

    return execute_gradcam(gradcam_id, worker=self.request.hostname or "worker")
