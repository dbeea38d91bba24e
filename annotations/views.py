"""The annotation API: viewport listing, create/update/delete/restore, history, import and export.

Access: only users who can see the slide (`slides_for`) reach its annotations; everybody else gets
404. Writing needs the pathologist role (lab leads and admins hold it too). Views only translate
HTTP to the service functions in `services` and `formats`.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import BooleanField, ExpressionWrapper, Q, QuerySet
from django.http import Http404, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from config.pagination import BoundedLimitOffsetPagination
from config.params import parse_int
from slides.access import has_role, slides_for
from slides.models import Role, Slide

from . import services
from .formats import FORMATS, FormatError, detect_format, get_format
from .geometry import InvalidAnnotation
from .models import Annotation, LabelClass
from .serializers import (
    AnnotationCreateSerializer,
    AnnotationHistorySerializer,
    AnnotationImportSerializer,
    AnnotationSerializer,
    AnnotationUpdateSerializer,
    LabelClassSerializer,
    ViewportAnnotationSerializer,
)

ANNOTATION_PAGE = inline_serializer(
    "AnnotationPage",
    fields={
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": ViewportAnnotationSerializer(many=True),
    },
)
PROBLEM = OpenApiTypes.OBJECT
VERSION_PARAM = OpenApiParameter("version", int, description="the version last seen; stale → 409")


class AnnotationPagination(BoundedLimitOffsetPagination):
    """A viewport can hold thousands of polygons: larger pages than the API default."""

    default_limit = 1000
    max_limit = 10000


class IgnoreFormatParameter(DefaultContentNegotiation):
    """`?format=` names the export file format here, not a DRF renderer: always answer JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def visible_slide(request, slide_id: int) -> Slide:
    slide = slides_for(request.user).filter(pk=slide_id).first()
    if slide is None:
        raise Http404("No such slide")
    return slide


def visible_annotations(user) -> QuerySet[Annotation]:
    return Annotation.objects.filter(slide__in=slides_for(user)).select_related(
        "label_class", "author", "slide"
    )


def require_writer(user) -> None:
    if not has_role(user, Role.PATHOLOGIST):
        raise PermissionDenied("Only pathologists, lab leads and admins change annotations.")


def invalid(exc: InvalidAnnotation) -> Response:
    body: dict = {exc.field: [str(exc)]}
    problems = getattr(exc, "problems", None)
    if problems:
        body["problems"] = problems
    return Response(body, status=status.HTTP_400_BAD_REQUEST)


def conflict(exc: services.Conflict, annotation_id: int, request) -> Response:
    current = Annotation.objects.select_related("label_class", "author").get(pk=annotation_id)
    return Response(
        {
            "detail": str(exc),
            "version": exc.current_version,
            "deleted": exc.deleted,
            "annotation": AnnotationSerializer(current, context={"request": request}).data,
        },
        status=status.HTTP_409_CONFLICT,
    )


def parse_bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if text in (None, ""):
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or any(v != v or v in (float("inf"), float("-inf")) for v in values):
        raise ValidationError({"bbox": ["bbox must be four numbers x0,y0,x1,y1 (level-0 px)"]})
    x0, y0, x1, y1 = values
    if x1 < x0 or y1 < y0:
        raise ValidationError({"bbox": ["bbox needs x0 <= x1 and y0 <= y1"]})
    return x0, y0, x1, y1


def parse_simplify(text: str | None) -> float | None:
    """`?simplify=`: a tolerance in level-0 px, a positive finite number; absent → None."""
    if text is None:
        return None
    try:
        tolerance = float(text)
    except ValueError:
        tolerance = float("nan")
    if not 0 < tolerance < float("inf"):
        raise ValidationError(
            {"simplify": ["simplify must be a positive number (tolerance in level-0 px)"]}
        )
    return tolerance


def parse_version(value) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):  # a query parameter or a form field: ASCII digits only
        return parse_int(value, "version", minimum=1)
    try:
        version = int(value)
    except (TypeError, ValueError, OverflowError):
        version = 0
    if not 1 <= version < 2**31:
        raise ValidationError({"version": ["version must be a positive integer"]})
    return version


class LabelClassList(generics.ListAPIView):
    """The label classes, in display order."""

    serializer_class = LabelClassSerializer
    pagination_class = None
    queryset = LabelClass.objects.all()


class SlideAnnotations(APIView):
    """GET: annotations intersecting `?bbox=x0,y0,x1,y1` (`&author=`, `&class=a,b`, `&deleted=1`,
    `&simplify=<px>` for outlines simplified to draw a zoomed-out view). POST: create."""

    parser_classes = [JSONParser]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "bbox", str, description="x0,y0,x1,y1 in level-0 px: only polygons meeting it"
            ),
            OpenApiParameter("author", str, description="username or user id"),
            OpenApiParameter("class", str, description="label class keys, comma-separated"),
            OpenApiParameter("deleted", bool, description="include soft-deleted annotations"),
            OpenApiParameter(
                "simplify",
                float,
                description=(
                    "tolerance in level-0 px (> 0; about one screen pixel of a zoomed-out view):"
                    " each outline comes simplified for drawing (Douglas-Peucker, topology-"
                    "preserving where that would break it; never invalid or empty, else the"
                    " stored one) with `simplified` saying"
                    " which; `vertex_count` stays the stored count; the rows are those whose"
                    " outline as sent meets bbox. Edit from `GET /api/annotations/<id>/`,"
                    " never from a simplified outline"
                ),
            ),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
        responses={200: ANNOTATION_PAGE},
    )
    def get(self, request, slide_id: int):
        slide = visible_slide(request, slide_id)
        params = request.query_params
        authors = None
        if params.get("author"):
            author = params["author"]
            users = get_user_model().objects
            numeric = author.isascii() and author.isdigit()  # "²".isdigit() is True too
            found = users.filter(pk=int(author)) if numeric else users.filter(username=author)
            authors = list(found.values_list("pk", flat=True))
        class_keys = None
        if params.get("class"):
            class_keys = [k.strip() for k in params["class"].split(",") if k.strip()]
            unknown = sorted(
                set(class_keys) - set(LabelClass.objects.values_list("key", flat=True))
            )
            if unknown:
                raise ValidationError({"class": [f"unknown label class(es): {', '.join(unknown)}"]})
        bbox = parse_bbox(params.get("bbox"))
        tolerance = parse_simplify(params.get("simplify"))
        candidates = services.viewport_queryset(
            slide=slide,
            bbox=bbox,
            authors=authors,
            class_keys=class_keys,
            include_deleted=params.get("deleted") in ("1", "true"),
        )
        # Paged in SQL over the bbox candidates; the exact polygon test then runs on the page only,
        # so a page can hold fewer rows than `limit` and `count` is an upper bound. Clients follow
        # `next` until it is null.
        paginator = AnnotationPagination()
        if tolerance is None:
            page = services.drop_non_intersecting(
                paginator.paginate_queryset(candidates, request, view=self), bbox
            )
            return paginator.get_paginated_response(AnnotationSerializer(page, many=True).data)
        # Zoomed out: the rows without their stored outlines, which are the cost there (reading
        # and parsing them); cached simplified outlines instead (services.view_outlines).
        candidates = candidates.defer("geometry", "source_geometry").annotate(
            repaired=ExpressionWrapper(
                Q(source_geometry__isnull=False), output_field=BooleanField()
            )
        )
        page, outlines = services.view_outlines(
            paginator.paginate_queryset(candidates, request, view=self),
            bbox=bbox,
            tolerance=tolerance,
        )
        rows = ViewportAnnotationSerializer(page, many=True, context={"outlines": outlines})
        return paginator.get_paginated_response(rows.data)

    @extend_schema(
        request=AnnotationCreateSerializer, responses={201: AnnotationSerializer, 400: PROBLEM}
    )
    def post(self, request, slide_id: int):
        slide = visible_slide(request, slide_id)
        require_writer(request.user)
        data = AnnotationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            annotation = services.create_annotation(
                slide=slide, user=request.user, **data.validated_data
            )
        except InvalidAnnotation as exc:
            return invalid(exc)
        return Response(AnnotationSerializer(annotation).data, status=status.HTTP_201_CREATED)


class AnnotationDetail(APIView):
    """GET one annotation (deleted ones too); PATCH with the `version` last seen; DELETE (soft, `?version=`)."""

    parser_classes = [JSONParser]

    def get_object(self, pk: int) -> Annotation:
        annotation = visible_annotations(self.request.user).filter(pk=pk).first()
        if annotation is None:
            raise Http404("No such annotation")
        return annotation

    @extend_schema(responses={200: AnnotationSerializer})
    def get(self, request, pk: int):
        return Response(AnnotationSerializer(self.get_object(pk)).data)

    @extend_schema(
        request=AnnotationUpdateSerializer,
        responses={200: AnnotationSerializer, 400: PROBLEM, 409: PROBLEM},
    )
    def patch(self, request, pk: int):
        annotation = self.get_object(pk)
        require_writer(request.user)
        data = AnnotationUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            annotation = services.update_annotation(
                annotation=annotation,
                user=request.user,
                expected_version=data.validated_data["version"],
                geometry=data.validated_data.get("geometry"),
                label_class=data.validated_data.get("label_class"),
            )
        except InvalidAnnotation as exc:
            return invalid(exc)
        except services.Conflict as exc:
            return conflict(exc, pk, request)
        return Response(AnnotationSerializer(annotation).data)

    @extend_schema(parameters=[VERSION_PARAM], responses={200: AnnotationSerializer, 409: PROBLEM})
    def delete(self, request, pk: int):
        annotation = self.get_object(pk)
        require_writer(request.user)
        version = parse_version(request.query_params.get("version"))
        try:
            annotation = services.delete_annotation(
                annotation=annotation, user=request.user, expected_version=version
            )
        except services.Conflict as exc:
            return conflict(exc, pk, request)
        return Response(AnnotationSerializer(annotation).data)


class AnnotationRestore(AnnotationDetail):
    """POST (optional body `{"version": n}`): undo a soft delete."""

    http_method_names = ["post", "options"]

    @extend_schema(
        request=inline_serializer(
            "RestoreRequest", fields={"version": serializers.IntegerField(required=False)}
        ),
        responses={200: AnnotationSerializer, 409: PROBLEM},
    )
    def post(self, request, pk: int):
        annotation = self.get_object(pk)
        require_writer(request.user)
        version = parse_version(
            request.data.get("version") if hasattr(request.data, "get") else None
        )
        try:
            annotation = services.restore_annotation(
                annotation=annotation, user=request.user, expected_version=version
            )
        except services.Conflict as exc:
            return conflict(exc, pk, request)
        return Response(AnnotationSerializer(annotation).data)


class AnnotationHistoryList(AnnotationDetail):
    """GET: every change of the annotation, oldest first, with the state before and after."""

    http_method_names = ["get", "options"]

    @extend_schema(responses={200: AnnotationHistorySerializer(many=True)})
    def get(self, request, pk: int):
        annotation = self.get_object(pk)
        entries = annotation.history.select_related("user").order_by("version")
        return Response(AnnotationHistorySerializer(entries, many=True).data)


class AnnotationExport(APIView):
    """GET `?format=qupath|asap|dsa`: the slide's live annotations as a file."""

    content_negotiation_class = IgnoreFormatParameter
    renderer_classes = [JSONRenderer]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "format", str, enum=list(FORMATS), description="file format; default qupath"
            )
        ],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 400: PROBLEM},
    )
    def get(self, request, slide_id: int):
        slide = visible_slide(request, slide_id)
        try:
            fmt = get_format(request.query_params.get("format") or "qupath")
        except FormatError as exc:
            return invalid(exc)
        rows = services.viewport_annotations(slide=slide)
        response = HttpResponse(fmt.write(rows), content_type=fmt.content_type)
        response["Content-Disposition"] = (
            f'attachment; filename="slide-{slide.pk}-annotations{fmt.suffix}"'
        )
        return response


class AnnotationImportView(APIView):
    """POST multipart `file` (+ `format`, `repair=make_valid`, `default_class`): all polygons or none."""

    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": AnnotationImportSerializer},
        responses={201: PROBLEM, 400: PROBLEM, 413: PROBLEM},
    )
    def post(self, request, slide_id: int):
        slide = visible_slide(request, slide_id)
        require_writer(request.user)
        form = AnnotationImportSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        upload = form.validated_data["file"]
        limit = settings.ANNOTATION_IMPORT_MAX_BYTES
        if upload.size > limit:
            return Response(
                {
                    "file": [
                        f"file is {upload.size} bytes; the limit is {limit} bytes"
                        " (ANNOTATION_IMPORT_MAX_BYTES)"
                    ],
                    "limit": {"setting": "ANNOTATION_IMPORT_MAX_BYTES", "value": limit},
                },
                status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        data = upload.read()
        name = (upload.name or "upload").replace("\\", "/").split("/")[-1]
        try:
            fmt = (
                get_format(form.validated_data["format"])
                if form.validated_data.get("format")
                else detect_format(name, data)
            )
            result = services.import_annotations(
                slide=slide,
                user=request.user,
                items=fmt.read(data),
                file_name=name,
                format=fmt.name,
                repair=form.validated_data["repair"],
                default_class=form.validated_data["default_class"],
            )
        except services.ImportTooLarge as exc:
            return Response(
                {
                    "file": [f"{name}: {exc}"],
                    "problems": [str(exc)],
                    "limit": {"setting": exc.setting, "value": exc.limit},
                },
                status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        except InvalidAnnotation as exc:
            if exc.field != "file":
                exc = services.ImportRefused([str(exc)])
            body = {"file": [f"{name}: {exc}"], "problems": getattr(exc, "problems", [str(exc)])}
            return Response(body, status=status.HTTP_400_BAD_REQUEST)
        record = result.record
        return Response(
            {
                "import": record.pk,
                "format": record.format,
                "imported": len(result.annotations),
                "polygons_in_file": record.polygon_count,
                "vertices_in_file": record.vertex_count,
                "repaired": record.repaired,
                "dropped": [
                    {k: v for k, v in d.items() if k != "geometry"} for d in record.dropped
                ],
                "annotations": [a.pk for a in result.annotations],
            },
            status=status.HTTP_201_CREATED,
        )
