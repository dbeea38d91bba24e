"""MIL attention overlay endpoints (issue 8): a tile source and PNG tiles on the slide's own z/x/y
grid, lab-scoped like the heat-map tiles (``heatmap_views.visible_slide``: 403 without login, 404
for a slide of another lab; the check comes before any parameter is judged).

``GET /api/slides/<id>/mil-attention/?model_version=<id>`` computes the slide's attention raster
(or finds it cached, :mod:`inference.mil_overlay`) and answers what the viewer needs: geometry,
the tile URL, the number of patches, the most-attended patch and a legend. Without
``model_version`` the case page's model is used (live, else newest). Bad ``model_version`` (not an id, or no MIL model of that
id): 400 naming it; no MIL model at all, no outlines or no clinical data for a model that needs
it: 409 with the reason, as the prediction API answers.

``GET /api/slides/<id>/mil-attention/tiles/<z>/<x>/<y>.png?model_version=<id>&bag=<key>`` serves
one tile of that immutable raster (ETag answered 304; encoded tiles cached in the ``tiles``
cache). A raster never computed is 404; a missing or malformed parameter is 400.
"""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.views.decorators.http import require_GET

from config.params import BadParameter, parse_int
from slides.models import Slide

from .heatmap_views import _cached, overlay_tile, visible_slide
from .mil_overlay import (
    BAG_KEY,
    OverlayUnavailable,
    legend,
    load_overlay,
    slide_attention,
)


def _bad(field: str, message: str) -> JsonResponse:
    return JsonResponse({field: [message]}, status=400)


def _version_id(request: HttpRequest, *, required: bool) -> int | None | JsonResponse:
    raw = request.GET.get("model_version")
    if raw in (None, ""):
        return _bad("model_version", "is required") if required else None
    try:
        return parse_int(raw, "model_version", minimum=1)
    except BadParameter:
        return _bad("model_version", "must be a model version id")


def _is_mil_version(version_id: int) -> bool:
    from .mil import MIL_STAGE
    from .records import ModelVersion

    return ModelVersion.objects.filter(pk=version_id, stage=MIL_STAGE).exists()


@require_GET
def attention_tilesource(request: HttpRequest, pk: int) -> HttpResponse:
    """The attention overlay of the slide from a MIL model version: tile URL and facts."""
    visible = visible_slide(request, pk)
    if isinstance(visible, HttpResponse):
        return visible
    version_id = _version_id(request, required=False)
    if isinstance(version_id, JsonResponse):
        return version_id
    if version_id is not None and not _is_mil_version(version_id):
        return _bad("model_version", f"no MIL model version {version_id}")
    slide = Slide.objects.select_related("node__case").get(pk=visible.pk)
    try:
        overlay = slide_attention(slide=slide, version_id=version_id)
    except OverlayUnavailable as exc:
        return JsonResponse({"detail": str(exc)}, status=409)
    template = reverse("mil-attention-tile", args=[slide.pk, 0, 0, 0]).replace(
        "/0/0/0.png", "/{z}/{x}/{y}.png"
    )
    return JsonResponse(
        {
            **overlay.to_dict(),
            "width": slide.width,
            "height": slide.height,
            "tileWidth": slide.tile_width,
            "tileHeight": slide.tile_height,
            "levels": slide.levels,
            "tileUrl": f"{template}?model_version={overlay.version_id}&bag={overlay.bag_key}",
            "case": slide.node.case_id,
            "legend": legend(),
        }
    )


@require_GET
def attention_tile(request: HttpRequest, pk: int, z: int, x: int, y: int) -> HttpResponse:
    """One RGBA PNG tile of the attention raster (transparent where the bag has no patch)."""
    slide = visible_slide(request, pk)
    if isinstance(slide, HttpResponse):
        return slide
    version_id = _version_id(request, required=True)
    if isinstance(version_id, JsonResponse):
        return version_id
    bag = request.GET.get("bag", "")
    if not BAG_KEY.match(bag):
        return _bad("bag", "must be the 16 hex digits the tile source names")
    etag = f'"mil{version_id}-{bag}-{z}-{x}-{y}"'
    if etag in request.headers.get("If-None-Match", ""):
        return _cached(HttpResponse(status=304), etag)

    def raster():
        try:
            return load_overlay(version_id=version_id, slide_id=slide.pk, bag_key=bag)
        except FileNotFoundError as exc:
            raise Http404("No attention overlay for this slide, model and bag") from exc

    key = f"miltile:{version_id}:{slide.pk}:{bag}:{z}:{x}:{y}"
    data = overlay_tile(slide, key=key, raster=raster, z=z, x=x, y=y)
    return _cached(HttpResponse(data, content_type="image/png"), etag)
