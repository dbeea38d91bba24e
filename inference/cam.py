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

A map is a :class:`~inference.records.GradCam` row (``method`` "cam" or "grad-cam", region = the
whole image), computed by the same Celery task as the patch Grad-CAM and written through
:func:`config.files.write_atomically` before the row says ``succeeded``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from django.db import IntegrityError, transaction
from django.utils import timezone

from .gradcam import GradCamError, GradCamMap, GradCamUnavailable, write_gradcam_files
from .records import GradCam, ModelVersion

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

    from slides.models import Slide

    from .models.layers import PatchClassifier

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("cam", "grad-cam")


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`, else GradCamError naming the choices."""
    if method not in METHODS:
        raise GradCamError(
            f"unknown method {method!r}: choose {' or '.join(repr(m) for m in METHODS)}"
        )
    return method


# ---- the map ---------------------------------------------------------------------------------


@dataclass
class ClassActivationMap:
    """A class activation map over one image."""

    values: np.ndarray  # (H, W) float32 in [0, 1], at the image's size
    method: str
    class_index: int
    probability: float  # softmax probability of ``class_index``
    raw_max: float  # the map's maximum before normalisation (at feature resolution)
    feature_size: tuple[int, int]  # (h, w) of the last feature maps

    @property
    def peak(self) -> tuple[int, int]:
        """(row, col) of the map's maximum."""
        r, c = np.unravel_index(int(np.argmax(self.values)), self.values.shape)
        return int(r), int(c)


def class_activation_map(
    model: PatchClassifier,
    x: torch.Tensor,
    *,
    class_index: int,
    method: str = "cam",
    output_size: tuple[int, int] | None = None,
    contrast: bool = False,
) -> ClassActivationMap:
    """The ``method`` map of ``class_index`` for one normalised input ``x`` (1, C, h, w), upsampled
    to ``output_size`` (H, W; default the input's). The model is put in eval mode.

    The class score is the class's logit (Zhou et al.: CAM weighs the feature maps by the
    class's own weights ``w_c``; Grad-CAM differentiates that logit). With ``contrast`` it is the
    logit minus the mean of the other classes' logits (for two classes the log-odds, which alone
    sets the softmax probability; CAM then weighs by ``w_c - mean_k w_k``), removing what all
    classes share. On the 48 px test nets neither placed peaks on the focus more often across
    architectures (ResNet-50 0.92 vs 0.75 of peaks within 4 px, ResNet-18 0.58 vs 0.75), so the
    published form is the default."""
    import torch
    import torch.nn.functional as F

    check_method(method)
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"one image at a time: x must be (1, C, h, w), not {tuple(x.shape)}")
    if not 0 <= class_index < model.fc.out_features:
        raise ValueError(f"class {class_index} outside the model's {model.fc.out_features} outputs")
    model.eval()
    x = x.to(next(model.parameters()).device, torch.float32)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)  # a graph even where the weights are frozen
        activations = model.forward_features(x)
        pooled = F.adaptive_avg_pool2d(activations, 1).flatten(1)
        logits = model.fc(model.dropout(pooled))
        n_classes = logits.shape[1]
        score = logits[0, class_index]
        if contrast and n_classes > 1:
            score = score - (logits[0].sum() - score) / (n_classes - 1)
        if method == "grad-cam":
            (gradients,) = torch.autograd.grad(score, activations)
    with torch.no_grad():
        if method == "cam":
            w = model.fc.weight
            weights = w[class_index]
            if contrast and n_classes > 1:
                weights = weights - (w.sum(0) - weights) / (n_classes - 1)
            weights = weights.view(1, -1, 1, 1).to(activations.dtype)
        else:
            weights = gradients.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * activations).sum(dim=1, keepdim=True)).float()
        raw_max = float(cam.max())
        size = output_size or tuple(x.shape[-2:])
        cam = upsample(cam, input_size=tuple(x.shape[-2:]), output_size=size, model=model)
        top = float(cam.max())  # after upsampling, so that the image's map spans 0..1
        cam = cam / top if top > 0 else torch.zeros_like(cam)
        probability = float(torch.softmax(logits.float(), dim=1)[0, class_index])
    values = cam[0, 0].clamp_(0.0, 1.0).cpu().numpy().astype(np.float32)
    return ClassActivationMap(
        values=values,
        method=method,
        class_index=class_index,
        probability=probability,
        raw_max=raw_max,
        feature_size=(int(activations.shape[-2]), int(activations.shape[-1])),
    )


def feature_centres(model: PatchClassifier, n: int, input_px: int) -> tuple[float, float]:
    """(first, step): feature cell ``i`` of ``n`` over ``input_px`` model-input pixels is centred on
    pixel ``first + step * i``. With "same" padding (odd kernels padded by (k - 1) // 2, as every
    registry net pads) a stride-2 layer's output ``i`` is centred on its input ``2 i``, so cell
    ``i`` sits on pixel ``S i`` for the total stride ``S``: a plain resize (which puts it on
    ``S i + (S - 1) / 2``) would shift the map by 3.5 px down and right at S = 8. Otherwise the
    cells are taken to tile the input evenly, as a resize assumes."""
    stride = getattr(model, "output_stride", None)
    if getattr(model, "padding", None) == "same" and stride and math.ceil(input_px / stride) == n:
        return 0.0, float(stride)
    step = input_px / n
    return (step - 1) / 2, step


def upsample(
    cam: torch.Tensor,
    *,
    input_size: tuple[int, int],
    output_size: tuple[int, int],
    model: PatchClassifier,
) -> torch.Tensor:
    """A (1, 1, h, w) map at feature resolution, bilinearly resampled to ``output_size`` pixels
    of the image that was resized to ``input_size`` for the model, each feature value placed on
    the pixel its cell is centred on (:func:`feature_centres`); beyond the outer centres the edge
    value is kept."""
    import torch
    import torch.nn.functional as F

    axes = []
    for n, input_px, out_px in zip(cam.shape[-2:], input_size, output_size, strict=True):
        first, step = feature_centres(model, int(n), int(input_px))
        q = torch.arange(out_px, dtype=torch.float32, device=cam.device)
        p = (q + 0.5) * (input_px / out_px) - 0.5  # model-input pixel of image pixel q
        u = (p - first) / step  # feature coordinate: cell i at u = i
        axes.append(2 * u / (n - 1) - 1 if n > 1 else torch.zeros_like(u))
    gy, gx = torch.meshgrid(axes[0], axes[1], indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None].to(cam.dtype)
    return F.grid_sample(cam, grid, mode="bilinear", padding_mode="border", align_corners=True)


# ---- preprocessing ---------------------------------------------------------------------------


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 of an 8-bit image: grey repeated to three channels, alpha dropped."""
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8:
        raise ValueError(f"an 8-bit image is needed, not {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    elif pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    elif pixels.ndim != 3 or pixels.shape[2] < 3:
        raise ValueError(f"an image of shape {pixels.shape} is neither grey nor RGB")
    return np.ascontiguousarray(pixels[..., :3])


def model_input(
    image: Image.Image | np.ndarray,
    *,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """The (1, 3, size, size) float input of an 8-bit image exactly as the whole-image classifier
    saw it in training and sees it in :func:`inference.image_classifier.predict_images`: resized
    by ``to_model_input``, grey repeated to three channels, scaled to 0..1, normalised."""
    import torch

    from .augmentation import normalize, to_float
    from .image_classifier import to_model_input

    array = to_model_input(as_rgb_array(image), size)  # (3, size, size) uint8
    x = torch.from_numpy(np.ascontiguousarray(array))[None]
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return normalize(to_float(x), mean=tuple(mean), std=tuple(std))


def image_map(
    model: PatchClassifier,
    image: Image.Image | np.ndarray,
    *,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    class_index: int,
    method: str = "cam",
) -> ClassActivationMap:
    """The map of a whole 8-bit image at its full resolution."""
    pixels = as_rgb_array(image)
    x = model_input(pixels, size=size, mean=mean, std=std)
    return class_activation_map(
        model, x, class_index=class_index, method=method, output_size=pixels.shape[:2]
    )


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

    from .image_classifier import _loaded_model, _positive_index, _version_preprocessing

    version = gradcam.model_version
    model, meta = _loaded_model(version)
    size, mean, std = _version_preprocessing(version)
    positive = _positive_index(meta.get("classes") or version.classes)
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
    from config.queueing import check_queue_reachable

    from .gradcam import _queue

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
    existing = GradCam.objects.filter(**key).first()
    if existing is not None and existing.status != GradCam.Status.FAILED:
        return existing, True
    if enqueue:
        check_queue_reachable()
    from audit.log import record

    with transaction.atomic():
        if existing is not None:  # failed before: try again
            GradCam.objects.filter(pk=existing.pk, status=GradCam.Status.FAILED).update(
                status=GradCam.Status.QUEUED, status_reason="", finished_at=None
            )
            gradcam = GradCam.objects.get(pk=existing.pk)
        else:
            try:
                with transaction.atomic():
                    gradcam = GradCam.objects.create(
                        **key,
                        window_px=float(max(slide.width, slide.height)),
                        requested_by=user if getattr(user, "is_authenticated", False) else None,
                    )
            except IntegrityError:  # the same map asked for at the same moment
                return GradCam.objects.get(**key), True
        record(actor=user, action="class activation map requested", obj=gradcam, method=method)
        if enqueue:
            pk = gradcam.pk
            transaction.on_commit(lambda: _queue(pk))
    return gradcam, False
