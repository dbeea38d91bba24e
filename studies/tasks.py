"""Celery tasks of reader studies: thin wrappers around `studies.services`."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="studies.model_answers", acks_late=True, reject_on_worker_lost=True)
def compute_model_answers_task(study_id: int) -> str:
    """The model's answers for a closed study, on the `gpu` queue; idempotent (see
    `services.compute_model_answers`)."""
    from .services import compute_model_answers

    return compute_model_answers(study_id=study_id)
