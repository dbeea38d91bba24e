"""Workers that start queue again the jobs a broker restart may have lost."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from inference.records import ScoringRun, SlideScoring, TrainingRun
from inference.rescoring import recover_stale_slide_jobs
from inference.tasks import recover_stale_runs
from tests.inference.test_scoring import (
    generated_slide,
    make_version,
    random_dense_model,
    save_weights,
)

pytestmark = pytest.mark.django_db


def test_long_queued_and_silent_running_runs_are_queued_again(settings):
    old = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 60)
    lost = TrainingRun.objects.create(dataset_source={"kind": "test"})
    TrainingRun.objects.filter(pk=lost.pk).update(created_at=old)
    silent = TrainingRun.objects.create(
        dataset_source={"kind": "test"}, status=TrainingRun.Status.RUNNING, heartbeat_at=old
    )
    fresh = TrainingRun.objects.create(dataset_source={"kind": "test"})
    alive = TrainingRun.objects.create(
        dataset_source={"kind": "test"},
        status=TrainingRun.Status.RUNNING,
        heartbeat_at=timezone.now(),
    )
    done = TrainingRun.objects.create(
        dataset_source={"kind": "test"}, status=TrainingRun.Status.SUCCEEDED
    )
    TrainingRun.objects.filter(pk=done.pk).update(created_at=old)
    assert sorted(recover_stale_runs()) == sorted([lost.pk, silent.pk])
    assert fresh.pk and alive.pk  # left to their messages and workers


def test_long_queued_slide_jobs_are_queued_again(settings, case, tmp_path):
    slide = generated_slide(case.nodes.first(), tmp_path / "slides", seed=3, tumour=False)
    old = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 60)
    version = make_version(save_weights(random_dense_model(), tmp_path / "m.pt"))
    lost_run = ScoringRun.objects.create(model_version=version)
    ScoringRun.objects.filter(pk=lost_run.pk).update(created_at=old)
    lost = SlideScoring.objects.create(scoring_run=lost_run, slide=slide)
    fresh = SlideScoring.objects.create(
        scoring_run=ScoringRun.objects.create(model_version=version), slide=slide
    )
    assert recover_stale_slide_jobs() == [lost.pk]
    assert fresh.status == SlideScoring.Status.QUEUED
