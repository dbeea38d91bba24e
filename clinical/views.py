"""Clinical data API and page (lab-scoped through slides.access), and a case's MIL prediction.

Reading: any role on the case's lab. Writing (PUT, CSV import, the form): pathologists, lab leads
and admins of the case's lab. Other labs' cases are 404, as everywhere.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from config.params import int_param
from slides.access import cases_for, has_role
from slides.models import Case, Role

from . import services
from .models import ClinicalField, ClinicalRecord, NodeStatus
from .prediction import PredictionUnavailable, case_prediction

MAX_CSV_BYTES = 5 * 1024 * 1024


def _visible_case(user, pk: int) -> Case:
    return get_object_or_404(cases_for(user), pk=pk)


def _require_writer(user) -> None:
    if not has_role(user, Role.PATHOLOGIST):
        raise PermissionDenied("Only pathologists, lab leads and admins enter clinical data.")


def field_as_dict(f: ClinicalField) -> dict:
    return {
        "key": f.key,
        "label": f.label,
        "kind": f.kind,
        "allowed_values": f.allowed_values,
        "min_value": f.min_value,
        "max_value": f.max_value,
        "integer": f.integer,
        "unit": f.unit,
        "required": f.required,
    }


class ClinicalFieldsView(APIView):
    """The clinical variables a case can carry (admins add more in the admin site)."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request):
        if not has_role(request.user, Role.PATHOLOGIST):
            raise PermissionDenied("No role in NodeScope.")
        return Response(
            {
                "fields": [field_as_dict(f) for f in services.active_fields()],
                "node_statuses": list(NodeStatus.values),
            }
        )


class CaseClinicalView(APIView):
    """A case's current clinical data and node status (GET); replace them (PUT: a new record,
    the previous one kept as history). Body: {"values": {...}, "positive_nodes": n,
    "node_status": "N0" | "N+(1-2)" | "N+(>2)"}; the status is derived from the count if omitted."""

    parser_classes = [JSONParser]

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):
        case = _visible_case(request.user, pk)
        return Response({"case": case.pk, **services.record_as_dict(services.current_record(case))})

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def put(self, request, pk: int):
        case = _visible_case(request.user, pk)
        _require_writer(request.user)
        body = request.data
        if not isinstance(body, dict):
            raise ValidationError(
                {"detail": "send an object with values, positive_nodes, node_status"}
            )
        unknown = set(body) - {"values", "positive_nodes", "node_status"}
        if unknown:
            raise ValidationError({k: "unknown key" for k in sorted(unknown)})
        try:
            entry = services.save_clinical_record(
                case=case,
                values=body.get("values") or {},
                positive_nodes=body.get("positive_nodes"),
                node_status=body.get("node_status"),
                user=request.user,
                source=ClinicalRecord.Source.API,
            )
        except services.ClinicalDataError as exc:
            raise ValidationError(exc.errors) from exc
        return Response({"case": case.pk, **services.record_as_dict(entry)})


class CaseClinicalHistoryView(APIView):
    """Every clinical record of a case, newest first (who entered what, when, from where)."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):
        case = _visible_case(request.user, pk)
        rows = case.clinical_records.select_related("entered_by").order_by("-id")[:500]
        return Response({"case": case.pk, "records": [services.record_as_dict(r) for r in rows]})


class ClinicalImportView(APIView):
    """Import clinical data from CSV (multipart `file`, or JSON {"csv": "..."}): all rows or none.

    Columns: accession_number, any clinical variable keys, positive_nodes, node_status. A bad
    file answers 400 with every bad row and the reason per column; nothing is written."""

    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def post(self, request):
        _require_writer(request.user)
        upload = request.FILES.get("file") if hasattr(request, "FILES") else None
        if upload is not None:
            if upload.size > MAX_CSV_BYTES:
                raise ValidationError({"file": f"larger than {MAX_CSV_BYTES} bytes"})
            try:
                text = upload.read().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValidationError({"file": "not UTF-8 text"}) from exc
        else:
            data = request.data if isinstance(request.data, dict) else {}
            text = data.get("csv")
            if not isinstance(text, str) or not text.strip():
                raise ValidationError(
                    {"file": 'send a CSV file (multipart `file`) or {"csv": text}'}
                )
            if len(text) > MAX_CSV_BYTES:
                raise ValidationError({"csv": f"longer than {MAX_CSV_BYTES} characters"})
        if "\x00" in text:
            raise ValidationError({"file": "not a text file"})
        report = services.import_csv(text, user=request.user)
        if not report.ok:
            return Response(
                {"imported": 0, "errors": report.errors}, status=status.HTTP_400_BAD_REQUEST
            )
        return Response({"imported": report.imported, "errors": []}, status=status.HTTP_201_CREATED)


class CaseMILPredictionView(APIView):
    """The case's predicted node status from a MIL model (the newest, or ?model_version=id):
    class, probabilities and every patch's attention weight (slide, level-0 box)."""

    @extend_schema(
        parameters=[OpenApiParameter("model_version", int, required=False)],
        responses=OpenApiTypes.OBJECT,
    )
    def get(self, request, pk: int):
        case = _visible_case(request.user, pk)
        version_id = int_param(request, "model_version", minimum=1)
        try:
            return Response(case_prediction(case, version_id=version_id))
        except PredictionUnavailable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)


# ---- page ---------------------------------------------------------------------------------------


@login_required
def case_clinical_page(request: HttpRequest, pk: int) -> HttpResponse:
    """A form for the case's clinical data and node status, with its history."""
    case = _visible_case(request.user, pk)
    fields = services.active_fields()
    current = services.current_record(case)
    errors: dict[str, str] = {}
    submitted: dict[str, str] = {}
    if request.method == "POST":
        if not has_role(request.user, Role.PATHOLOGIST):
            return HttpResponse(
                "Only pathologists, lab leads and admins enter clinical data.", status=403
            )
        submitted = {f.key: request.POST.get(f.key, "") for f in fields}
        count = request.POST.get("positive_nodes", "")
        node_status = request.POST.get("node_status", "")
        try:
            services.save_clinical_record(
                case=case,
                values=submitted,
                positive_nodes=count,
                node_status=node_status,
                user=request.user,
                source=ClinicalRecord.Source.FORM,
                fields=fields,
            )
        except services.ClinicalDataError as exc:
            errors = exc.errors
            submitted.update(positive_nodes=count, node_status=node_status)
        else:
            messages.success(request, "Clinical data saved.")
            return redirect("case-clinical", pk=case.pk)
    shown = submitted or {
        **{k: "" if v is None else str(v) for k, v in (current.values if current else {}).items()},
        "positive_nodes": ""
        if current is None or current.positive_nodes is None
        else str(current.positive_nodes),
        "node_status": current.node_status if current else "",
    }
    rows = [
        {"field": f, "value": shown.get(f.key, ""), "error": errors.get(f.key, "")} for f in fields
    ]
    history = case.clinical_records.select_related("entered_by").order_by("-id")[:50]
    return render(
        request,
        "clinical/case_clinical.html",
        {
            "case": case,
            "rows": rows,
            "shown": shown,
            "errors": errors,
            "node_statuses": NodeStatus.choices,
            "history": history,
            "can_write": has_role(request.user, Role.PATHOLOGIST),
            "status_code": 400 if errors else 200,
        },
        status=400 if errors else 200,
    )
