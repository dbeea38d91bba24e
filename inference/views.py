"""Training runs and model versions: REST API (admins launch and cancel their runs; platform
operators promote, roll back and cancel any run: slides.access.may_promote_models) and pages."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations.datasets import datasets_for
from annotations.models import Dataset
from audit.log import record
from config.pagination import MAX_OFFSET, BoundedLimitOffsetPagination
from config.params import BadParameter, int_param, parse_int
from slides.access import PROMOTERS, has_role, may_promote_models, nodes_for
from slides.models import Role

from . import plots
from .changes import (
    DIRECTIONS,
    ComparisonError,
    RunComparison,
    compare_runs,
    previous_completed_run,
)
from .image_classifier import MODALITIES
from .jobs import (
    PromotionRefused,
    TrainingRequestError,
    launch_training,
    promote,
    promotion_blocker,
    rollback,
    slides_to_rescore,
)
from .models.registry import MODEL_NAMES
from .records import ModelVersion, ScoringRun, TrainingRun
from .serializers import (
    LaunchTrainingSerializer,
    ModelVersionSerializer,
    RollbackSerializer,
    TrainingRunSerializer,
    without_server_paths,
)
from .training import TrainingRecipe


def _require_admin(request) -> None:
    if not has_role(request.user, Role.ADMIN):
        raise PermissionDenied("Only admins launch, cancel or promote models.")


def _require_promoter(request) -> None:
    """The live models are platform-wide: changing them is for platform operators."""
    _require_admin(request)
    if not may_promote_models(request.user):
        raise PermissionDenied(
            "The live model is the same for every lab: only "
            + PROMOTERS
            + " promote, roll back or change it."
        )


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
            raise ValidationError({"detail": str(exc), "field": exc.field or ""}) from exc
        return Response(
            TrainingRunSerializer(run, context={"request": request}).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(request=None, responses=TrainingRunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None, format=None):  # noqa: A002 - DRF's `.json` suffix
        _require_admin(request)
        run = self.get_object()
        if run.created_by_id != request.user.pk and not may_promote_models(request.user):
            raise PermissionDenied(
                "Admins cancel the runs they launched; other runs only " + PROMOTERS + "."
            )
        if run.is_finished:
            return Response(
                {"detail": f"run {run.pk} already {run.status}"}, status=status.HTTP_409_CONFLICT
            )
        run.request_cancel()
        record(actor=request.user, action="training cancelled", obj=run)
        return Response(TrainingRunSerializer(run, context={"request": request}).data)


class ModelVersionViewSet(viewsets.ReadOnlyModelViewSet):
    """Model versions; every role sees which is live; platform operators promote and roll back."""

    serializer_class = ModelVersionSerializer

    def get_queryset(self):
        _require_any_role(self.request)
        return ModelVersion.objects.select_related("promoted_by").order_by("-id")

    @extend_schema(request=None, responses=ModelVersionSerializer)
    @action(detail=True, methods=["post"])
    def promote(self, request, pk=None, format=None):  # noqa: A002 - DRF's `.json` suffix
        _require_promoter(request)
        try:
            version = promote(version=self.get_object(), user=request.user)
        except PromotionRefused as exc:
            return Response(
                {"detail": str(exc), "code": "cannot_promote"}, status=status.HTTP_409_CONFLICT
            )
        return Response(ModelVersionSerializer(version).data)

    @extend_schema(request=RollbackSerializer, responses=ModelVersionSerializer)
    @action(detail=False, methods=["post"])
    def rollback(self, request, format=None):  # noqa: A002 - DRF's `.json` suffix
        _require_promoter(request)
        body = RollbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            version = rollback(stage=body.validated_data["stage"], user=request.user)
        except PromotionRefused as exc:
            return Response(
                {"detail": f"cannot roll back: {exc}", "code": "cannot_promote"},
                status=status.HTTP_409_CONFLICT,
            )
        if version is None:
            return Response(
                {"detail": "no earlier promoted version to roll back to"},
                status=status.HTTP_409_CONFLICT,
            )
        return Response(ModelVersionSerializer(version).data)


# ---- pages ------------------------------------------------------------------------------------


def _page_roles(request: HttpRequest) -> None:
    if not has_role(request.user, Role.PATHOLOGIST, Role.LAB_LEAD, Role.ADMIN):
        raise DjangoPermissionDenied("No role in NodeScope.")


@login_required
def models_page(request: HttpRequest) -> HttpResponse:
    _page_roles(request)
    is_admin = has_role(request.user, Role.ADMIN)
    runs = list(
        TrainingRun.objects.select_related("created_by", "model_version").order_by("-id")[:50]
    )
    if not is_admin:  # failure reasons can name server paths: admins only (in memory, not saved)
        for run in runs:
            run.status_reason = without_server_paths(run.status_reason)
    return render(
        request,
        "inference/models.html",
        {
            "runs": runs,
            "versions": [
                (v, promotion_blocker(v)) for v in ModelVersion.objects.order_by("-id")[:50]
            ],
            "live": ModelVersion.objects.filter(is_live=True),
            "slides_to_rescore": slides_to_rescore(),
            "scoring_runs": ScoringRun.objects.select_related(
                "model_version", "secondary_version"
            ).order_by("-created_at", "-id")[:20],
            "snapshots": datasets_for(request.user)
            .filter(status=Dataset.Status.READY)
            .order_by("-id")[:100],
            "architectures": MODEL_NAMES,
            "primaries": _start_from_choices(),
            "modalities": MODALITIES,
            "recipe": TrainingRecipe(),
            "is_admin": has_role(request.user, Role.ADMIN),
            "may_promote": may_promote_models(request.user),
            "promoters": PROMOTERS,
            "user_id": request.user.pk,
        },
    )


def _start_from_choices() -> list[ModelVersion]:
    """Primary patch models a new run may start from (fine-tune), with their network settings."""
    versions = [
        v
        for v in ModelVersion.objects.filter(stage="primary").order_by("-id")[:50]
        if (v.dataset_summary or {}).get("kind") != "node-images"
    ]
    for v in versions:
        v.model_kwargs_json = json.dumps((v.hyperparameters or {}).get("model_kwargs") or {})
    return versions


@login_required
def model_version_page(request: HttpRequest, pk: int) -> HttpResponse:
    _page_roles(request)
    version = get_object_or_404(ModelVersion.objects.select_related("training_run"), pk=pk)
    if not has_role(request.user, Role.ADMIN):  # server paths: admins only (in memory, not saved)
        version.hyperparameters = without_server_paths(version.hyperparameters)
        version.dataset_summary = without_server_paths(version.dataset_summary)
        version.training_run.status_reason = without_server_paths(
            version.training_run.status_reason
        )
    return render(
        request,
        "inference/model_version.html",
        {
            "version": version,
            "roc_svg": plots.roc_svg(version.roc, auc=version.val_auc),
            "curves_svg": plots.curves_svg(version.curves),
            "scoring_runs": ScoringRun.objects.filter(
                Q(model_version=version) | Q(secondary_version=version)
            )
            .select_related("model_version", "secondary_version")
            .order_by("-created_at", "-id")[:20],
            "is_admin": has_role(request.user, Role.ADMIN),
            "may_promote": may_promote_models(request.user),
            "promoters": PROMOTERS,
            "promotion_blocker": promotion_blocker(version),
            "slides_to_rescore": slides_to_rescore(),
            "calibrates": version.stage == "primary"
            and (version.dataset_summary or {}).get("kind") != "node-images",
            "slide_level": _slide_level(version),
            "image_evidence": _image_evidence(version),
        },
    )


def _image_evidence(version: ModelVersion) -> dict | None:
    """AUROC [CI] and the operating point of a whole-image node classifier (else None)."""
    from .image_classifier import evidence_summary

    return evidence_summary(version)


def _slide_level(version: ModelVersion) -> dict | None:
    """The stored slide-level comparison (inference.slide_level), without per-slide detail."""
    from .slide_level import load_result

    result = load_result(version)
    if result is not None:
        result.pop("probabilities", None)
        result.pop("slide_ids", None)
    return result


# ---- what changed between scoring runs ----------------------------------------------------------

CHANGES_PAGE_SIZE = 200


def _run_summary(run: ScoringRun | None) -> dict | None:
    if run is None:
        return None
    secondary = run.secondary_version
    return {
        "id": run.pk,
        "model_version": {"id": run.model_version_id, "name": run.model_version.name},
        "secondary_version": {"id": secondary.pk, "name": secondary.name} if secondary else None,
        "threshold": run.threshold,
        "status": run.status,
        "trigger": run.trigger,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def _scoring_run(pk: int) -> ScoringRun:
    return get_object_or_404(
        ScoringRun.objects.select_related("model_version", "secondary_version"), pk=pk
    )


def comparison_for(user, run: ScoringRun, params) -> tuple[RunComparison, str | None]:
    """Parse ``against``, ``threshold`` and ``direction`` from a query and compare ``run`` over the
    nodes ``user`` may see. Returns the comparison and how the earlier run was chosen ("requested",
    "previous completed run", or None when there is none). Bad parameters raise a DRF
    ValidationError naming each one."""
    errors: dict[str, str] = {}
    against: ScoringRun | None = None
    source: str | None = None
    raw = (params.get("against") or "").strip()
    if raw:
        try:
            pk = parse_int(raw, "against", maximum=None)
        except BadParameter:
            errors["against"] = f"must be the id of a scoring run, not {raw!r}"
        else:
            if pk == run.pk:
                errors["against"] = f"scoring run {run.pk} cannot be compared with itself"
            elif not 0 < pk < 2**63:  # no database integer overflow
                errors["against"] = f"there is no scoring run {pk}"
            else:
                against = (
                    ScoringRun.objects.select_related("model_version", "secondary_version")
                    .filter(pk=pk)
                    .first()
                )
                if against is None:
                    errors["against"] = f"there is no scoring run {pk}"
                source = "requested"
    threshold: float | None = None
    raw = (params.get("threshold") or "").strip()
    if raw:
        try:
            threshold = float(raw)
        except ValueError:
            threshold = float("nan")
        if not 0 < threshold <= 1:  # also refuses nan
            errors["threshold"] = f"must be a number in (0, 1], not {raw!r}"
    direction = (params.get("direction") or "").strip() or None
    if direction is not None and direction not in DIRECTIONS:
        errors["direction"] = f"must be one of {', '.join(DIRECTIONS)}, not {direction!r}"
    if errors:
        raise ValidationError({name: [message] for name, message in errors.items()})
    if source is None:
        against = previous_completed_run(run)
        source = "previous completed run" if against is not None else None
    try:
        comparison = compare_runs(
            run=run,
            against=against,
            nodes=nodes_for(user),
            threshold=threshold,
            direction=direction,  # type: ignore[arg-type]
        )
    except ComparisonError as exc:  # pragma: no cover - the checks above come first
        raise ValidationError({"detail": str(exc)}) from exc
    return comparison, source


class ScoringRunProgressView(APIView):
    """A scoring run's state and progress (slides done, failed, total; the fraction including
    slides being scanned): what the pages poll to show a run moving without a reload. Platform-
    wide like the runs themselves, so without the per-slide detail (slides of other labs)."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request, pk: int):
        from .rescoring import progress_of

        _require_any_role(request)
        run = get_object_or_404(ScoringRun, pk=pk)
        body = progress_of(run)
        body.pop("slides", None)
        return Response(body)


class ScoringRunChangesView(APIView):
    """Nodes of your labs whose screening result flipped between a scoring run and an earlier one
    (by default the previous completed run over the same nodes), with counts."""

    pagination_class = BoundedLimitOffsetPagination

    @extend_schema(
        parameters=[
            OpenApiParameter("against", int, description="the run to compare with"),
            OpenApiParameter("threshold", float, description="one threshold for both runs"),
            OpenApiParameter("direction", str, enum=list(DIRECTIONS)),
            OpenApiParameter("limit", int),
            OpenApiParameter("offset", int),
        ],
        responses={200: dict},
    )
    def get(self, request: Request, pk: int) -> Response:
        _require_any_role(request)
        run = _scoring_run(pk)
        comparison, source = comparison_for(request.user, run, request.query_params)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(comparison.changes, request, view=self) or []
        body = {
            "run": _run_summary(run),
            "against": _run_summary(comparison.against),
            "against_source": source,
            "threshold": comparison.threshold,
            "counts": comparison.counts(),
            "count": len(comparison.changes),
            "next": paginator.get_next_link(),
            "previous": paginator.get_previous_link(),
            "results": [change.to_dict() for change in page],
        }
        if comparison.against is None:
            body["detail"] = (
                "no earlier completed scoring run scored these nodes; nothing to compare"
            )
        return Response(body)


@login_required
def scoring_run_changes_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The "what changed" page of a scoring run."""
    _page_roles(request)
    run = _scoring_run(pk)
    errors: dict = {}
    comparison, source = None, None
    try:
        comparison, source = comparison_for(request.user, run, request.GET)
    except ValidationError as exc:
        errors = exc.detail  # type: ignore[assignment]
    offset = int_param(request, "offset", default=0, minimum=0, maximum=MAX_OFFSET, clamp=True)
    changes = comparison.changes if comparison else []
    query = request.GET.copy()
    query.pop("offset", None)
    context = {
        "run": run,
        "comparison": comparison,
        "against_source": source,
        "errors": errors,
        "changes": changes[offset : offset + CHANGES_PAGE_SIZE],
        "total": len(changes),
        "offset": offset,
        "shown_to": min(offset + CHANGES_PAGE_SIZE, len(changes)),
        "next_offset": offset + CHANGES_PAGE_SIZE
        if offset + CHANGES_PAGE_SIZE < len(changes)
        else None,
        "prev_offset": max(0, offset - CHANGES_PAGE_SIZE) if offset else None,
        "query": query.urlencode(),
        "choices": ScoringRun.objects.exclude(pk=run.pk)
        .select_related("model_version")
        .order_by("-created_at", "-id")[:50],
        "params": {k: request.GET.get(k, "") for k in ("against", "threshold", "direction")},
        "directions": DIRECTIONS,
    }
    return render(
        request, "inference/scoring_run_changes.html", context, status=400 if errors else 200
    )
