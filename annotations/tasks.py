"""Celery tasks of annotations (the `default` queue): thin wrappers around the service modules."""

from __future__ import annotations

from celery import shared_task

from .extraction import execute_extraction


@shared_task(
    bind=True, name="annotations.extract_dataset", acks_late=True, reject_on_worker_lost=True
)
def extract_dataset(self, dataset_id: int) -> str:
    """Extract the patch pixels of one Dataset snapshot; idempotent (a ready one is left alone,
    a stale or failed one is resumed)."""
    return execute_extraction(dataset_id=dataset_id, worker=self.request.hostname or "worker")
