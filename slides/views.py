"""Pages (case list, case page, viewer), the REST API for cases/nodes/slides, and tile endpoints.

Tile endpoints are plain Django views, not DRF: they sit on the hot path of every pan and zoom,
so they do one indexed permission query, answer conditional requests from the ETag alone, and
serve cached bytes.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Prefetch
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET
from rest_framework import mixins, status, viewsets
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser
from rest_framework.response import Response

from config.params import id_param, int_param

from . import tiles
from .access import cases_for, has_role, nodes_for, slides_for
from .auth import api_user, visible_slide_fields
from .ingest import SlideImportError, register_slide
from .models import Role, Slide
from .node_images import (
    NODE_IMAGE_SUFFIXES,
    parse_window_query,
    register_node_image,
)
from .node_images import SOURCE as NODE_IMAGE_SOURCE
from .serializers import CaseSerializer, NodeSerializer, SlideSerializer, SlideUploadSerializer
from .sources import SLIDE_SUFFIXES
from .uploads import ARCHIVE_SUFFIXES, SafeMultiPartParser

# ---- pages ------------------------------------------------------------------------------------


@login_required
def case_list(request: HttpRequest) -> HttpResponse:
    cases = (
        cases_for(request.user)
        .select_related("lab")
        .annotate(node_count=Count("nodes", distinct=True))
    )
    return render(request, "slides/case_list.html", {"cases": cases})


@login_required
def case_detail(request: HttpRequest, pk: int) -> HttpResponse:
    case = get_object_or_404(
        cases_for(request.user)
        .select_related("lab")
        .prefetch_related(Prefetch("nodes__slides", queryset=Slide.objects.order_by("name"))),
        pk=pk,
    )
    return render(request, "slides/case_detail.html", {"case": case})


@login_required
def slide_viewer(request: HttpRequest, pk: int) -> HttpResponse:
    slide = get_object_or_404(slides_for(request.user).select_related("node__case"), pk=pk)
    return render(request, "slides/viewer.html", {"slide": slide})


def health(_request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


# ---- tiles ------------------------------------------------------------------------------------

TILE_FIELDS = (
    "id",
    "checksum",
    "file_path",
    "width",
    "height",
    "levels",
    "tile_width",
    "tile_height",
    "source",
    "modality",
    "window_center",
    "window_width",
)


def _visible_slide(request: HttpRequest, pk: int) -> Slide | HttpResponse:
    """The slide's tile fields if the requester may see it; 403 without login; 404 otherwise
    (the grant cached per credential, see `slides.auth.visible_slide_fields`)."""
    return visible_slide_fields(request, pk, fields=TILE_FIELDS, purpose="tileperm2")


def _private_cache(response: HttpResponse, etag: str) -> HttpResponse:
    response["ETag"] = etag
    patch_cache_control(response, private=True, max_age=settings.TILE_CACHE_SECONDS)
    response["Vary"] = "Cookie, Authorization"
    return response


@require_GET
def slide_tile(request: HttpRequest, pk: int, z: int, x: int, y: int) -> HttpResponse:
    """One JPEG tile in large-image's z/x/y scheme (z=0: whole slide in one tile).

    Node images take a display window: `?window=centre,width` or `?preset=lung` (see
    `slides.node_images.WINDOW_PRESETS`); a malformed one is answered 400 naming it."""
    slide = _visible_slide(request, pk)
    if isinstance(slide, HttpResponse):
        return slide
    return serve_tile(request, slide, z, x, y)


def serve_tile(
    request: HttpRequest, slide: Slide, z: int, x: int, y: int, *, blind_scope: str = ""
) -> HttpResponse:
    """Answer one tile of ``slide`` (access already checked by the caller): the node-image
    window from the query, ETag/304, private caching. With ``blind_scope`` (a reader study's
    image) the ETag is a keyed hash that cannot be matched to the slide's checksum."""
    window, window_tag = None, ""
    if slide.source == NODE_IMAGE_SOURCE:
        try:
            window, window_tag = parse_window_query(
                request.GET.get("window"), request.GET.get("preset")
            )
        except ValueError as exc:
            return JsonResponse({"detail": str(exc)}, status=400)
    etag = (
        tiles.blind_tile_etag(blind_scope, slide.checksum, z, x, y, window_tag=window_tag)
        if blind_scope
        else tiles.tile_etag(slide.checksum, z, x, y, window_tag=window_tag)
    )
    if etag in request.headers.get("If-None-Match", ""):
        return _private_cache(HttpResponse(status=304), etag)
    try:
        data = tiles.get_tile(slide, z, x, y, window=window, window_tag=window_tag)
    except tiles.TileNotFound as exc:
        raise Http404(str(exc)) from exc
    return _private_cache(HttpResponse(data, content_type="image/jpeg"), etag)


@require_GET
def slide_tilesource(request: HttpRequest, pk: int) -> HttpResponse:
    """What OpenSeadragon needs to open the slide (size, tiles, scale)."""
    user = api_user(request)
    if user is None:
        return JsonResponse({"detail": "Authentication credentials were not provided."}, status=403)
    slide = slides_for(user).filter(pk=pk).first()
    if slide is None:
        raise Http404("No such slide")
    tile_url = reverse("slide-tile", args=[slide.pk, 0, 0, 0]).replace(
        "/0/0/0.jpg", "/{z}/{x}/{y}.jpg"
    )
    return JsonResponse(
        {"id": slide.pk, "name": slide.name, **tiles.tilesource_fields(slide, tile_url)}
    )


@require_GET
def slide_thumbnail(request: HttpRequest, pk: int) -> HttpResponse:
    slide = _visible_slide(request, pk)
    if isinstance(slide, HttpResponse):
        return slide
    size = int_param(request, "size", default=256, minimum=16, maximum=1024, clamp=True)
    etag = f'"{slide.checksum[:20]}-thumb-{size}"'
    if etag in request.headers.get("If-None-Match", ""):
        return _private_cache(HttpResponse(status=304), etag)
    return _private_cache(
        HttpResponse(tiles.get_thumbnail(slide, max_size=size), content_type="image/jpeg"), etag
    )


@require_GET
def slide_associated_image(request: HttpRequest, pk: int, name: str) -> HttpResponse:
    """Label, macro or scanner thumbnail image: admins only (labels can show patient names)."""
    user = api_user(request)
    if user is None:
        return JsonResponse({"detail": "Authentication credentials were not provided."}, status=403)
    if not has_role(user, Role.ADMIN):
        return JsonResponse(
            {"detail": "Label and macro images are shown to admins only."}, status=403
        )
    slide = slides_for(user).filter(pk=pk).first()
    if slide is None:
        raise Http404("No such slide")
    data = tiles.get_associated_image(slide, name)
    if data is None:
        raise Http404(f"slide {pk} has no associated image {name!r}")
    response = HttpResponse(data, content_type="image/jpeg")
    patch_cache_control(response, private=True, no_store=True)
    return response


# ---- REST API ---------------------------------------------------------------------------------


class CaseViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = CaseSerializer

    def get_queryset(self):
        return (
            cases_for(self.request.user)
            .select_related("lab")
            .annotate(node_count=Count("nodes", distinct=True))
            .order_by("created_at", "id")
        )


class NodeViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = NodeSerializer

    def get_queryset(self):
        qs = nodes_for(self.request.user).prefetch_related("slides").order_by("case_id", "label")
        case = id_param(self.request, "case")
        if case is not None:
            qs = qs.filter(case_id=case)
        return qs


# Room for the multipart envelope (boundaries, the node and name fields) around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def _too_large(size: int) -> Response:
    return Response(
        {"file": [f"upload is {size} bytes; the limit is {settings.MAX_UPLOAD_BYTES} bytes"]},
        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    )


class SlideViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Slides the user may see; POST (multipart: node, file[, name]) uploads and registers one.

    With `modality` ct, ultrasound or image (and optional window_center, window_width) the file is
    a node image (PNG, JPEG, TIFF, single-frame DICOM; `slides.node_images`).

    Uploads are refused (4xx, nothing stored) when the request is larger than MAX_UPLOAD_BYTES
    (413, judged from Content-Length before the body is read), when the file name has a directory
    part, when the type is not a slide (archives included: nothing is unpacked), and when the file
    is a decompression bomb or otherwise unreadable (`slides.ingest`).
    """

    serializer_class = SlideSerializer
    parser_classes = [SafeMultiPartParser, FormParser]

    def get_queryset(self):
        return slides_for(self.request.user).select_related("node").order_by("id")

    def get_serializer_class(self):
        return SlideUploadSerializer if self.action == "create" else SlideSerializer

    def create(self, request, *args, **kwargs):
        if not has_role(request.user, Role.PATHOLOGIST, Role.LAB_LEAD, Role.ADMIN):
            raise PermissionDenied("Only pathologists, lab leads and admins upload slides.")
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES:
            return _too_large(declared)
        upload = SlideUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        node = nodes_for(request.user).filter(pk=upload.validated_data["node"]).first()
        if node is None:
            raise ValidationError({"node": ["no such node, or not in your labs"]})
        file = upload.validated_data["file"]
        name = Path(file.name or "").name  # never trust a client's directory part
        if not name or name in {".", ".."} or name != file.name.replace("\\", "/").split("/")[-1]:
            raise ValidationError({"file": [f"file name {file.name!r} is not a plain file name"]})
        if Path(name).suffix.lower() in ARCHIVE_SUFFIXES:
            raise ValidationError(
                {
                    "file": [
                        f"{name}: archives are not accepted (nothing is unpacked on the server); upload each slide file on its own"
                    ]
                }
            )
        modality = upload.validated_data.get("modality") or Slide.Modality.SLIDE
        suffixes = SLIDE_SUFFIXES if modality == Slide.Modality.SLIDE else NODE_IMAGE_SUFFIXES
        if Path(name).suffix.lower() not in suffixes:
            hint = (
                "; for a CT, ultrasound or other plain image send modality=ct, ultrasound or image"
                if modality == Slide.Modality.SLIDE
                and Path(name).suffix.lower() in NODE_IMAGE_SUFFIXES
                else ""
            )
            raise ValidationError(
                {
                    "file": [
                        f"unsupported file type {Path(name).suffix or '(none)'!r}; expected one of {sorted(suffixes)}{hint}"
                    ]
                }
            )
        if file.size > settings.MAX_UPLOAD_BYTES:
            return _too_large(file.size)
        folder = Path(settings.SLIDE_STORAGE_DIR) / "uploads" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        target = folder / name
        try:
            with open(target, "wb") as out:
                for chunk in file.chunks():
                    out.write(chunk)
            if modality == Slide.Modality.SLIDE:
                slide = register_slide(
                    node=node,
                    path=target,
                    name=upload.validated_data.get("name") or name,
                    user=request.user,
                )
            else:
                slide = register_node_image(
                    node=node,
                    path=target,
                    modality=modality,
                    name=upload.validated_data.get("name") or name,
                    user=request.user,
                    window_center=upload.validated_data.get("window_center"),
                    window_width=upload.validated_data.get("window_width"),
                )
        except SlideImportError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise ValidationError({"file": [f"{name}: {exc.reason}"]}) from exc
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Response(
            SlideSerializer(slide, context={"request": request}).data,
            status=status.HTTP_201_CREATED,
        )
