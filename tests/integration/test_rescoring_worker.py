"""Rescoring through real Celery worker processes: the fan-out after a promotion (one task per
slide on the gpu queue, node scores when a node's slides are done), and a worker SIGKILLed in the
middle of a slide (no heat map row or file from it; the next worker scans the slide again)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from django.conf import settings

from inference.heatmaps import read_raster
from inference.jobs import promote
from inference.records import HeatMap, NodeScore, ScoringRun, SlideScoring, Stage
from inference.rescoring import rescore_after_promotion, rescore_all
from tests.inference.test_scoring import (
    generated_slide,
    make_version,
    random_dense_model,
    save_weights,
)
from tests.integration.workers import start_worker, wait_for


def _finished(run: ScoringRun) -> bool:
    run.refresh_from_db()
    return run.status in (ScoringRun.Status.SUCCEEDED, ScoringRun.Status.FAILED)


@pytest.mark.worker
def test_promotion_fans_out_one_task_per_slide_to_a_real_worker(
    training_queue,
    tmp_path,
    case,
    people,
):
    queue, workers = training_queue
    first, second = case.nodes.all()
    slides = [
        generated_slide(first, tmp_path / "s", seed=1, tumour=True, size=(500, 400)),
        generated_slide(first, tmp_path / "s", seed=2, tumour=False, size=(400, 400)),
        generated_slide(second, tmp_path / "s", seed=3, tumour=False, size=(400, 300)),
    ]
    weights = save_weights(random_dense_model(), tmp_path / "dense.pt")
    version = make_version(weights, threshold=0.5)
    workers.append(start_worker(queue, tmp_path / "worker.log"))
    promote(version=version, user=people.admin)
    # what promotion triggers (the same run if inference.jobs.promote already queued it)
    run = rescore_after_promotion(version=version, user=people.admin)
    assert run.trigger == ScoringRun.Trigger.PROMOTION and run.slides_total == 3
    wait_for(lambda: _finished(run), 180, "the scoring run to finish")
    assert run.status == ScoringRun.Status.SUCCEEDED, list(
        run.slide_jobs.values_list("status_reason", flat=True)
    )
    assert (run.slides_done, run.slides_failed) == (3, 0) and run.finished_at
    for job in run.slide_jobs.all():
        assert job.status == SlideScoring.Status.SUCCEEDED and job.progress == 1.0
        assert job.status_reason.startswith(queue)  # scanned by the worker, not here
    heatmaps = {h.slide_id: h for h in HeatMap.objects.filter(scoring_run=run)}
    assert set(heatmaps) == {s.pk for s in slides}
    for heatmap in heatmaps.values():
        assert heatmap.model_version == version and Path(heatmap.raster_path).is_file()
        assert read_raster(heatmap.raster_path).counts.shape == (heatmap.rows, heatmap.cols)
    scores = {s.node_id: s for s in NodeScore.objects.filter(scoring_run=run)}
    assert set(scores) == {first.pk, second.pk}
    expected = max(heatmaps[slides[0].pk].max_score, heatmaps[slides[1].pk].max_score)
    assert scores[first.pk].score == expected  # the maximum over the node's two slides
    assert scores[first.pk].model_version == version and scores[first.pk].threshold == 0.5
    assert scores[first.pk].screened_positive == (expected >= 0.5)
    # scoring again keeps the older scores beside the new ones
    again = rescore_all(version=version, slides=[slides[2].pk], user=people.admin)
    wait_for(lambda: _finished(again), 120, "the second run to finish")
    assert NodeScore.objects.filter(node=second).count() == 2
    assert HeatMap.objects.filter(slide=slides[2]).count() == 2


@pytest.mark.worker
def test_sigkilled_worker_leaves_no_heat_map_and_the_slide_is_rescored(
    training_queue,
    tmp_path,
    case,
):
    queue, workers = training_queue
    slide = generated_slide(
        # big enough that the scan lasts seconds (a 2,400 px slide now scans in under one)
        case.nodes.first(),
        tmp_path / "s",
        seed=7,
        tumour=True,
        size=(6400, 6000),
    )
    version = make_version(save_weights(random_dense_model(), tmp_path / "dense.pt"))
    assert version.stage == Stage.PRIMARY
    first = start_worker(queue, tmp_path / "worker.log")
    workers.append(first)
    run = rescore_all(version=version)
    job = run.slide_jobs.get()

    def scanning() -> bool:
        job.refresh_from_db()
        return job.status == SlideScoring.Status.RUNNING and 0 < job.progress < 0.9

    wait_for(scanning, 120, "the slide to be half scanned")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    job.refresh_from_db()
    assert job.status == SlideScoring.Status.RUNNING  # truthfully: still running, worker gone
    assert not HeatMap.objects.exists() and not NodeScore.objects.exists()
    folder = Path(settings.RESULTS_DIR) / "heatmaps" / f"run-{run.pk}"
    assert not (folder / f"slide-{slide.pk}.npz").exists()
    time.sleep(4)  # let its heartbeat go stale (the workers run with a 3 s limit)
    workers.append(start_worker(queue, tmp_path / "worker.log"))
    wait_for(lambda: _finished(run), 180, "the rescored slide to finish")
    job.refresh_from_db()
    assert run.status == ScoringRun.Status.SUCCEEDED and job.attempts == 2
    heatmap = HeatMap.objects.get()
    assert heatmap.raster_path == str(folder / f"slide-{slide.pk}.npz")
    assert read_raster(heatmap.raster_path).counts.shape == (heatmap.rows, heatmap.cols)
    assert not list(folder.glob(".*.tmp"))
    assert NodeScore.objects.get().max_heatmap == heatmap
