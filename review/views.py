"""Review pages (case queue, triage, metrics) and the review API. Thin: services do the work.

A node or case outside the user's labs is a 404 (never a 403 that would confirm it exists).
Refusals carry `detail` (a sentence), `code` (machine-readable) and any details the service gave.
"""

from __future__ import annotations

import csv
from datetime import date

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from audit import log as audit
from config.pagination import MAX_OFFSET, BoundedLimitOffsetPagination
from config.params import int_param
from inference.records import ModelVersion
from slides.access import cases_for, has_role, nodes_for
from slides.models import Case, Lab, Node, Role

from . import queues, services
from .metrics import DEFAULT_BOOTSTRAP, DEFAULT_SEED, review_metrics, roc_svg
from .models import CaseSignOff, ReviewDecision, ReviewerCorrection, ReviewStatus
from .queues import TriageFilter, case_queue, live_primary, triage_nodes
from .serializers import (
    CorrectionInputSerializer,
    DecisionInputSerializer,
    DecisionSerializer,
    ExportQuerySerializer,
    LabSettingsInputSerializer,
    MetricsQuerySerializer,
    ReopenInputSerializer,
    SignOffInputSerializer,
    SignOffSerializer,
    TriageQuerySerializer,
    ViewedRegionInputSerializer,
    ViewedRegionSerializer,
    queue_row_json,
)

# ---- helpers ------------------------------------------------------------------------------------


def refusal(exc: services.ReviewRefused) -> Response:
    body = {"detail": str(exc), "code": exc.code, **exc.extra}
    if isinstance(exc, services.StaleDecision):
        body["current"] = DecisionSerializer(exc.current).data if exc.current else None
    return Response(body, status=exc.status_code)


def visible_node(user, pk: int) -> Node:
    node = nodes_for(user).select_related("case__lab").filter(pk=pk).first()
    if node is None:
        raise NotFound("No such node in your labs.")
    return node


def visible_case(user, pk: int) -> Case:
    case = cases_for(user).select_related("lab").filter(pk=pk).first()
    if case is None:
        raise NotFound("No such case in your labs.")
    return case


def labs_of(user) -> QuerySet[Lab]:
    return Lab.objects.all() if user.is_superuser else Lab.objects.filter(members=user)


def resolve_labs(user, value: str | None) -> tuple[int, ...] | None:
    """Lab ids for a `lab` filter (an id or a code among the user's labs); None: every lab."""
    if not value:
        return None
    labs = labs_of(user)
    found = (
        labs.filter(pk=int(value))
        if value.isascii() and value.isdigit() and len(value) < 19
        else labs.filter(code=value)
    )
    ids = tuple(found.values_list("pk", flat=True))
    if not ids:
        raise ValidationError({"lab": [f"no lab {value!r} among yours"]})
    return ids


def queue_page_url(case_id: int) -> str:
    """The case queue page (its route is included by config/urls.py from `page_urls`)."""
    try:
        return reverse("review-case-queue", args=[case_id])
    except NoReverseMatch:
        return f"/review/cases/{case_id}/"


def require_lead(user, what: str) -> None:
    if not has_role(user, Role.LAB_LEAD):
        raise PermissionDenied(f"Only lab leads and admins {what}.")


def parse(serializer_class, data):
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def queue_json(case: Case, user, *, queue=None) -> dict:
    version, rows = queue if queue is not None else case_queue(case=case, user=user)
    settings = services.lab_settings(case.lab)
    return {
        "case": {
            "id": case.pk,
            "accession_number": case.accession_number,
            "lab": case.lab.code,
            "status": case.status,
            "created_at": case.created_at,
        },
        "model_version": (
            {"id": version.pk, "name": version.name, "threshold": version.threshold}
            if version
            else None
        ),
        "require_region_views": settings.require_region_views,
        "can_sign_off": case.status == Case.Status.OPEN
        and bool(rows)
        and all(r.status in ("confirmed_positive", "confirmed_negative") for r in rows),
        "nodes": [queue_row_json(r) for r in rows],
    }


# ---- API: nodes ---------------------------------------------------------------------------------


class NodeDecisionsView(APIView):
    """A node's decisions, oldest first (GET); append a decision (POST)."""

    @extend_schema(responses=DecisionSerializer(many=True))
    def get(self, request, pk: int):
        node = visible_node(request.user, pk)
        decisions = (
            ReviewDecision.objects.filter(node=node).select_related("model_version").order_by("id")
        )
        return Response(DecisionSerializer(decisions, many=True).data)

    @extend_schema(
        request=DecisionInputSerializer,
        responses={
            201: DecisionSerializer,
            400: OpenApiResponse(description="unknown status, regions not viewed, reason missing"),
            403: OpenApiResponse(description="no right to decide (or to amend a signed-off case)"),
            404: OpenApiResponse(description="no such node in your labs"),
            409: OpenApiResponse(
                description="another decision arrived since `based_on`; `current` is it"
            ),
        },
    )
    def post(self, request, pk: int):
        node = visible_node(request.user, pk)
        if isinstance(request.data, dict) and "based_on" not in request.data:
            raise ValidationError(
                {"based_on": ["required: the id of the decision you saw, or null if none"]}
            )
        body = parse(DecisionInputSerializer, request.data)
        try:
            decision = services.decide(node=node, user=request.user, **body)
        except services.ReviewRefused as exc:
            return refusal(exc)
        return Response(DecisionSerializer(decision).data, status=status.HTTP_201_CREATED)


class NodeViewedRegionsView(APIView):
    """The node's regions with whether you opened each (GET); record one you opened (POST)."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):
        node = visible_node(request.user, pk)
        regions = services.node_regions(node)
        rows = node.viewed_regions.filter(user=request.user).order_by("id")
        seen = {r.region_key for r in rows}
        return Response(
            {
                "node": node.pk,
                "regions": [
                    r.as_dict()
                    | {"viewed": r.key in seen, "viewer_url": r.viewer_url(node_id=node.pk)}
                    for r in regions
                ],
                "viewed": ViewedRegionSerializer(rows, many=True).data,
            }
        )

    @extend_schema(request=ViewedRegionInputSerializer, responses={201: ViewedRegionSerializer})
    def post(self, request, pk: int):
        node = visible_node(request.user, pk)
        body = parse(ViewedRegionInputSerializer, request.data)
        try:
            viewed = services.record_viewed_region(
                node=node,
                user=request.user,
                region=body["region"] or None,
                x=body["x"],
                y=body["y"],
                slide=body["slide"],
                viewport=body["viewport"],
                zoom=body["zoom"],
            )
        except services.ReviewRefused as exc:
            return refusal(exc)
        return Response(ViewedRegionSerializer(viewed).data, status=status.HTTP_201_CREATED)


class NodeCorrectionsView(APIView):
    """Reviewer corrections of a node (GET); mark a region "not tumour" as a hard negative (POST)."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):
        node = visible_node(request.user, pk)
        rows = ReviewerCorrection.objects.filter(node=node).select_related(
            "annotation__label_class"
        )
        return Response(
            {
                "node": node.pk,
                "label_classes": [
                    {"key": c.key, "name": c.name} for c in services.hard_negative_classes()
                ],
                "corrections": [_correction_json(c) for c in rows],
            }
        )

    @extend_schema(request=CorrectionInputSerializer, responses={201: OpenApiTypes.OBJECT})
    def post(self, request, pk: int):
        node = visible_node(request.user, pk)
        body = parse(CorrectionInputSerializer, request.data)
        try:
            correction = services.correct_region(
                node=node,
                user=request.user,
                label_class=body["label_class"],
                region=body["region"] or None,
                geometry=body["geometry"],
                slide=body["slide"],
                size_px=body["size_px"],
                note=body["note"],
            )
        except services.ReviewRefused as exc:
            return refusal(exc)
        return Response(_correction_json(correction), status=status.HTTP_201_CREATED)


def _correction_json(c: ReviewerCorrection) -> dict:
    return {
        "id": c.pk,
        "node": c.node_id,
        "annotation": c.annotation_id,
        "slide": c.annotation.slide_id,
        "label_class": c.annotation.label_class.key,
        "region": c.region_key,
        "geometry": c.annotation.geometry,
        "user": getattr(c.user, "username", None),
        "created_at": c.created_at,
        "note": c.note,
    }


# ---- API: cases ---------------------------------------------------------------------------------


class CaseQueueView(APIView):
    """A case's nodes by predicted positivity (live primary model), unscored last."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):
        return Response(queue_json(visible_case(request.user, pk), request.user))


class CaseSignOffView(APIView):
    """Sign a case off (lab leads) once every node is confirmed positive or negative."""

    @extend_schema(request=SignOffInputSerializer, responses={201: SignOffSerializer})
    def post(self, request, pk: int):
        case = visible_case(request.user, pk)
        body = parse(SignOffInputSerializer, request.data)
        try:
            record = services.sign_off(case=case, user=request.user, note=body["note"])
        except services.ReviewRefused as exc:
            return refusal(exc)
        return Response(SignOffSerializer(record).data, status=status.HTTP_201_CREATED)


class CaseReopenView(APIView):
    """Reopen a signed-off case (lab leads, with a reason)."""

    @extend_schema(request=ReopenInputSerializer, responses={201: SignOffSerializer})
    def post(self, request, pk: int):
        case = visible_case(request.user, pk)
        body = parse(ReopenInputSerializer, request.data)
        try:
            record = services.reopen(case=case, user=request.user, reason=body["reason"])
        except services.ReviewRefused as exc:
            return refusal(exc)
        return Response(SignOffSerializer(record).data, status=status.HTTP_201_CREATED)


class LabSettingsView(APIView):
    """A lab's review settings (lab leads and admins read; admins change, audited)."""

    def _lab(self, request, pk: int) -> Lab:
        lab = labs_of(request.user).filter(pk=pk).first()
        if lab is None:
            raise NotFound("No such lab among yours.")
        return lab

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):
        require_lead(request.user, "see review settings")
        lab = self._lab(request, pk)
        return Response(_settings_json(services.lab_settings(lab), lab))

    @extend_schema(request=LabSettingsInputSerializer, responses=OpenApiTypes.OBJECT)
    def put(self, request, pk: int):
        lab = self._lab(request, pk)
        body = parse(LabSettingsInputSerializer, request.data)
        try:
            settings = services.set_lab_settings(lab=lab, user=request.user, **body)
        except services.ReviewRefused as exc:
            return refusal(exc)
        return Response(_settings_json(settings, lab))


def _settings_json(settings, lab: Lab) -> dict:
    return {
        "lab": lab.pk,
        "code": lab.code,
        "require_region_views": settings.require_region_views,
        "updated_by": getattr(settings.updated_by, "username", None),
        "updated_at": settings.updated_at,
    }


# ---- API: triage, metrics, export ---------------------------------------------------------------


def triage_filter(user, query: dict) -> tuple[TriageFilter, ModelVersion | None]:
    version = live_primary()
    if query.get("model_version"):
        version = ModelVersion.objects.filter(pk=query["model_version"]).first()
        if version is None:
            raise ValidationError({"model_version": [f"no model version {query['model_version']}"]})
    filters = TriageFilter(
        lab_ids=resolve_labs(user, query.get("lab")),
        date_from=query.get("date_from"),
        date_to=query.get("date_to"),
        version=version,
        status=query.get("status") or ReviewStatus.UNREVIEWED,
    )
    return filters, version


def triage_row_json(node: Node) -> dict:
    return {
        "id": node.pk,
        "label": node.label,
        "case": {
            "id": node.case_id,
            "accession_number": node.case.accession_number,
            "lab": node.case.lab.code,
            "created_at": node.case.created_at,
        },
        "score": node.rv_score,
        "threshold": node.rv_threshold,
        "status": node.rv_status,
        "decision": node.rv_decision_id,
        "queue_url": queue_page_url(node.case_id) + f"#node-{node.pk}",
    }


class TriageView(APIView):
    """Negative-screened nodes of open cases in your labs, oldest case first (lab leads)."""

    @extend_schema(parameters=[TriageQuerySerializer], responses=OpenApiTypes.OBJECT)
    def get(self, request):
        require_lead(request.user, "use the triage list")
        query = parse(TriageQuerySerializer, request.query_params)
        filters, version = triage_filter(request.user, query)
        nodes = triage_nodes(nodes_for(request.user), version=version, filters=filters)
        paginator = BoundedLimitOffsetPagination()
        paginator.request = request
        paginator.limit = paginator.get_limit(request)
        paginator.offset = paginator.get_offset(request)
        ids, paginator.count = queues.triage_ids(
            nodes, offset=paginator.offset, limit=paginator.limit
        )
        page = queues.triage_page(ids, version=version)
        response = paginator.get_paginated_response([triage_row_json(n) for n in page])
        response.data["model_version"] = (
            {"id": version.pk, "name": version.name, "threshold": version.threshold}
            if version
            else None
        )
        return response


class MetricsView(APIView):
    """Per model version: sensitivity, specificity, accuracy, ROC and AUC with 95% CIs (lab leads)."""

    @extend_schema(parameters=[MetricsQuerySerializer], responses=OpenApiTypes.OBJECT)
    def get(self, request):
        require_lead(request.user, "see review metrics")
        query = parse(MetricsQuerySerializer, request.query_params)
        nodes = nodes_for(request.user)
        lab_ids = resolve_labs(request.user, query.get("lab"))
        if lab_ids is not None:
            nodes = nodes.filter(case__lab_id__in=lab_ids)
        results = review_metrics(nodes=nodes, n_boot=query["bootstrap"], seed=query["seed"])
        return Response(
            {
                "truth": "current decision: confirmed positive = positive, confirmed negative = negative",
                "bootstrap": {"resamples": query["bootstrap"], "seed": query["seed"]},
                "versions": [m.as_dict() for m in results],
            }
        )


EXPORT_COLUMNS = [
    "decision_id",
    "decided_at",
    "lab",
    "case",
    "case_status",
    "node_id",
    "node",
    "status",
    "further_work",
    "note",
    "user",
    "based_on",
    "amendment",
    "reason",
    "model_version",
    "score",
    "threshold",
    "screened",
    "regions_required",
    "regions_viewed",
    "region_rule",
]


def _cell(value) -> object:
    """Spreadsheet-safe text: a cell starting with = + - @ (or a tab/CR) is not a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def export_rows(decisions: QuerySet[ReviewDecision]):
    for d in decisions.iterator(chunk_size=2000):
        required = [r["key"] for r in d.regions if r.get("required")]
        viewed = [r["key"] for r in d.regions if r.get("required") and r.get("viewed")]
        screened = (
            ""
            if d.screened_positive is None
            else ("positive" if d.screened_positive else "negative")
        )
        yield [
            d.pk,
            d.created_at.isoformat(),
            d.node.case.lab.code,
            d.node.case.accession_number,
            d.node.case.status,
            d.node_id,
            d.node.label,
            d.status,
            d.further_work,
            d.note,
            d.user_name,
            d.previous_id or "",
            "yes" if d.amendment else "no",
            d.reason,
            d.model_version.name if d.model_version else "",
            "" if d.score is None else d.score,
            "" if d.threshold is None else d.threshold,
            screened,
            " ".join(required),
            " ".join(viewed),
            "on" if d.region_rule else "off",
        ]


class DecisionExportView(APIView):
    """Every decision in your labs (full history, amendments included) as CSV; audited (lab leads)."""

    @extend_schema(
        parameters=[ExportQuerySerializer],
        responses={(200, "text/csv"): OpenApiTypes.STR},
    )
    def get(self, request):
        require_lead(request.user, "export decisions")
        query = parse(ExportQuerySerializer, request.query_params)
        decisions = ReviewDecision.objects.filter(node__in=nodes_for(request.user).values("pk"))
        lab_ids = resolve_labs(request.user, query.get("lab"))
        if lab_ids is not None:
            decisions = decisions.filter(node__case__lab_id__in=lab_ids)
        exported = lab_ids or tuple(labs_of(request.user).values_list("pk", flat=True))
        if query.get("date_from"):
            decisions = decisions.filter(created_at__date__gte=query["date_from"])
        if query.get("date_to"):
            decisions = decisions.filter(created_at__date__lte=query["date_to"])
        decisions = decisions.select_related("node__case__lab", "model_version").order_by("id")
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="review-decisions-{stamp}.csv"'
        response["Cache-Control"] = "no-store"
        writer = csv.writer(response)
        writer.writerow(EXPORT_COLUMNS)
        count = 0
        with transaction.atomic():
            for row in export_rows(decisions):
                writer.writerow([_cell(v) for v in row])
                count += 1
            audit.record(
                actor=request.user,
                action="review decisions exported",
                rows=count,
                # filed under the lab exported when there is one (its admins read the event)
                lab=exported[0] if len(exported) == 1 else None,
                lab_filter=query.get("lab") or "",
                date_from=str(query.get("date_from") or ""),
                date_to=str(query.get("date_to") or ""),
            )
        return response


# ---- pages --------------------------------------------------------------------------------------


def _page_lead(request: HttpRequest, what: str) -> None:
    if not has_role(request.user, Role.LAB_LEAD):
        raise DjangoPermissionDenied(f"Only lab leads and admins {what}.")


@login_required
def case_queue_page(request: HttpRequest, pk: int) -> HttpResponse:
    case = get_object_or_404(cases_for(request.user).select_related("lab"), pk=pk)
    version, rows = case_queue(case=case, user=request.user)
    data = queue_json(case, request.user, queue=(version, rows))
    return render(
        request,
        "review/case_queue.html",
        {
            "case": case,
            "version": version,
            "rows": rows,
            "queue": data,
            "is_lead": has_role(request.user, Role.LAB_LEAD),
            "settings": services.lab_settings(case.lab),
            "sign_offs": CaseSignOff.objects.filter(case=case).order_by("id"),
        },
    )


def review_viewer_json(node: Node, slide, user) -> dict:
    """What the review viewer's bar needs: the node's regions (with their squares, and whether
    this user has viewed each), the viewed rule, the hard-negative classes and the API URLs."""
    regions = services.node_regions(node)
    seen = set(
        node.viewed_regions.filter(user=user).values_list("region_key", flat=True).distinct()
    )
    sizes = {s.pk: (s.width, s.height) for s in node.slides.all()}
    corrections = ReviewerCorrection.objects.filter(node=node).select_related(
        "annotation__label_class"
    )
    rows = []
    for r in regions:
        width, height = sizes.get(r.slide_id, (0, 0))
        box = r.box(width=width, height=height) if r.slide_id in sizes else None
        rows.append(
            r.as_dict()
            | {
                "viewed": r.key in seen,
                "box": list(box) if box else None,
                "size_px": r.size_px,
                "viewer_url": r.viewer_url(node_id=node.pk),
            }
        )
    return {
        "node": {
            "id": node.pk,
            "label": node.label,
            "case": {"id": node.case_id, "accession_number": node.case.accession_number},
            "queue_url": queue_page_url(node.case_id) + f"#node-{node.pk}",
        },
        "slide": slide.pk,
        "rule": {
            "required": services.lab_settings(node.case.lab_id).require_region_views,
            "min_zoom": services.VIEWED_MIN_ZOOM,
            "min_inside": services.VIEWED_MIN_INSIDE,
            "dwell_ms": VIEWED_DWELL_MS,
        },
        "regions": rows,
        "label_classes": [{"key": c.key, "name": c.name} for c in services.hard_negative_classes()],
        "corrections": [_correction_json(c) for c in corrections],
        "urls": {
            "viewed_regions": reverse("review-node-viewed-regions", args=[node.pk]),
            "corrections": reverse("review-node-corrections", args=[node.pk]),
        },
    }


#: How long (ms) the view must rest with a region in it before the review viewer reports it.
VIEWED_DWELL_MS = 600


@login_required
def review_viewer_page(request: HttpRequest, pk: int, slide_pk: int) -> HttpResponse:
    """The slide viewer for reviewing a node: the heat map on, opened at `?x=&y=&zoom=`, with a
    bar that reports each region at or above the threshold once it has been on screen, and saves
    a region as "not tumour" (a hard-negative annotation) with one click or `n`."""
    node = get_object_or_404(nodes_for(request.user).select_related("case__lab"), pk=pk)
    slide = get_object_or_404(node.slides.all(), pk=slide_pk)
    data = review_viewer_json(node, slide, request.user)
    return render(
        request,
        "review/viewer.html",
        {"slide": slide, "node": node, "review": data, "regions": data["regions"]},
    )


TRIAGE_PAGE_SIZE = 100


@login_required
def triage_page(request: HttpRequest) -> HttpResponse:
    _page_lead(request, "use the triage list")
    form = TriageQuerySerializer(data=request.GET)
    errors = {}
    nodes: list = []
    total = 0
    version = None
    offset = 0
    if form.is_valid():
        try:
            filters, version = triage_filter(request.user, form.validated_data)
        except ValidationError as exc:
            errors = exc.detail
        else:
            qs = triage_nodes(nodes_for(request.user), version=version, filters=filters)
            offset = int_param(
                request, "offset", default=0, minimum=0, maximum=MAX_OFFSET, clamp=True
            )
            ids, total = queues.triage_ids(qs, offset=offset, limit=TRIAGE_PAGE_SIZE)
            nodes = queues.triage_page(ids, version=version)
    else:
        errors = form.errors
    query = request.GET.copy()
    query.pop("offset", None)
    rows = [
        {
            "node": n,
            "data": triage_row_json(n),
            "status_label": ReviewStatus(n.rv_status).label,
            "score_percent": round(100 * min(max(n.rv_score, 0.0), 1.0), 1),
            "threshold_percent": round(100 * min(max(n.rv_threshold, 0.0), 1.0), 1),
        }
        for n in nodes
    ]
    return render(
        request,
        "review/triage.html",
        {
            "rows": rows,
            "errors": errors,
            "total": total,
            "offset": offset,
            "shown_to": offset + len(rows),
            "next_offset": offset + TRIAGE_PAGE_SIZE if offset + TRIAGE_PAGE_SIZE < total else None,
            "prev_offset": max(0, offset - TRIAGE_PAGE_SIZE) if offset else None,
            "query": query.urlencode(),
            "params": request.GET,
            "version": version,
            "labs": labs_of(request.user).order_by("name"),
            "versions": ModelVersion.objects.order_by("-is_live", "-id")[:50],
            "statuses": [
                ("unreviewed", "Unreviewed"),
                ("any", "Any status"),
                *[(v, label) for v, label in ReviewStatus.choices if v != "unreviewed"],
            ],
        },
    )


@login_required
def metrics_page(request: HttpRequest) -> HttpResponse:
    _page_lead(request, "see review metrics")
    query = MetricsQuerySerializer(data=request.GET)
    params = (
        query.validated_data
        if query.is_valid()
        else {"bootstrap": DEFAULT_BOOTSTRAP, "seed": DEFAULT_SEED}
    )
    nodes = nodes_for(request.user)
    try:
        lab_ids = resolve_labs(request.user, request.GET.get("lab"))
    except ValidationError:
        lab_ids = ()
    if lab_ids is not None:
        nodes = nodes.filter(case__lab_id__in=lab_ids)
    results = review_metrics(nodes=nodes, n_boot=params["bootstrap"], seed=params["seed"])
    return render(
        request,
        "review/metrics.html",
        {
            "results": [(m, roc_svg(m)) for m in results],
            "labs": labs_of(request.user).order_by("name"),
            "lab": request.GET.get("lab", ""),
            "bootstrap": params["bootstrap"],
            "seed": params["seed"],
            "today": date.today(),
        },
    )
