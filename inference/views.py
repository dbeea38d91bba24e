"""Training runs and model versions: REST API (admins launch, cancel, promote) and pages."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.response import Response

from audit.log import record
from slides.access import has_role
from slides.models import Role

from . import plots
from .jobs import TrainingRequestError, launch_training, promote, rollback
from .records import ModelVersion, TrainingRun
from .serializers import (
    LaunchTrainingSerializer,
    ModelVersionSerializer,
    RollbackSerializer,
    TrainingRunSerializer,
)


def _require_admin(request) -> None:
    if not has_role(request.user, Role.ADMIN):
        raise PermissionDenied("Only admins launch, cancel or promote models.")


def _require_any_role(request) -> None:
    if not has_role(request.user, Role.PATHOLOGIST, Role.LAB_LEAD, Role.ADMIN):
        raise PermissionDenied("No role in NodeScope.")


class TrainingRunViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Training runs; POST launches one on the `gpu` queue (admins)."""

    serializer_class = TrainingRunSerializer

    def get_queryset(self):
        _require_any_role(self.request)
        return TrainingRun.objects.select_related("created_by").order_by("-id")

    def get_serializer_class(self):
        return LaunchTrainingSerializer if self.action == "create" else TrainingRunSerializer

    @extend_schema(request=LaunchTrainingSerializer, responses={201: TrainingRunSerializer})
    def create(self, request, *args, **kwargs):
        _require_admin(request)
        body = LaunchTrainingSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            run = launch_training(user=request.user, **body.validated_data)
        except TrainingRequestError as exc:
            raise ValidationError({"detail": str(exc)}) from exc
        return Response(TrainingRunSerializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=TrainingRunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        _require_admin(request)
        run = self.get_object()
        if run.is_finished:
            return Response({"detail": f"run {run.pk} already {run.status}"}, status=status.HTTP_409_CONFLICT)
        run.request_cancel()
        record(actor=request.user, action="training cancelled", obj=run)
        return Response(TrainingRunSerializer(run).data)


class ModelVersionViewSet(viewsets.ReadOnlyModelViewSet):
    """Model versions; every role sees which is live; admins promote and roll back."""

    serializer_class = ModelVersionSerializer

    def get_queryset(self):
        _require_any_role(self.request)
        return ModelVersion.objects.select_related("promoted_by").order_by("-id")

    @extend_schema(request=None, responses=ModelVersionSerializer)
    @action(detail=True, methods=["post"])
    def promote(self, request, pk=None):
        _require_admin(request)
        version = promote(version=self.get_object(), user=request.user)
        return Response(ModelVersionSerializer(version).data)

    @extend_schema(request=RollbackSerializer, responses=ModelVersionSerializer)
    @action(detail=False, methods=["post"])
    def rollback(self, request):
        _require_admin(request)
        body = RollbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        version = rollback(stage=body.validated_data["stage"], user=request.user)
        if version is None:
            return Response({"detail": "no earlier promoted version to roll back to"}, status=status.HTTP_409_CONFLICT)
        return Response(ModelVersionSerializer(version).data)


# ---- pages ------------------------------------------------------------------------------------


def _page_roles(request: HttpRequest) -> None:
    if not has_role(request.user, Role.PATHOLOGIST, Role.LAB_LEAD, Role.ADMIN):
        raise DjangoPermissionDenied("No role in NodeScope.")


@login_required
def models_page(request: HttpRequest) -> HttpResponse:
    _page_roles(request)
    return render(
        request,
        "inference/models.html",
        {
            "runs": TrainingRun.objects.select_related("created_by", "model_version").order_by("-id")[:50],
            "versions": ModelVersion.objects.order_by("-id")[:50],
            "live": ModelVersion.objects.filter(is_live=True),
            "is_admin": has_role(request.user, Role.ADMIN),
        },
    )


@login_required
def model_version_page(request: HttpRequest, pk: int) -> HttpResponse:
    _page_roles(request)
    version = get_object_or_404(ModelVersion.objects.select_related("training_run"), pk=pk)
    return render(
        request,
        "inference/model_version.html",
        {
            "version": version,
            "roc_svg": plots.roc_svg(version.roc, auc=version.val_auc),
            "curves_svg": plots.curves_svg(version.curves),
            "is_admin": has_role(request.user, Role.ADMIN),
        },
    )
