"""Closing a study queues the model's answers on the training (`gpu`) queue; a real Celery worker
process computes and stores them."""

from __future__ import annotations

import uuid

import pytest

from studies.models import ReaderStudy
from tests.integration.workers import print_log, start_worker, stop, wait_for
from tests.review.factories import make_heatmap

from .conftest import create_study


@pytest.mark.worker
def test_a_real_worker_stores_the_models_answers_after_closing(
    transactional_db, settings, tmp_path, setup
):
    queue = f"test-gpu-{uuid.uuid4().hex[:8]}"
    settings.TRAINING_QUEUE = queue
    slides = setup.slides[:4]
    for i, slide in enumerate(slides):
        make_heatmap(slide, setup.version, max_score=0.2 + 0.2 * i)  # 0.2, 0.4, 0.6, 0.8
    sid = create_study(setup, images=[s.pk for s in slides])["id"]
    assert setup.lead_client.post(f"/api/studies/{sid}/open/").status_code == 200
    log = tmp_path / "worker.log"
    worker = start_worker(queue, log)
    try:
        assert setup.lead_client.post(f"/api/studies/{sid}/close/").status_code == 200

        def finished():
            study = ReaderStudy.objects.get(pk=sid)
            return study if study.model_status in ("done", "failed") else None

        study = wait_for(finished, 90, "the model's answers")
    finally:
        stop(worker)
        print_log(log)
    assert study.model_status == "done", study.model_status_reason
    labels = {m.image.slide_id: m.label for m in study.model_answers.all()}
    assert labels == {
        slides[0].pk: "benign",
        slides[1].pk: "benign",
        slides[2].pk: "metastatic",
        slides[3].pk: "metastatic",
    }
    assert "studies.model_answers[" in log.read_text()  # run by the worker, not here
