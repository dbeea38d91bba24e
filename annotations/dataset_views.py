"""Dataset snapshots through the API and the Datasets page: list, detail, preview and create.

Lab-scoped: a user sees the snapshots whose slides are all slides they may see; lab leads and
admins read them, admins create them. Creating goes through `annotations.datasets.create_snapshot`
(the same path as `manage.py make_dataset`); with ``preview`` nothing is written and the answer
shows the class counts and which cases go to which side, or the reason it cannot be made.
"""

from __future__ import annotations

from django.apps import apps
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from config.pagination import BoundedLimitOffsetPagination
from slides.access import has_role, slides_for
from slides.models import Lab, Role, Slide
from slides.project_types import ProjectType, defaults_for

from .datasets import DatasetError, create_snapshot, datasets_for, default_snapshot_slides
from .models import Dataset


def models_trained_on(dataset_ids: list[int]) -> dict[int, list[dict]]:
    """{dataset id: [{id, name, is_live}]} of the model versions trained on each snapshot."""
    version_model = apps.get_model("inference", "ModelVersion")
    out: dict[int, list[dict]] = {}
    rows = version_model.objects.filter(
        training_run__dataset_source__kind="snapshot",
        training_run__dataset_source__id__in=dataset_ids,
    ).values("id", "name", "is_live", "training_run__dataset_source")
    for row in rows:
        source = row.pop("training_run__dataset_source")
        out.setdefault(int(source["id"]), []).append(row)
    return out


class DatasetSerializer(serializers.ModelSerializer):
    created_by = serializers.SerializerMethodField()
    models = serializers.SerializerMethodField()
    train_cases = serializers.SerializerMethodField()
    val_cases = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "status",
            "status_reason",
            "progress",
            "extracted_patches",
            "total_patches",
            "patch_px",
            "target_mpp",
            "stride_px",
            "val_fraction",
            "seed",
            "max_per_class",
            "balanced",
            "class_counts",
            "training_classes",
            "train_cases",
            "val_cases",
            "content_hash",
            "created_by",
            "created_at",
            "models",
        ]

    def get_created_by(self, obj: Dataset) -> str:
        return obj.created_by.username if obj.created_by_id else ""

    def get_models(self, obj: Dataset) -> list[dict]:
        trained = self.context.get("models")
        if trained is None:
            trained = models_trained_on([obj.pk])
        return trained.get(obj.pk, [])

    def get_train_cases(self, obj: Dataset) -> list[dict]:
        return obj.split_cases("train")

    def get_val_cases(self, obj: Dataset) -> list[dict]:
        return obj.split_cases("val")


class DatasetCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120)
    lab = serializers.SlugField(
        required=False, help_text="lab code (default: your only lab)", max_length=40
    )
    slides = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**31 - 1),
        required=False,
        allow_empty=False,
        max_length=5000,
        help_text="slide ids (default: every whole slide of the lab with tumour annotations, "
        "plus the slides of nodes whose ground truth is negative)",
    )
    cases = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**31 - 1),
        required=False,
        allow_empty=False,
        max_length=5000,
        help_text="case ids: their whole slides, narrowed to the default choice",
    )
    project_type = serializers.ChoiceField(
        choices=ProjectType.choices,
        required=False,
        help_text="grid preset: lymph node 40 px at 1.0 µm/px; biopsy 256 px at 0.5 µm/px",
    )
    patch_px = serializers.IntegerField(min_value=8, max_value=1024, required=False)
    target_mpp = serializers.FloatField(min_value=0.1, max_value=16.0, required=False)
    val_fraction = serializers.FloatField(min_value=0.05, max_value=0.95, default=0.3)
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0)
    max_per_class = serializers.IntegerField(
        min_value=1, max_value=10_000_000, required=False, allow_null=True
    )
    balanced = serializers.BooleanField(default=False)
    preview = serializers.BooleanField(
        default=False, help_text="answer what would be made, write nothing"
    )


def _lab(user, code: str | None) -> Lab:
    labs = Lab.objects.all() if user.is_superuser else Lab.objects.filter(members=user)
    if code:
        lab = labs.filter(code=code).first()
        if lab is None:
            raise serializers.ValidationError({"lab": [f"you are not a member of a lab {code!r}"]})
        return lab
    mine = list(labs[:2])
    if len(mine) != 1:
        raise serializers.ValidationError({"lab": ["choose the lab (you belong to several)"]})
    return mine[0]


def _chosen_slides(user, lab: Lab, data: dict) -> list[int]:
    visible = slides_for(user).filter(node__case__lab=lab, modality=Slide.Modality.SLIDE)
    if data.get("slides"):
        wanted = set(data["slides"])
        found = set(visible.filter(pk__in=wanted).values_list("pk", flat=True))
        if wanted - found:
            raise serializers.ValidationError(
                {"slides": [f"no whole slides {sorted(wanted - found)} in lab {lab.code}"]}
            )
        return sorted(found)
    chosen = default_snapshot_slides(visible)
    if data.get("cases"):
        chosen = chosen.filter(node__case_id__in=data["cases"])
    ids = sorted(chosen.values_list("pk", flat=True))
    if not ids:
        raise serializers.ValidationError(
            {
                "slides": [
                    f"lab {lab.code} has no whole slide with tumour annotations or of a node "
                    "whose ground truth is negative"
                    + (" among these cases" if data.get("cases") else "")
                    + "; draw tumour outlines first"
                ]
            }
        )
    return ids


def _preview_body(dataset: Dataset, slide_ids: list[int], lab: Lab) -> dict:
    return {
        "preview": True,
        "name": dataset.name,
        "lab": lab.code,
        "slides": slide_ids,
        "patch_px": dataset.patch_px,
        "target_mpp": dataset.target_mpp,
        "total_patches": dataset.total_patches,
        "class_counts": dataset.class_counts,
        "training_classes": dataset.training_classes,
        "split": {
            side: {
                "cases": dataset.split_cases(side),
                "patches": dataset.split.get(side, {}).get("patches", 0),
                "counts": dataset.split.get(side, {}).get("counts", {}),
                "training_counts": dataset.split.get(side, {}).get("training_counts", {}),
            }
            for side in ("train", "val")
        },
    }


class DatasetListView(APIView):
    """Snapshots you may see (GET, newest first); preview or create one (POST, admins)."""

    pagination_class = BoundedLimitOffsetPagination

    @extend_schema(responses=DatasetSerializer(many=True))
    def get(self, request):
        if not has_role(request.user, Role.LAB_LEAD):
            raise PermissionDenied("Lab leads and admins see dataset snapshots.")
        queryset = datasets_for(request.user).select_related("created_by").order_by("-id")
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(queryset, request, view=self)
        trained = models_trained_on([d.pk for d in page])
        data = DatasetSerializer(page, many=True, context={"models": trained}).data
        return paginator.get_paginated_response(data)

    @extend_schema(request=DatasetCreateSerializer, responses={201: DatasetSerializer})
    def post(self, request):
        if not has_role(request.user, Role.ADMIN):
            raise PermissionDenied("Only admins create dataset snapshots.")
        form = DatasetCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        lab = _lab(request.user, data.get("lab"))
        slide_ids = _chosen_slides(request.user, lab, data)
        grid = {}
        if data.get("project_type"):
            preset = defaults_for(ProjectType(data["project_type"]))
            grid = {"patch_px": preset.patch_px, "target_mpp": preset.target_mpp}
        for key in ("patch_px", "target_mpp"):
            if data.get(key) is not None:
                grid[key] = data[key]
        try:
            dataset = create_snapshot(
                name=data["name"],
                slides=slide_ids,
                val_fraction=data["val_fraction"],
                seed=data["seed"],
                max_per_class=data.get("max_per_class"),
                balanced=data["balanced"],
                user=request.user,
                dry_run=data["preview"],
                **grid,
            )
        except DatasetError as exc:
            return Response({"detail": str(exc), "code": "dataset"}, status=400)
        if data["preview"]:
            return Response(_preview_body(dataset, slide_ids, lab))
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailView(APIView):
    @extend_schema(responses=DatasetSerializer)
    def get(self, request, pk: int):
        if not has_role(request.user, Role.LAB_LEAD):
            raise PermissionDenied("Lab leads and admins see dataset snapshots.")
        dataset = get_object_or_404(datasets_for(request.user), pk=pk)
        return Response(DatasetSerializer(dataset).data)


@login_required
def datasets_page(request: HttpRequest) -> HttpResponse:
    """The Datasets page: snapshots with live extraction progress; admins create new ones."""
    if not has_role(request.user, Role.LAB_LEAD):
        raise DjangoPermissionDenied("Lab leads and admins see dataset snapshots.")
    labs = (
        Lab.objects.all() if request.user.is_superuser else Lab.objects.filter(members=request.user)
    )
    datasets = list(datasets_for(request.user).select_related("created_by").order_by("-id")[:100])
    trained = models_trained_on([d.pk for d in datasets])
    return render(
        request,
        "annotations/datasets.html",
        {
            "datasets": DatasetSerializer(datasets, many=True, context={"models": trained}).data,
            "is_admin": has_role(request.user, Role.ADMIN),
            "labs": labs.order_by("name"),
            "project_types": [
                (value, label, defaults_for(ProjectType(value)))
                for value, label in ProjectType.choices
            ],
        },
    )
