"""Class activation maps over node images (CT, ultrasound, other plain images): where in the
image a whole-image classifier's decision comes from.

Two methods, for any registry architecture whose head is ``forward_features`` -> global average
pool -> (dropout) -> linear (:class:`~inference.models.layers.PatchClassifier`: resnet18,
mobilenetv2, resnet50, inception-v3):

``"cam"``       Zhou et al. 2016 (seed 003's "attention heat map using a global average pooling
                method"): the last feature maps ``A_k`` weighted by the linear layer's weights of
                the chosen class, ``M = ReLU(sum_k w_ck A_k)``.
``"grad-cam"``  Selvaraju et al. 2017: ``alpha_k = mean over positions of d logit_c / d A_k``,
                ``M = ReLU(sum_k alpha_k A_k)``, with the gradients taken through the model's own
                head by autograd.

Both are upsampled bilinearly to the image, each feature value placed on the pixel its cell is
centred on (:func:`upsample`; a plain resize shifts the map by (S - 1) / 2 px for total stride S,
3.5 px at S = 8, which on 48 px test images halved the share of peaks on the focus), and
normalised to 0..1 (divided by their maximum).
The class score is the chosen class's logit (optionally against the others', see
:func:`class_activation_map`). For a GAP + linear head ``d score / d A_k = w_ck / (h w)`` at
every position, so the two give the same normalised map (tested to float rounding): Grad-CAM is
the general form, CAM the closed one, and the viewer offers both because the seeds name both.

The image goes through the preprocessing the classifier was trained with
(:func:`model_input`, through :mod:`inference.image_classifier`'s own resizing: the 8-bit rendering
of :func:`slides.node_images.render_node_image`, resized to the training size, grey to three
channels, normalised with the version's mean and std; the metastatic class by default).

The maps themselves are plain PyTorch in :mod:`inference.cam_maps`. A map is a
:class:`~inference.records.GradCam` row (``method`` "cam" or "grad-cam", region = the
whole image), computed by the same Celery task as the patch Grad-CAM and written through
:func:`config.files.write_atomically` before the row says ``succeeded``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from django.utils import timezone

from .cam_maps import (  # noqa: F401 - the map's API, re-exported
    METHODS,
    ClassActivationMap,
    as_rgb_array,
    class_activation_map,
    feature_centres,
    image_map,
    model_input,
    upsample,
)
from .gradcam import (
    GradCamError,
    GradCamMap,
    GradCamUnavailable,
    find_or_queue_map,
    write_gradcam_files,
)
from .records import GradCam, ModelVersion

if TYPE_CHECKING:  # pragma: no cover
    from slides.models import Slide

log = logging.getLogger(__name__)


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`, else GradCamError naming the choices."""
    if method not in METHODS:
        raise GradCamError(
            f"unknown method {method!r}: choose {' or '.join(repr(m) for m in METHODS)}"
        )
    return method


# ---- versions ----------------------------------------------------------------------------------


def is_node_image_model(version: ModelVersion) -> bool:
    """Was ``version`` trained on whole node images (not on patches of slides)?"""
    from .image_classifier import is_image_version

    return is_image_version(version)


def node_image_models():
    """Model versions trained on node images, newest first."""
    from .image_classifier import IMAGE_STAGE

    return ModelVersion.objects.filter(stage=IMAGE_STAGE)


# ---- computing a record ------------------------------------------------------------------------


def compute_image_cam(gradcam: GradCam) -> ClassActivationMap:
    """The map of a record's node image for its model version and method, with the version's own
    preprocessing (size, mean, std) and its metastatic class."""
    from slides.node_images import render_node_image

    from .image_classifier import loaded_classifier

    model, (size, mean, std, positive) = loaded_classifier(gradcam.model_version)
    image = render_node_image(gradcam.slide)
    return image_map(
        model, image, size=size, mean=mean, std=std, class_index=positive, method=gradcam.method
    )


def execute_image_cam(gradcam: GradCam, *, worker: str = "local", device: str | None = None) -> str:
    """Compute a claimed node-image record to a final state (called by
    :func:`inference.gradcam.execute_gradcam` after it claimed the row); returns its status. One
    image is one forward and backward pass: it runs on the CPU, whatever ``device`` says."""
    attempt = gradcam.attempts
    started = time.perf_counter()
    mine = GradCam.objects.filter(pk=gradcam.pk, status=GradCam.Status.RUNNING, attempts=attempt)
    try:
        result = compute_image_cam(gradcam)
        as_map = GradCamMap(
            cam=result.values,
            window=max(result.values.shape),
            origins=[(0, 0)],
            probabilities=np.array([result.probability], np.float32),
        )
        raster, overlay = write_gradcam_files(gradcam, as_map, scale=1.0, origin=(0, 0))
    except Exception as exc:  # noqa: BLE001 - any failure ends the record with its reason
        log.exception("CAM %s failed", gradcam.pk)
        mine.update(
            status=GradCam.Status.FAILED,
            status_reason=f"{type(exc).__name__}: {exc}"[:5000],
            finished_at=timezone.now(),
        )
        return GradCam.objects.get(pk=gradcam.pk).status
    r, c = result.peak
    h, w = result.feature_size
    mine.update(
        status=GradCam.Status.SUCCEEDED,
        status_reason=f"{worker}: {result.method} over {h} x {w} feature maps",
        raster_path=str(raster),
        overlay_path=str(overlay),
        windows=1,
        max_probability=result.probability,
        peak_x=c + 0.5,
        peak_y=r + 0.5,
        seconds=time.perf_counter() - started,
        heartbeat_at=timezone.now(),
        finished_at=timezone.now(),
    )
    return GradCam.objects.get(pk=gradcam.pk).status


# ---- requests ------------------------------------------------------------------------------------


def check_node_image(slide: Slide) -> None:
    """GradCamError unless ``slide`` is a node image (a whole slide has the patch Grad-CAM)."""
    if getattr(slide, "modality", "slide") == "slide":
        raise GradCamError(
            f"slide {slide.pk} is a whole slide, not a node image: ask for the patch Grad-CAM"
            f" (POST /api/slides/{slide.pk}/gradcam/ with x, y)"
        )


def request_image_cam(
    *,
    slide: Slide,
    user: Any,
    method: str,
    version: ModelVersion | None = None,
    enqueue: bool = True,
) -> tuple[GradCam, bool]:
    """The ``method`` map of a node image for ``version`` (default: the newest node-image model)
    and whether it was already there. A new or previously failed record is queued on the `gpu`
    queue once the transaction commits."""

    check_method(method)
    check_node_image(slide)
    if version is None:
        version = node_image_models().first()
        if version is None:
            raise GradCamUnavailable("there is no node-image classifier to explain yet")
    elif not is_node_image_model(version):
        raise GradCamError(
            f"model version {version.pk} ({version.name}) was not trained on node images"
        )
    if not slide.width or not slide.height:
        raise GradCamError(f"node image {slide.pk} has no size")
    region = {"x": 0, "y": 0, "width": slide.width, "height": slide.height}
    key = {"slide": slide, "model_version": version, "method": method, **region}
    return find_or_queue_map(
        key,
        window_px=float(max(slide.width, slide.height)),
        user=user,
        enqueue=enqueue,
        action="class activation map requested",
        details={"method": method},
    )
