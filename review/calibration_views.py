"""The threshold API of a patch model: see the calibration nodes and the threshold seed 002's rule
would lock (GET), lock it (POST), and score the calibration nodes that lack a score (POST
``calibration-scoring/``). Thin: the work is in :mod:`review.calibration`."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from inference.records import ModelVersion
from slides.access import has_role, may_promote_models, nodes_for
from slides.models import Role

from . import calibration


class CalibrationRequestSerializer(serializers.Serializer):
    nodes = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**31 - 1),
        required=False,
        allow_empty=False,
        max_length=10_000,
        help_text="node ids to calibrate on (default: the validation cases' nodes with a known truth)",
    )
    target_sensitivity = serializers.FloatField(
        min_value=0.01,
        max_value=1.0,
        default=1.0,
        help_text="1.0: the highest threshold keeping every positive node positive (seed 002)",
    )
    replace = serializers.BooleanField(default=False, help_text="replace a locked threshold")


def _query(request) -> dict:
    """The GET form of the request: ?nodes=1,2,3&target_sensitivity=0.95."""
    data: dict = {}
    if request.query_params.get("nodes"):
        data["nodes"] = [p for p in request.query_params["nodes"].split(",") if p.strip()]
    if request.query_params.get("target_sensitivity"):
        data["target_sensitivity"] = request.query_params["target_sensitivity"]
    return data


def _refused(exc: calibration.CalibrationError) -> Response:
    return Response({"detail": str(exc), "code": "cannot_calibrate"}, status=400)


class _VersionView(APIView):
    def version(self, request, pk: int) -> ModelVersion:
        if not has_role(request.user, Role.ADMIN):
            raise PermissionDenied("Only admins lock model thresholds.")
        return get_object_or_404(ModelVersion.objects.select_related("training_run"), pk=pk)


class ModelThresholdView(_VersionView):
    """A patch model's threshold: preview it on the calibration nodes (GET), lock it (POST)."""

    @extend_schema(
        parameters=[
            OpenApiParameter("nodes", str, description="comma-separated node ids"),
            OpenApiParameter("target_sensitivity", float),
        ],
        responses=OpenApiTypes.OBJECT,
    )
    def get(self, request, pk: int):
        version = self.version(request, pk)
        form = CalibrationRequestSerializer(data=_query(request))
        form.is_valid(raise_exception=True)
        try:
            state = calibration.calibration_state(
                version=version,
                visible=nodes_for(request.user),
                node_ids=form.validated_data.get("nodes"),
            )
        except calibration.CalibrationError as exc:
            return _refused(exc)
        body = state.as_dict()
        try:
            point = calibration.preview(
                state=state, target_sensitivity=form.validated_data["target_sensitivity"]
            )
        except calibration.CalibrationError as exc:
            body |= {"preview": None, "refused": str(exc)}
        else:
            body |= {"preview": point.to_dict(), "refused": None}
        return Response(body)

    @extend_schema(request=CalibrationRequestSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request, pk: int):
        version = self.version(request, pk)
        form = CalibrationRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        replace_live = form.validated_data["replace"] and version.is_live
        if replace_live and not may_promote_models(request.user):
            raise PermissionDenied(
                f"{version.name} is live for every lab: only platform admins replace its threshold"
            )
        try:
            state = calibration.calibration_state(
                version=version,
                visible=nodes_for(request.user),
                node_ids=form.validated_data.get("nodes"),
            )
            point = calibration.lock(
                state=state,
                user=request.user,
                target_sensitivity=form.validated_data["target_sensitivity"],
                replace=form.validated_data["replace"],
            )
        except calibration.CalibrationError as exc:
            if version.threshold is not None and "already has a locked threshold" in str(exc):
                return Response({"detail": str(exc), "code": "already_locked"}, status=409)
            return _refused(exc)
        return Response(
            {"model_version": version.pk, "threshold": point.threshold, "point": point.to_dict()},
            status=status.HTTP_201_CREATED,
        )


class CalibrationScoringView(_VersionView):
    """Score the calibration nodes that have no score of this model yet (202 with the run)."""

    @extend_schema(request=CalibrationRequestSerializer, responses=OpenApiTypes.OBJECT)
    def post(self, request, pk: int):
        version = self.version(request, pk)
        form = CalibrationRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            state = calibration.calibration_state(
                version=version,
                visible=nodes_for(request.user),
                node_ids=form.validated_data.get("nodes"),
            )
            run = calibration.score_calibration_nodes(state=state, user=request.user)
        except calibration.CalibrationError as exc:
            return _refused(exc)
        return Response(
            {"scoring_run": run.pk, "status": run.status, "slides_total": run.slides_total},
            status=status.HTTP_202_ACCEPTED,
        )
