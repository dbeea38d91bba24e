"""Grad-CAM on demand (inference.gradcam): the map peaks on the generated tumour, regions are
validated, maps are cached per region and model, and only the slide's lab sees them."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from inference.gradcam import (
    GradCamError,
    Region,
    check_region,
    compute_region,
    gradcam_image,
    read_gradcam_map,
)
from inference.models.layers import PatchClassifier
from inference.records import GradCam
from inference.scoring import Classifier, ScanGeometry
from slides.synthetic import load_masks

from .test_scoring import generated_slide, make_version, random_dense_model, save_weights


class PinkAndBlue(PatchClassifier):
    """A hand-made model with a known decision: two feature channels, "pinkness" (red minus green
    above 0.16: eosin, which the generated tumour nests have most of) and blue, pooled 8 x 8 with stride 4
    (a coarse last layer, as in a real net); the tumour logit reads pinkness only. Blue is brighter
    outside the tumour, so a map that did not weigh channels by their gradients would peak there."""

    name = "pink-and-blue"

    def __init__(self, *, gain: float = 40.0, cut: float = 0.02) -> None:
        super().__init__()
        self.padding, self.output_stride, self.input_size = "valid", 4, 40
        self.in_channels, self.config = 3, {}
        self.dropout = torch.nn.Identity()
        self.fc = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0], [gain, 0.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, -gain * cut]))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        pink = F.relu(x[:, 0:1] - x[:, 1:2] - 0.16)
        blue = x[:, 2:3]
        return F.avg_pool2d(torch.cat([pink, blue], dim=1), kernel_size=8, stride=4)


def pink_classifier() -> Classifier:
    return Classifier(model=PinkAndBlue(), mean=(0, 0, 0), std=(1, 1, 1)).to("cpu")


def test_gradcam_weighs_channels_by_the_gradient_of_the_tumour_logit():
    """On an image with a pink square and a bright blue square, the map lies on the pink one."""
    image = np.full((120, 160, 3), 120, np.uint8)
    image[20:60, 20:60] = (200, 110, 120)  # pink: the feature the model reads
    image[60:110, 100:150] = (120, 120, 250)  # blue: a brighter channel the model ignores
    result = gradcam_image(pink_classifier(), image, window=40)
    assert len(result.origins) == 3 * 4  # 120 x 160 px cut into 40 px windows
    r, c = result.peak
    assert 20 <= r < 60 and 20 <= c < 60
    cam = result.normalised()
    assert cam[60:110, 100:150].max() < 0.05  # nothing on the blue square


def test_a_region_is_stitched_from_windows_that_each_see_only_themselves():
    """Stitching equals explaining each window on its own (edge windows overlap and average)."""
    classifier = Classifier(model=random_dense_model(seed=3)).to("cpu")
    image = np.random.default_rng(4).integers(0, 256, (100, 90, 3), dtype=np.uint8)
    stitched = gradcam_image(classifier, image, window=40)
    assert stitched.origins == [(r, c) for r in (0, 40, 60) for c in (0, 40, 50)]
    alone = gradcam_image(classifier, image[40:80, 0:40], window=40)
    np.testing.assert_allclose(stitched.cam[40:60, 0:40], alone.cam[:20], rtol=1e-4, atol=1e-6)
    assert stitched.cam.max() > 0


def test_gradcam_peaks_on_the_generated_tumour(db, case, tmp_path):
    """A generated slide (exact masks): over a 320 px box that is mostly not tumour, the map's
    maximum lies on the tumour nest, and the map is far stronger on tumour than off it."""
    slide = generated_slide(case.nodes.first(), tmp_path, seed=5, tumour=True, size=(800, 600))
    masks, ds = load_masks(tmp_path / "slide-5.masks.npz")
    tumour = np.kron(masks["tumour"], np.ones((ds, ds), bool))[:600, :800]
    ys, xs = np.nonzero(tumour)
    cx, cy = int(xs.mean()), int(ys.mean())
    region = check_region(slide=slide, window_px=40, x=cx - 160, y=cy - 160, width=320, height=320)
    assert region == Region(cx - 160, cy - 160, 320, 320)
    box = tumour[region.y : region.y + 320, region.x : region.x + 320]
    assert 0.15 < box.mean() < 0.6  # the box holds tumour and plenty of other tissue

    result, scale, origin = compute_region(
        slide=slide, classifier=pink_classifier(), geometry=ScanGeometry(), region=region
    )
    assert scale == 1.0 and origin == (region.x, region.y) and len(result.origins) == 64
    r, c = result.peak
    assert box[r, c], f"the peak ({c}, {r}) is off the tumour"
    cam = result.normalised()
    assert cam[box].mean() > 2 * cam[~box].mean()
    top = cam >= np.quantile(cam, 0.9)  # the brightest tenth of the map
    assert box[top].mean() > 0.8


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"x": 900, "y": 10}, "outside the slide"),
        ({"x": 10, "y": 10, "width": 100}, "both width and height"),
        ({"x": 700, "y": 10, "width": 200, "height": 50}, "extends outside the slide"),
        ({"x": 0, "y": 0, "width": 700, "height": 100}, "at most 640 px a side"),
        ({"x": 0, "y": 0, "width": 0, "height": 10}, "at least 1 px"),
    ],
)
def test_bad_regions_are_refused_with_the_reason(kw, message):
    from slides.models import Slide

    slide = Slide(width=800, height=600, mpp_x=1.0, mpp_y=1.0)
    with pytest.raises(GradCamError, match=message):
        check_region(slide=slide, window_px=40, **kw)


def test_clicks_take_the_window_there_snapped_to_a_quarter_window_grid():
    from slides.models import Slide

    slide = Slide(width=800, height=600, mpp_x=1.0, mpp_y=1.0)
    assert check_region(slide=slide, window_px=40, x=101, y=99) == Region(80, 80, 40, 40)
    assert check_region(slide=slide, window_px=40, x=103, y=99) == Region(80, 80, 40, 40)
    assert check_region(slide=slide, window_px=40, x=799, y=0) == Region(760, 0, 40, 40)
    # a box smaller than a window grows to one window around its centre
    grown = check_region(slide=slide, window_px=40, x=100, y=100, width=10, height=60)
    assert grown == Region(85, 100, 40, 60)


# ---- the API -------------------------------------------------------------------------------------


@pytest.fixture
def eager(eager_tasks):
    """Tasks run in the request's process once the transaction commits (no broker)."""


@pytest.fixture
def live_slide(db, case, tmp_path):
    weights = save_weights(random_dense_model(seed=1), tmp_path / "w.pt")
    version = make_version(weights, live=True)
    slide = generated_slide(case.nodes.first(), tmp_path, seed=7, tumour=True, size=(400, 300))
    return slide, version


def _client(user):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(user)
    return client


def test_a_click_is_computed_by_a_task_cached_and_served_as_an_overlay(
    people, live_slide, eager, django_capture_on_commit_callbacks
):
    slide, version = live_slide
    client = _client(people.pathologist)
    url = f"/api/slides/{slide.pk}/gradcam/"
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        answer = client.post(url, {"x": 200, "y": 150}, format="json")
    assert answer.status_code == 202, answer.content
    assert len(callbacks) == 1 and answer.json()["cached"] is False
    record = GradCam.objects.get(pk=answer.json()["id"])
    assert record.status == GradCam.Status.SUCCEEDED, record.status_reason
    assert (record.x, record.y, record.width, record.height) == (180, 130, 40, 40)
    assert record.model_version == version and record.windows == 1
    assert 180 <= record.peak_x <= 220 and 130 <= record.peak_y <= 170

    detail = client.get(f"{url}{record.pk}/").json()
    assert detail["status"] == "succeeded" and detail["region"]["width"] == 40
    overlay = client.get(detail["overlayUrl"])
    assert overlay.status_code == 200 and overlay["Content-Type"] == "image/png"
    png = Image.open(io.BytesIO(overlay.content))
    assert png.mode == "RGBA" and png.size == (40, 40)
    stored = read_gradcam_map(record.raster_path)
    assert stored.shape == (40, 40) and stored.max() == pytest.approx(1.0, abs=1e-3)

    # the same click again (and a click nearby, same grid cell): the same record, no new task
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = client.post(url, {"x": 201, "y": 151}, format="json")
    assert again.status_code == 200 and again.json()["id"] == record.pk
    assert again.json()["cached"] is True and callbacks == []
    assert GradCam.objects.count() == 1


def test_a_box_is_tiled_into_windows(people, live_slide, eager, django_capture_on_commit_callbacks):
    slide, _ = live_slide
    client = _client(people.pathologist)
    with django_capture_on_commit_callbacks(execute=True):
        answer = client.post(
            f"/api/slides/{slide.pk}/gradcam/",
            {"x": 10, "y": 20, "width": 130, "height": 90},
            format="json",
        )
    assert answer.status_code == 202
    record = GradCam.objects.get(pk=answer.json()["id"])
    assert record.status == GradCam.Status.SUCCEEDED and record.windows == 4 * 3
    assert read_gradcam_map(record.raster_path).shape == (90, 130)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"x": 5000, "y": 10}, "outside the slide"),
        ({"x": -1, "y": 10}, "x"),
        ({"x": "left", "y": 10}, "x"),
        ({"y": 10}, "x"),
        ({"x": 0, "y": 0, "width": 400, "height": 300, "model_version": 99999}, "model_version"),
        ({"x": 300, "y": 10, "width": 200, "height": 50}, "extends outside"),
    ],
)
def test_bad_requests_get_a_clear_400(people, live_slide, body, field):
    slide, _ = live_slide
    answer = _client(people.pathologist).post(
        f"/api/slides/{slide.pk}/gradcam/", body, format="json"
    )
    assert answer.status_code == 400
    assert field in answer.content.decode()
    assert not GradCam.objects.exists()


def test_without_a_live_model_the_request_is_a_conflict(people, live_slide):
    slide, version = live_slide
    version.is_live = False
    version.save()
    answer = _client(people.pathologist).post(
        f"/api/slides/{slide.pk}/gradcam/", {"x": 10, "y": 10}, format="json"
    )
    assert answer.status_code == 409 and "no live primary model" in answer.json()["detail"]


def test_outsiders_get_404_and_anonymous_users_are_refused(
    people, live_slide, eager, django_capture_on_commit_callbacks, tmp_path
):
    slide, _ = live_slide
    with django_capture_on_commit_callbacks(execute=True):
        record_id = (
            _client(people.pathologist)
            .post(f"/api/slides/{slide.pk}/gradcam/", {"x": 50, "y": 50}, format="json")
            .json()["id"]
        )
    base = f"/api/slides/{slide.pk}/gradcam/"
    outsider = _client(people.outsider)
    assert outsider.post(base, {"x": 50, "y": 50}, format="json").status_code == 404
    assert outsider.get(f"{base}{record_id}/").status_code == 404
    assert outsider.get(f"{base}{record_id}/overlay.png").status_code == 404
    from rest_framework.test import APIClient

    anonymous = APIClient()
    assert anonymous.post(base, {"x": 50, "y": 50}, format="json").status_code in (401, 403)
    assert anonymous.get(f"{base}{record_id}/").status_code in (401, 403)
    assert anonymous.get(f"{base}{record_id}/overlay.png").status_code in (401, 403)
    # a record is reached only through its own slide
    other = generated_slide(slide.node, tmp_path / "more", seed=8, tumour=False, size=(200, 200))
    assert (
        _client(people.pathologist).get(f"/api/slides/{other.pk}/gradcam/{record_id}/").status_code
        == 404
    )
    assert GradCam.objects.count() == 1


def test_a_failed_map_says_why_and_is_tried_again(
    people, live_slide, eager, django_capture_on_commit_callbacks
):
    slide, version = live_slide
    from pathlib import Path

    version.hyperparameters = {"model_kwargs": {"padding": "valid", "input_size": 40}}
    version.save()  # its window is known without the weights
    weights = Path(version.weights_path)
    saved = weights.read_bytes()
    weights.unlink()
    from inference.scoring import _CLASSIFIERS

    _CLASSIFIERS.clear()
    client = _client(people.pathologist)
    url = f"/api/slides/{slide.pk}/gradcam/"
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(url, {"x": 100, "y": 100}, format="json").json()
    detail = client.get(f"{url}{first['id']}/").json()
    assert detail["status"] == "failed" and "weights" in detail["statusReason"]
    assert str(weights) not in detail["statusReason"]  # no server paths
    assert detail["overlayUrl"] is None
    assert client.get(f"{url}{first['id']}/overlay.png").status_code == 404
    weights.write_bytes(saved)
    with django_capture_on_commit_callbacks(execute=True):
        second = client.post(url, {"x": 100, "y": 100}, format="json").json()
    assert second["id"] == first["id"]
    assert GradCam.objects.get(pk=first["id"]).status == GradCam.Status.SUCCEEDED


def test_a_request_whose_message_was_lost_is_computed_when_a_worker_starts(
    people, live_slide, eager, settings, django_capture_on_commit_callbacks
):
    from datetime import timedelta

    from django.utils import timezone

    from inference.gradcam import recover_stale_gradcams

    slide, _ = live_slide
    client = _client(people.pathologist)
    with django_capture_on_commit_callbacks(execute=False):  # the message never reaches a worker
        answer = client.post(
            f"/api/slides/{slide.pk}/gradcam/", {"x": 200, "y": 150}, format="json"
        )
    record = GradCam.objects.get(pk=answer.json()["id"])
    assert record.status == GradCam.Status.QUEUED
    assert recover_stale_gradcams() == []  # recently asked for: its message may still come
    old = timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS + 60)
    GradCam.objects.filter(pk=record.pk).update(created_at=old)
    assert recover_stale_gradcams() == [record.pk]
    record.refresh_from_db()
    assert record.status == GradCam.Status.SUCCEEDED, record.status_reason
