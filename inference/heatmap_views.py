"""Heat-map overlay endpoints: a tile source, PNG tiles on the slide's own z/x/y grid, and the
outlines of the regions at or above the threshold (GeoJSON).

Plain Django views, like the slide tiles: the slide check is one indexed query through
``slides.access.slides_for``, remembered per (credential, slide) for TILE_PERMISSION_SECONDS;
refusals are never cached (403 without login, 404 for a slide the user may not see). The tile
source names one heat map (``?heatmap=<id>``) in the tile URLs, so tiles address an immutable
raster: their ETag is the heat map id and address, answered 304 without reading anything, and
encoded tiles are cached in the ``tiles`` cache. Without ``?heatmap`` the latest heat map of the
live primary model is used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET

from config.params import INT64_MAX, BadParameter, parse_int
from slides.auth import visible_slide_fields
from slides.models import Slide

from .heatmaps import PAPER_THRESHOLD, legend, load_raster, regions_at_threshold, render_tile
from .records import HeatMap, Stage

SLIDE_FIELDS = ("id", "width", "height", "levels", "tile_width", "tile_height", "mpp_x", "mpp_y")
HEATMAP_FIELDS = (
    "id",
    "slide_id",
    "raster_path",
    "stride_px",
    "window_px",
    "max_score",
    "max_x",
    "max_y",
)


def visible_slide(request: HttpRequest, pk: int) -> Slide | HttpResponse:
    """The slide's geometry if the requester may see it (cached per credential); 403 / 404."""
    return visible_slide_fields(request, pk, fields=SLIDE_FIELDS, purpose="heatperm")


class _HeatMapLRU:
    """Heat map rows by id (immutable once written): no query per tile."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[int, HeatMap] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, pk: int) -> HeatMap | None:
        with self._lock:
            hit = self._items.get(pk)
            if hit is not None:
                self._items.move_to_end(pk)
                return hit
        row = HeatMap.objects.filter(pk=pk).only(*HEATMAP_FIELDS).first()
        if row is not None:
            with self._lock:
                self._items[pk] = row
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return row

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


heatmap_rows = _HeatMapLRU()


def _live_heatmap_exists(slide_id: int) -> bool:
    return HeatMap.objects.filter(
        slide_id=slide_id, model_version__is_live=True, model_version__stage=Stage.PRIMARY
    ).exists()


def _requested_heatmap(request: HttpRequest, slide_id: int) -> HeatMap:
    """``?heatmap=<id>`` of this slide, else the latest heat map of the live primary model."""
    wanted = request.GET.get("heatmap")
    if wanted:
        try:
            pk = parse_int(wanted, "heatmap", minimum=1, maximum=INT64_MAX)
        except BadParameter as exc:
            raise Http404("No such heat map") from exc
        row = heatmap_rows.get(pk)
        if row is None or row.slide_id != slide_id:
            raise Http404("No such heat map for this slide")
        return row
    row = (
        HeatMap.objects.filter(
            slide_id=slide_id, model_version__is_live=True, model_version__stage=Stage.PRIMARY
        )
        .order_by("-created_at", "-id")
        .only(*HEATMAP_FIELDS)
        .first()
    )
    if row is None:
        raise Http404("This slide has no heat map from the live model yet")
    return row


def _cached(response: HttpResponse, etag: str) -> HttpResponse:
    response["ETag"] = etag
    patch_cache_control(response, private=True, max_age=settings.TILE_CACHE_SECONDS)
    response["Vary"] = "Cookie, Authorization"
    return response


@require_GET
def heatmap_tilesource(request: HttpRequest, pk: int) -> HttpResponse:
    """What the viewer needs to overlay the heat map: the slide's tile geometry, the tile URL of
    one heat map, its maximum, the threshold and the colour legend."""
    slide = visible_slide(request, pk)
    if isinstance(slide, HttpResponse):
        return slide
    if not request.GET.get("heatmap") and not _live_heatmap_exists(slide.pk):
        # Not an error: the slide exists and is simply not scored yet (the viewer says "none yet").
        return JsonResponse(
            {
                "id": None,
                "slide": slide.pk,
                "detail": "This slide has no heat map from the live model yet",
            }
        )
    row = _requested_heatmap(request, slide.pk)
    heatmap = (
        HeatMap.objects.select_related("model_version", "secondary_version", "scoring_run")
        .filter(pk=row.pk)
        .first()
    )
    if heatmap is None:  # pragma: no cover - deleted between the two queries
        raise Http404("No such heat map")
    version = heatmap.model_version
    tile_url = reverse("heatmap-tile", args=[slide.pk, 0, 0, 0]).replace(
        "/0/0/0.png", "/{z}/{x}/{y}.png"
    )
    denominator = round((heatmap.window_px / heatmap.stride_px) ** 2)
    threshold = version.threshold
    return JsonResponse(
        {
            "id": heatmap.pk,
            "slide": slide.pk,
            "width": slide.width,
            "height": slide.height,
            "tileWidth": slide.tile_width,
            "tileHeight": slide.tile_height,
            "levels": slide.levels,
            "tileUrl": f"{tile_url}?heatmap={heatmap.pk}",
            "regionsUrl": f"{reverse('heatmap-regions', args=[slide.pk])}?heatmap={heatmap.pk}",
            "rows": heatmap.rows,
            "cols": heatmap.cols,
            "stridePx": heatmap.stride_px,
            "windowPx": heatmap.window_px,
            "denominator": denominator,
            "maxScore": heatmap.max_score,
            "max": {"x": heatmap.max_x, "y": heatmap.max_y},
            "threshold": threshold,
            "thresholdMethod": version.threshold_method,
            "screenedPositive": None
            if threshold is None
            else heatmap.max_score >= threshold - 1e-9,
            "modelVersion": {"id": version.pk, "name": version.name, "isLive": version.is_live},
            "secondaryVersion": (
                {"id": heatmap.secondary_version.pk, "name": heatmap.secondary_version.name}
                if heatmap.secondary_version
                else None
            ),
            "scoringRun": heatmap.scoring_run_id,
            "createdAt": heatmap.created_at.isoformat(),
            "legend": legend(denominator),
        }
    )


@require_GET
def heatmap_tile(request: HttpRequest, pk: int, z: int, x: int, y: int) -> HttpResponse:
    """One RGBA PNG overlay tile on the slide's z/x/y grid (transparent where the score is 0)."""
    slide = visible_slide(request, pk)
    if isinstance(slide, HttpResponse):
        return slide
    row = _requested_heatmap(request, slide.pk)
    etag = f'"hm{row.pk}-{z}-{x}-{y}"'
    if etag in request.headers.get("If-None-Match", ""):
        return _cached(HttpResponse(status=304), etag)
    data = overlay_tile(
        slide, key=f"heattile:{row.pk}:{z}:{x}:{y}", raster=lambda: load_raster(row), z=z, x=x, y=y
    )
    return _cached(HttpResponse(data, content_type="image/png"), etag)


def overlay_tile(slide, *, key: str, raster: Callable[[], Any], z: int, x: int, y: int) -> bytes:
    """The PNG of overlay tile z/x/y on the slide's own tile grid, from the ``tiles`` cache under
    ``key``, else rendered from ``raster()`` (loaded only then) and cached; 404 outside the
    pyramid. Heat maps and MIL attention overlays are both served through it."""
    cache = caches["tiles"]
    data = cache.get(key)
    if data is None:
        data = render_tile(
            raster(),
            width=slide.width,
            height=slide.height,
            levels=slide.levels,
            tile_width=slide.tile_width,
            tile_height=slide.tile_height,
            z=z,
            x=x,
            y=y,
        )
        if data is None:
            raise Http404(f"tile {z}/{x}/{y} is outside the pyramid of slide {slide.pk}")
        cache.set(key, data)
    return data


@require_GET
def heatmap_regions(request: HttpRequest, pk: int) -> HttpResponse:
    """GeoJSON outlines (level-0 px) of the regions scoring at or above the threshold: the model's
    locked threshold, ``?threshold=`` if given, else seed 002's 0.6875 (said in the answer)."""
    slide = visible_slide(request, pk)
    if isinstance(slide, HttpResponse):
        return slide
    row = _requested_heatmap(request, slide.pk)
    raw = request.GET.get("threshold")
    if raw is not None:
        try:
            threshold = float(raw)
        except ValueError:
            threshold = float("nan")
        if not 0 < threshold <= 1:
            return JsonResponse({"detail": "threshold must be a number in (0, 1]"}, status=400)
        source = "request"
    else:
        locked = HeatMap.objects.filter(pk=row.pk).values_list(
            "model_version__threshold", flat=True
        )[0]
        threshold, source = (
            (locked, "locked") if locked is not None else (PAPER_THRESHOLD, "seed 002 default")
        )
    etag = f'"hmr{row.pk}-{threshold!r}"'
    if etag in request.headers.get("If-None-Match", ""):
        return _cached(HttpResponse(status=304), etag)
    features = regions_at_threshold(load_raster(row), threshold=threshold)
    body = {
        "type": "FeatureCollection",
        "properties": {
            "heatmap": row.pk,
            "slide": slide.pk,
            "threshold": threshold,
            "threshold_source": source,
            "coordinates": "level-0 pixels",
        },
        "features": features,
    }
    return _cached(JsonResponse(body), etag)
