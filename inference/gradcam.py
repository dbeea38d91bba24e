"""Grad-CAM on demand: where in a region the live model's tumour decision comes from.

Grad-CAM (Selvaraju et al., 2017) for our patch classifiers (``inference.models``): the
activations ``A`` of the last feature layer (the output of ``forward_features``, just before the
global average pool) and the gradients of the tumour logit with respect to them give one weight
per channel, ``alpha_k = mean over positions of d logit / d A_k``; the map is
``ReLU(sum_k alpha_k A_k)``, upsampled bilinearly to the window. Seed 000 used it to show that the
patch decision rested on the tumour cells; here a pathologist asks for it over a patch or a region
in the viewer.

A region larger than one classifier window is cut into windows (edge windows shifted back inside
the region, so overlaps are averaged) and their maps stitched into one map over the region, which
is then normalised by its maximum, so windows of one request are comparable with each other.

Requests are cached: one :class:`~inference.records.GradCam` row per (slide, model version,
region). A click asks for the window under the cursor, snapped to a grid of a quarter window so
that nearby clicks share a map. The map (npz) and its colour overlay (PNG) are written through a
temporary file, fsynced and renamed, before the row says ``succeeded``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from config.files import write_atomically

from .heatmaps import VIRIDIS
from .records import GradCam, ModelVersion, Stage, lost_job_ids, stale_before

if TYPE_CHECKING:  # pragma: no cover
    from slides.models import Slide

    from .scoring import Classifier, ScanGeometry

log = logging.getLogger(__name__)

#: A request covers at most this many classifier windows along each side (16 x 16 = 256 windows).
MAX_WINDOWS_PER_SIDE = 16
#: The stored map and its overlay have at most this many pixels along a side.
OVERLAY_MAX_PX = 1024
#: Click windows are snapped to a grid of this fraction of a window (nearby clicks share a map).
CLICK_GRID_FRACTION = 4
#: Windows per forward/backward pass.
BATCH_WINDOWS = 16
#: Map values (relative to the region's maximum) below this are transparent in the overlay.
OVERLAY_FLOOR = 0.1


class GradCamError(ValueError):
    """A Grad-CAM request that cannot be served as asked (bad region, slide without scale)."""


class GradCamUnavailable(RuntimeError):
    """No model to explain (no live primary model): a state, not a bad request."""


@dataclass(frozen=True)
class Region:
    """A box in level-0 pixels of its slide."""

    x: int
    y: int
    width: int
    height: int

    def to_dict(self) -> dict[str, int]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


# ---- the map ---------------------------------------------------------------------------------


def gradcam_windows(classifier: Classifier, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps of the tumour logit for (N, w, w, 3) uint8 ``windows``, each classified on its
    own: (maps (N, w, w) float32 >= 0, tumour probabilities (N,)). Eval mode, float32."""
    import torch
    import torch.nn.functional as F

    model = classifier.model
    model.eval()
    n, height, width = windows.shape[:3]
    maps = np.zeros((n, height, width), np.float32)
    probs = np.zeros(n, np.float32)
    for start in range(0, n, BATCH_WINDOWS):
        with torch.enable_grad():
            x = classifier._prepare(windows[start : start + BATCH_WINDOWS]).contiguous()
            x.requires_grad_(True)  # a graph even where the weights are frozen
            activations = model.forward_features(x)  # the last feature layer
            pooled = F.adaptive_avg_pool2d(activations, 1).flatten(1)
            logits = model.fc(model.dropout(pooled))
            tumour = logits[:, classifier.positive_index]
            (gradients,) = torch.autograd.grad(tumour.sum(), activations)
        with torch.no_grad():
            alpha = gradients.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((alpha * activations).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
            stop = start + len(x)
            maps[start:stop] = cam[:, 0].float().cpu().numpy()
            probs[start:stop] = (
                torch.softmax(logits.float(), dim=1)[:, classifier.positive_index].cpu().numpy()
            )
    return maps, probs


def window_starts(length: int, window: int) -> list[int]:
    """Window origins covering ``length`` px: every ``window`` px, the last one shifted back so
    that it ends at the edge (it then overlaps its neighbour)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, window))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


@dataclass
class GradCamMap:
    """A stitched Grad-CAM map over an image region (pixels at the model's mpp)."""

    cam: np.ndarray  # (H, W) float32 >= 0, not normalised
    window: int
    origins: list[tuple[int, int]]  # (row, col) of each window's top-left pixel
    probabilities: np.ndarray  # tumour probability per window, in ``origins`` order

    @property
    def peak(self) -> tuple[int, int]:
        """(row, col) of the map's maximum."""
        r, c = np.unravel_index(int(np.argmax(self.cam)), self.cam.shape)
        return int(r), int(c)

    def normalised(self) -> np.ndarray:
        """The map divided by its maximum (all zeros stays zeros)."""
        top = float(self.cam.max(initial=0.0))
        return self.cam / top if top > 0 else np.zeros_like(self.cam)


def gradcam_image(classifier: Classifier, image: np.ndarray, *, window: int) -> GradCamMap:
    """Grad-CAM over an (H, W, 3) uint8 image at the model's mpp (H, W >= ``window``): the image is
    cut into windows, each explained on its own, and the maps are stitched (overlaps averaged)."""
    image = np.asarray(image)[..., :3]
    height, width = image.shape[:2]
    if height < window or width < window:
        raise GradCamError(f"a {width} x {height} px image holds no {window} px window")
    origins = [(r, c) for r in window_starts(height, window) for c in window_starts(width, window)]
    crops = np.stack([image[r : r + window, c : c + window] for r, c in origins])
    maps, probs = gradcam_windows(classifier, crops)
    total = np.zeros((height, width), np.float32)
    count = np.zeros((height, width), np.float32)
    for (r, c), cam in zip(origins, maps, strict=True):
        total[r : r + window, c : c + window] += cam
        count[r : r + window, c : c + window] += 1
    return GradCamMap(cam=total / count, window=window, origins=origins, probabilities=probs)


# ---- regions ---------------------------------------------------------------------------------


def _grown(start: int, length: int, *, minimum: int, limit: int) -> tuple[int, int]:
    """Grow [start, start + length) to ``minimum`` px around its centre, kept inside [0, limit)."""
    if length >= minimum:
        return start, length
    centre = start + length / 2
    start = int(round(centre - minimum / 2))
    return max(0, min(start, limit - minimum)), minimum


def check_region(
    *,
    slide: Slide,
    window_px: float,
    x: int,
    y: int,
    width: int | None = None,
    height: int | None = None,
) -> Region:
    """The region to explain, in level-0 px, or GradCamError naming what is wrong.

    Without ``width``/``height`` it is the window centred on (x, y) (a click), snapped to a grid of
    a quarter window; a box smaller than a window grows to one window around its centre; a box
    may span at most :data:`MAX_WINDOWS_PER_SIDE` windows along each side."""
    w_px = int(math.ceil(window_px - 1e-9))
    if slide.width < w_px or slide.height < w_px:
        raise GradCamError(
            f"the slide ({slide.width} x {slide.height} px) is smaller than one classifier window"
            f" ({w_px} px)"
        )
    if not (0 <= x < slide.width and 0 <= y < slide.height):
        raise GradCamError(
            f"({x}, {y}) lies outside the slide (0 <= x < {slide.width}, 0 <= y < {slide.height},"
            " level-0 px)"
        )
    if (width is None) != (height is None):
        raise GradCamError("give both width and height (a box), or neither (the window at x, y)")
    if width is None or height is None:
        grid = max(1, w_px // CLICK_GRID_FRACTION)
        left = int(round((x - w_px / 2) / grid)) * grid
        top = int(round((y - w_px / 2) / grid)) * grid
        left = max(0, min(left, slide.width - w_px))
        top = max(0, min(top, slide.height - w_px))
        return Region(left, top, w_px, w_px)
    if width < 1 or height < 1:
        raise GradCamError("width and height must be at least 1 px")
    if x + width > slide.width or y + height > slide.height:
        raise GradCamError(
            f"the box ({x}, {y}, {width} x {height}) extends outside the slide"
            f" ({slide.width} x {slide.height} px, level 0)"
        )
    largest = MAX_WINDOWS_PER_SIDE * w_px
    if width > largest or height > largest:
        raise GradCamError(
            f"the box is {width} x {height} px; at most {largest} px a side"
            f" ({MAX_WINDOWS_PER_SIDE} windows of {w_px} px) per request: draw a smaller box"
        )
    x, width = _grown(x, width, minimum=w_px, limit=slide.width)
    y, height = _grown(y, height, minimum=w_px, limit=slide.height)
    return Region(x, y, width, height)


def live_primary() -> ModelVersion | None:
    return ModelVersion.objects.filter(stage=Stage.PRIMARY, is_live=True).first()


def window_px_for(*, slide: Slide, version: ModelVersion) -> float:
    """Level-0 px of the model's window on this slide (its patch size at its mpp)."""
    from .scoring import ScoringError, geometry_for

    if not slide.mpp:
        raise GradCamError(
            f"slide {slide.pk} has no µm per pixel; the model's window cannot be placed on it"
        )
    try:
        geometry = geometry_for(version)
    except ScoringError as exc:  # e.g. its weights file is missing: nothing to explain with
        raise GradCamUnavailable(str(exc)) from exc
    return geometry.window * geometry.target_mpp / slide.mpp


# ---- files -------------------------------------------------------------------------------------


def gradcam_dir() -> Path:
    return Path(settings.RESULTS_DIR) / "gradcam"


def overlay_rgba(values: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 of a map normalised to [0, 1]: viridis, transparent below
    :data:`OVERLAY_FLOOR`, alpha rising with the value."""
    v = np.clip(np.nan_to_num(values), 0.0, 1.0)
    stops = np.asarray(VIRIDIS, dtype=np.float32)
    positions = np.linspace(0.0, 1.0, len(stops))
    rgba = np.zeros((*v.shape, 4), np.uint8)
    for k in range(3):
        rgba[..., k] = np.round(np.interp(v, positions, stops[:, k]))
    alpha = np.where(v >= OVERLAY_FLOOR, 255 * (0.35 + 0.6 * v), 0)
    rgba[..., 3] = np.round(alpha).astype(np.uint8)
    return rgba


def _downsampled(values: np.ndarray, max_px: int) -> np.ndarray:
    """``values`` resized (area average) so that neither side exceeds ``max_px``."""
    from PIL import Image

    h, w = values.shape
    factor = max(h, w) / max_px
    if factor <= 1:
        return values.astype(np.float32)
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return np.asarray(
        Image.fromarray(values.astype(np.float32), "F").resize(size, Image.Resampling.BOX),
        np.float32,
    )


def write_gradcam_files(
    gradcam: GradCam, result: GradCamMap, *, scale: float, origin: tuple[int, int]
) -> tuple[Path, Path]:
    """The normalised map (npz, float16, at most OVERLAY_MAX_PX a side) and its PNG overlay."""
    from PIL import Image

    folder = gradcam_dir() / f"slide-{gradcam.slide_id}"
    small = _downsampled(result.normalised(), OVERLAY_MAX_PX)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        format=np.array("nodescope-gradcam/1"),
        map=small.astype(np.float16),
        max_raw=np.float64(result.cam.max(initial=0.0)),
        window=np.int64(result.window),
        scale=np.float64(scale),
        origin=np.array(origin, np.int64),
        origins=np.array(result.origins, np.int64).reshape(-1, 2),
        probabilities=result.probabilities.astype(np.float32),
        meta=np.array(json.dumps({"gradcam": gradcam.pk, "region": _region_of(gradcam).to_dict()})),
    )
    raster = folder / f"gradcam-{gradcam.pk}.npz"
    write_atomically(raster, buffer.getvalue())
    png = io.BytesIO()
    Image.fromarray(overlay_rgba(small), "RGBA").save(png, format="PNG", compress_level=6)
    overlay = folder / f"gradcam-{gradcam.pk}.png"
    write_atomically(overlay, png.getvalue())
    return raster, overlay


def read_gradcam_map(path: str | Path) -> np.ndarray:
    """The stored normalised map (float32)."""
    with np.load(Path(path), allow_pickle=False) as data:
        if str(data["format"]) != "nodescope-gradcam/1":
            raise ValueError(f"{path} is not a NodeScope Grad-CAM map")
        return data["map"].astype(np.float32)


def _region_of(gradcam: GradCam) -> Region:
    return Region(gradcam.x, gradcam.y, gradcam.width, gradcam.height)


# ---- computing a record ------------------------------------------------------------------------


def compute_region(
    *, slide: Slide, classifier: Classifier, geometry: ScanGeometry, region: Region
) -> tuple[GradCamMap, float, tuple[int, int]]:
    """Read the region at the model's mpp and explain it: (map, level-0 px per map px, the map's
    origin in scan px)."""
    from .scoring import SlideReader

    reader = SlideReader(slide, target_mpp=geometry.target_mpp)
    scale = reader.scale
    window = geometry.window
    if reader.width < window or reader.height < window:
        raise GradCamError("the slide is smaller than one classifier window at the model's mpp")
    sw = min(reader.width, max(window, int(round(region.width / scale))))
    sh = min(reader.height, max(window, int(round(region.height / scale))))
    sx = max(0, min(int(math.floor(region.x / scale)), reader.width - sw))
    sy = max(0, min(int(math.floor(region.y / scale)), reader.height - sh))
    pixels = reader(sx, sy, sw, sh)
    return gradcam_image(classifier, pixels, window=window), scale, (sx, sy)


def classifier_for(version: ModelVersion, *, device: str | None = None) -> Classifier:
    """The version's classifier (cached per process), on ``device`` (default: CUDA if any)."""
    from .scoring import Classifier

    classifier = Classifier.from_version(version)
    if classifier.device is None or device is not None:
        classifier.to(device)
    return classifier


def claim(gradcam: GradCam) -> bool:
    """queued, or running without a heartbeat for JOB_STALE_SECONDS (its worker died) -> running;
    of two workers exactly one wins."""

    now = timezone.now()
    claimable = models.Q(status=GradCam.Status.QUEUED) | models.Q(
        status=GradCam.Status.RUNNING, heartbeat_at__lt=stale_before()
    )
    won = GradCam.objects.filter(claimable, pk=gradcam.pk).update(
        status=GradCam.Status.RUNNING,
        status_reason="",
        heartbeat_at=now,
        attempts=models.F("attempts") + 1,
    )
    if won:
        gradcam.refresh_from_db()
    return won == 1


def execute_gradcam(gradcam_id: int, *, worker: str = "local", device: str | None = None) -> str:
    """Compute one GradCam record to a final state (the body of the Celery task); returns its
    status. Idempotent: a finished or already claimed record is left alone."""
    gradcam = GradCam.objects.select_related("slide", "model_version").filter(pk=gradcam_id).first()
    if gradcam is None:
        return "gone"
    if gradcam.is_finished or not claim(gradcam):
        return GradCam.objects.get(pk=gradcam_id).status
    if gradcam.slide.modality != "slide":  # a whole node image: its class activation map
        from .cam import execute_image_cam

        return execute_image_cam(gradcam, worker=worker, device=device)
    attempt = gradcam.attempts
    started = time.perf_counter()
    try:
        from .scoring import geometry_for

        version = gradcam.model_version
        result, scale, origin = compute_region(
            slide=gradcam.slide,
            classifier=classifier_for(version, device=device),
            geometry=geometry_for(version),
            region=_region_of(gradcam),
        )
        raster, overlay = write_gradcam_files(gradcam, result, scale=scale, origin=origin)
    except Exception as exc:  # noqa: BLE001 - any failure ends the record with its reason
        log.exception("Grad-CAM %s failed", gradcam_id)
        GradCam.objects.filter(
            pk=gradcam_id, status=GradCam.Status.RUNNING, attempts=attempt
        ).update(
            status=GradCam.Status.FAILED,
            status_reason=f"{type(exc).__name__}: {exc}"[:5000],
            finished_at=timezone.now(),
        )
        return GradCam.objects.get(pk=gradcam_id).status
    r, c = result.peak
    GradCam.objects.filter(pk=gradcam_id, status=GradCam.Status.RUNNING, attempts=attempt).update(
        status=GradCam.Status.SUCCEEDED,
        status_reason=f"{worker}: {len(result.origins)} windows",
        raster_path=str(raster),
        overlay_path=str(overlay),
        windows=len(result.origins),
        max_probability=float(result.probabilities.max(initial=0.0)),
        peak_x=(origin[0] + c + 0.5) * scale,
        peak_y=(origin[1] + r + 0.5) * scale,
        seconds=time.perf_counter() - started,
        heartbeat_at=timezone.now(),
        finished_at=timezone.now(),
    )
    return GradCam.objects.get(pk=gradcam_id).status


def recover_stale_gradcams() -> list[int]:
    """Queue again every Grad-CAM left `running` by a worker that stopped sending heartbeats, and
    every one still `queued` long after it was asked for (its message may have died with the
    broker). A second message is harmless: :func:`claim` lets one worker compute it."""
    stale = lost_job_ids(GradCam.objects.all())
    for pk in stale:
        _queue(pk)
    return stale


# ---- requests ------------------------------------------------------------------------------------


def _queue(gradcam_id: int) -> None:
    """Send the record's task; if the broker fails now the record fails with the reason."""
    from config.queueing import QueueUnavailable, send

    from .tasks import compute_gradcam

    try:
        send(
            compute_gradcam,
            [gradcam_id],
            queue=settings.TRAINING_QUEUE,
            what=f"Grad-CAM {gradcam_id}",
        )
    except QueueUnavailable as exc:
        GradCam.objects.filter(pk=gradcam_id, status=GradCam.Status.QUEUED).update(
            status=GradCam.Status.FAILED, status_reason=str(exc)[:5000], finished_at=timezone.now()
        )
        raise


def request_gradcam(
    *,
    slide: Slide,
    user: Any,
    x: int,
    y: int,
    width: int | None = None,
    height: int | None = None,
    version: ModelVersion | None = None,
    enqueue: bool = True,
) -> tuple[GradCam, bool]:
    """The Grad-CAM record of a region for ``version`` (the live primary by default) and whether
    it was already there (a cache hit: nothing is recomputed). A new or previously failed record is
    queued on the `gpu` queue once the transaction commits."""
    version = version or live_primary()
    if version is None:
        raise GradCamUnavailable("there is no live primary model to explain yet")
    window_px = window_px_for(slide=slide, version=version)
    region = check_region(slide=slide, window_px=window_px, x=x, y=y, width=width, height=height)
    key = {"slide": slide, "model_version": version, **region.to_dict()}
    return find_or_queue_map(
        key,
        window_px=window_px,
        user=user,
        enqueue=enqueue,
        action="grad-cam requested",
        details=region.to_dict(),
    )


def find_or_queue_map(
    key: dict[str, Any],
    *,
    window_px: float,
    user: Any,
    enqueue: bool,
    action: str,
    details: dict[str, Any],
) -> tuple[GradCam, bool]:
    """The map record matching ``key`` and whether it was there already (a cache hit: nothing
    is recomputed). A new record, or one that failed before, is queued on the `gpu` queue once
    the transaction commits; the request is audited as ``action`` with ``details``. Two requests
    for the same map at the same moment share one record (the unique constraint decides)."""
    from config.queueing import check_queue_reachable

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
                        window_px=window_px,
                        requested_by=user if getattr(user, "is_authenticated", False) else None,
                    )
            except IntegrityError:  # the same map asked for at the same moment
                return GradCam.objects.get(**key), True
        record(actor=user, action=action, obj=gradcam, **details)
        if enqueue:
            pk = gradcam.pk
            transaction.on_commit(lambda: _queue(pk))
    return gradcam, False
