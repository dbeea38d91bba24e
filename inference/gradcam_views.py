"""Grad-CAM API: ask for the map of a region, follow it, fetch its PNG overlay.

Lab-scoped like the heat maps: the slide must be one of ``slides_for(user)`` (404 otherwise, never
403, so an outsider learns nothing), and a record is addressed through its slide.

POST /api/slides/<slide>/gradcam/          {x, y} (the window there) or {x, y, width, height}
                                           (level-0 px), optional model_version; 202 with the
                                           record when queued, 200 when it was already there
GET  /api/slides/<slide>/gradcam/<id>/     the record: status, region, overlay URL when done
GET  /api/slides/<slide>/gradcam/<id>/overlay.png   the colour map (RGBA) over the region
"""

from __future__ import annotations

from pathlib import Path

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from slides.access import slides_for

from .gradcam import GradCamError, GradCamUnavailable, request_gradcam
from .heatmap_views import visible_slide
from .records import GradCam, ModelVersion, Stage
from .serializers import without_server_paths


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


class GradCamRequestSerializer(serializers.Serializer):
    x = serializers.IntegerField(min_value=0, help_text="level-0 px")
    y = serializers.IntegerField(min_value=0, help_text="level-0 px")
    width = serializers.IntegerField(min_value=1, required=False, help_text="level-0 px")
    height = serializers.IntegerField(min_value=1, required=False, help_text="level-0 px")
    model_version = serializers.IntegerField(
        min_value=1, required=False, help_text="a primary model version; default: the live one"
    )


def request_answer(gradcam: GradCam, *, cached: bool) -> Response:
    """The answer to a map request: the record as it is now, 200 when it is done (a cache hit),
    202 while it is queued or computing."""
    gradcam.refresh_from_db()
    answer = {**gradcam_json(gradcam), "cached": cached}
    done = gradcam.status == GradCam.Status.SUCCEEDED
    return Response(answer, status=status.HTTP_200_OK if done else status.HTTP_202_ACCEPTED)


def gradcam_json(gradcam: GradCam) -> dict:
    """What the viewer needs: status, region, and where the overlay is once it is done."""
    done = gradcam.status == GradCam.Status.SUCCEEDED
    slide_id = gradcam.slide_id
    return {
        "id": gradcam.pk,
        "slide": slide_id,
        "method": gradcam.method,
        "status": gradcam.status,
        "statusReason": (  # server paths (a missing weights file) masked
            without_server_paths(gradcam.status_reason)
            if gradcam.status == GradCam.Status.FAILED
            else ""
        ),
        "region": {
            "x": gradcam.x,
            "y": gradcam.y,
            "width": gradcam.width,
            "height": gradcam.height,
        },
        "windowPx": gradcam.window_px,
        "windows": gradcam.windows,
        "maxProbability": gradcam.max_probability,
        "peak": {"x": gradcam.peak_x, "y": gradcam.peak_y} if done else None,
        "modelVersion": {"id": gradcam.model_version_id, "name": gradcam.model_version.name},
        "url": reverse("gradcam-detail", args=[slide_id, gradcam.pk]),
        "overlayUrl": reverse("gradcam-overlay", args=[slide_id, gradcam.pk]) if done else None,
        "createdAt": gradcam.created_at.isoformat(),
        "seconds": gradcam.seconds,
    }


class GradCamRequestView(APIView):
    """POST: the Grad-CAM map of the live model over a region of this slide (computed by a task
    on the `gpu` queue, kept for the same region and model)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(request=GradCamRequestSerializer, responses={202: dict, 200: dict})
    def post(self, request: Request, pk: int) -> Response:
        slide = get_object_or_404(slides_for(request.user), pk=pk)
        if slide.modality != "slide":
            raise ValidationError(
                {
                    "detail": f"slide {pk} is a node image: ask for its class activation map"
                    f" (POST /api/slides/{pk}/cam/ with method 'cam' or 'grad-cam')"
                }
            )
        body = GradCamRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        version = None
        if "model_version" in data:
            version = ModelVersion.objects.filter(
                pk=data["model_version"], stage=Stage.PRIMARY
            ).first()
            if version is None:
                raise ValidationError({"model_version": "no primary model version with this id"})
        try:
            gradcam, cached = request_gradcam(
                slide=slide,
                user=request.user,
                x=data["x"],
                y=data["y"],
                width=data.get("width"),
                height=data.get("height"),
                version=version,
            )
        except GradCamError as exc:
            raise ValidationError({"detail": str(exc)}) from exc
        except GradCamUnavailable as exc:
            raise Conflict(without_server_paths(str(exc))) from exc
        return request_answer(gradcam, cached=cached)


class GradCamDetailView(APIView):
    """GET: one Grad-CAM record of this slide (poll until `succeeded` or `failed`)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: dict})
    def get(self, request: Request, pk: int, gradcam: int) -> Response:
        slide = get_object_or_404(slides_for(request.user), pk=pk)
        record = get_object_or_404(
            GradCam.objects.select_related("model_version"), pk=gradcam, slide=slide
        )
        return Response(gradcam_json(record))


@require_GET
def gradcam_overlay(request: HttpRequest, pk: int, gradcam: int) -> HttpResponse:
    """The PNG overlay of a finished map (immutable: ETag, private caching)."""
    slide = visible_slide(request, pk)
    if isinstance(slide, HttpResponse):
        return slide
    path = (
        GradCam.objects.filter(pk=gradcam, slide_id=slide.pk, status=GradCam.Status.SUCCEEDED)
        .values_list("overlay_path", flat=True)
        .first()
    )
    if not path or not Path(path).is_file():
        raise Http404("No finished Grad-CAM map with this id for this slide")
    etag = f'"gc{gradcam}"'
    if etag in request.headers.get("If-None-Match", ""):
        response: HttpResponse = HttpResponse(status=304)
    else:
        # at most OVERLAY_MAX_PX a side: small enough to answer in one piece
        response = HttpResponse(Path(path).read_bytes(), content_type="image/png")
    response["ETag"] = etag
    patch_cache_control(response, private=True, max_age=86400)
    response["Vary"] = "Cookie, Authorization"
    return response
