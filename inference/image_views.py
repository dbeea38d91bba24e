"""Whole-image node classifiers: the comparison of architectures trained on one dataset (page and
API, every role) and the choice of an operating point (admins)."""

from __future__ import annotations

import math

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .image_classifier import (
    NodeImageError,
    compare_versions,
    evidence_summary,
    is_image_version,
    set_operating_point,
)
from .records import ModelVersion
from .views import _page_roles, _require_any_role, _require_promoter


def _image_version(pk: int) -> ModelVersion:
    """The node-image ModelVersion ``pk``; any other model is not found here (404)."""
    version = get_object_or_404(ModelVersion, pk=pk)
    if not is_image_version(version):
        raise Http404(f"model version {pk} is not a whole-image node classifier")
    return version


def comparison(version: ModelVersion) -> dict:
    """The comparison of ``version`` with every node-image model of its dataset."""
    summary = version.dataset_summary or {}
    return {
        "dataset_hash": version.dataset_hash,
        "modality": summary.get("modality"),
        "size": summary.get("size"),
        "split": summary.get("split"),
        "val_images": summary.get("val"),
        "val_patients": summary.get("val_patients"),
        "versions": compare_versions(dataset_hash=version.dataset_hash),
    }


class ModelComparisonView(APIView):
    """Every whole-image classifier trained on the same dataset (same images, same split by
    patient) as this model version: AUROC [95% CI], sensitivity, specificity, accuracy [95% CI]
    at each one's operating point, best AUROC first."""

    @extend_schema(responses={200: dict})
    def get(self, request: Request, pk: int) -> Response:
        _require_any_role(request)
        return Response(comparison(_image_version(pk)))


class OperatingPointView(APIView):
    """Choose a node-image model's operating point again from its validation images: Youden's J
    (``{"method": "youden"}``) or the highest threshold that reaches a target sensitivity
    (``{"target_sensitivity": 0.9}``). Platform operators: a live model's operating point is what
    every lab screens at."""

    @extend_schema(request=dict, responses={200: dict})
    def post(self, request: Request, pk: int) -> Response:
        _require_promoter(request)
        version = _image_version(pk)
        body = request.data if isinstance(request.data, dict) else None
        if body is None:
            raise ValidationError({"detail": "send a JSON object"})
        unknown = sorted(set(body) - {"method", "target_sensitivity"})
        if unknown:
            raise ValidationError({name: ["unknown field"] for name in unknown})
        method = body.get("method", "youden" if "target_sensitivity" not in body else "target")
        if method not in ("youden", "target"):
            raise ValidationError({"method": [f"must be youden or target, not {method!r}"]})
        target = None
        if method == "target":
            raw = body.get("target_sensitivity")
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise ValidationError({"target_sensitivity": ["a number in (0, 1] is needed"]})
            try:
                target = float(raw)
            except ValueError:
                target = math.nan
            if not 0 < target <= 1:  # refuses nan too
                raise ValidationError(
                    {"target_sensitivity": [f"must be a number in (0, 1], not {raw!r}"]}
                )
        elif "target_sensitivity" in body:
            raise ValidationError({"target_sensitivity": ["not used with method youden"]})
        try:
            version = set_operating_point(version, target_sensitivity=target, user=request.user)
        except NodeImageError as exc:
            raise ValidationError({"detail": str(exc)}) from exc
        return Response(evidence_summary(version))


@login_required
def model_comparison_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The comparison page of a node-image model's dataset."""
    _page_roles(request)
    version = _image_version(pk)
    return render(
        request,
        "inference/model_comparison.html",
        {"version": version, "comparison": comparison(version)},
    )
