"""A Celery round trip through a real worker process on the configured broker (Redis in CI)."""

from __future__ import annotations

import pytest
from django.conf import settings

from slides.models import Slide
from slides.tasks import register_slide_task


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
    again = register_slide_task.apply_async(args=[node.pk, str(tiny_tiff)], queue=worker).get(
        timeout=60
    )
    assert again["ok"] is False and "already imported" in again["reason"]
    assert Slide.objects.count() == 1
    print("broker:", settings.CELERY_BROKER_URL.split("://")[0])
