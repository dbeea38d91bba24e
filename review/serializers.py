"""Request bodies and query parameters of the review API, and the JSON of decisions and queues."""

from __future__ import annotations

import math

from rest_framework import serializers

from config.params import QueryIntegerField

from .models import CaseSignOff, FurtherWork, ReviewDecision, ReviewStatus, ViewedRegion
from .queues import QueueRow

MAX_ID = 2**63 - 1
TEXT_LIMIT = 5000


def _finite(value: float | None, name: str) -> None:
    if value is not None and not math.isfinite(value):
        raise serializers.ValidationError({name: "must be a finite number"})


# ---- request bodies -----------------------------------------------------------------------------


class DecisionInputSerializer(serializers.Serializer):
    status = serializers.CharField(
        max_length=40, help_text=f"one of: {', '.join(ReviewStatus.values)}"
    )
    based_on = serializers.IntegerField(
        allow_null=True,
        min_value=1,
        max_value=MAX_ID,
        help_text="id of the node's current decision as the client saw it (null: none)",
    )
    note = serializers.CharField(
        max_length=TEXT_LIMIT, allow_blank=True, required=False, default=""
    )
    further_work = serializers.CharField(
        max_length=40,
        allow_blank=True,
        required=False,
        default="",
        help_text=f"with needs_further_work: {', '.join(v for v in FurtherWork.values if v)}",
    )
    reason = serializers.CharField(
        max_length=TEXT_LIMIT,
        allow_blank=True,
        required=False,
        default="",
        help_text="required to amend a decision of a signed-off case (lab leads)",
    )


class ViewedRegionInputSerializer(serializers.Serializer):
    region = serializers.CharField(max_length=120, required=False, allow_blank=True, default="")
    x = serializers.FloatField(required=False, allow_null=True, default=None)
    y = serializers.FloatField(required=False, allow_null=True, default=None)
    slide = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=MAX_ID
    )
    viewport = serializers.ListField(
        child=serializers.FloatField(),
        min_length=4,
        max_length=4,
        required=False,
        allow_null=True,
        default=None,
        help_text="what the viewer showed: [x0, y0, x1, y1], level-0 px of the slide",
    )
    zoom = serializers.FloatField(
        required=False,
        allow_null=True,
        default=None,
        min_value=0,
        max_value=1000,
        help_text="screen px per level-0 px of that view",
    )

    def validate(self, attrs):
        _finite(attrs.get("x"), "x")
        _finite(attrs.get("y"), "y")
        _finite(attrs.get("zoom"), "zoom")
        if not attrs.get("region") and (attrs.get("x") is None or attrs.get("y") is None):
            raise serializers.ValidationError(
                "give a region key, or a centre x and y (level-0 pixels)"
            )
        view = attrs.get("viewport")
        if view is not None:
            if not all(math.isfinite(v) for v in view):
                raise serializers.ValidationError({"viewport": "must be four finite numbers"})
            if view[0] >= view[2] or view[1] >= view[3]:
                raise serializers.ValidationError(
                    {"viewport": "must be [x0, y0, x1, y1], x0 < x1, y0 < y1"}
                )
            attrs["viewport"] = tuple(view)
        if (view is None) != (attrs.get("zoom") is None):
            raise serializers.ValidationError("give the viewport and the zoom together")
        return attrs


class CorrectionInputSerializer(serializers.Serializer):
    label_class = serializers.CharField(max_length=80, help_text="a hard-negative class key")
    region = serializers.CharField(max_length=120, required=False, allow_blank=True, default="")
    geometry = serializers.JSONField(
        required=False, default=None, help_text="GeoJSON polygon, level-0 px"
    )
    slide = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=MAX_ID
    )
    size_px = serializers.FloatField(
        required=False, allow_null=True, default=None, min_value=8, max_value=8192
    )
    note = serializers.CharField(
        max_length=TEXT_LIMIT, allow_blank=True, required=False, default=""
    )

    def validate(self, attrs):
        _finite(attrs.get("size_px"), "size_px")
        if not attrs.get("region") and attrs.get("geometry") is None:
            raise serializers.ValidationError(
                "give a region key, or a polygon (geometry and slide)"
            )
        if attrs.get("geometry") is not None and not isinstance(attrs["geometry"], dict):
            raise serializers.ValidationError({"geometry": "must be a GeoJSON object"})
        return attrs


class SignOffInputSerializer(serializers.Serializer):
    note = serializers.CharField(
        max_length=TEXT_LIMIT, allow_blank=True, required=False, default=""
    )


class ReopenInputSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=TEXT_LIMIT)


class LabSettingsInputSerializer(serializers.Serializer):
    require_region_views = serializers.BooleanField()
    reason = serializers.CharField(
        max_length=TEXT_LIMIT, allow_blank=True, required=False, default=""
    )


class TriageQuerySerializer(serializers.Serializer):
    lab = serializers.CharField(
        max_length=40, required=False, allow_blank=True, help_text="lab id or code"
    )
    date_from = serializers.DateField(
        required=False, allow_null=True, help_text="cases created on or after"
    )
    date_to = serializers.DateField(
        required=False, allow_null=True, help_text="cases created on or before"
    )
    model_version = QueryIntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_ID,
        help_text="model version whose scores screen (default: the live primary)",
    )
    status = serializers.ChoiceField(
        choices=["any", *ReviewStatus.values],
        required=False,
        default=ReviewStatus.UNREVIEWED,
        help_text="current status of the nodes listed (default unreviewed)",
    )

    def validate(self, attrs):
        if (
            attrs.get("date_from")
            and attrs.get("date_to")
            and attrs["date_from"] > attrs["date_to"]
        ):
            raise serializers.ValidationError({"date_to": "must not be before date_from"})
        return attrs


class MetricsQuerySerializer(serializers.Serializer):
    lab = serializers.CharField(
        max_length=40, required=False, allow_blank=True, help_text="lab id or code"
    )
    bootstrap = QueryIntegerField(required=False, min_value=0, max_value=5000, default=1000)
    seed = QueryIntegerField(required=False, min_value=0, max_value=2**32 - 1, default=20261122)


class ExportQuerySerializer(serializers.Serializer):
    lab = serializers.CharField(
        max_length=40, required=False, allow_blank=True, help_text="lab id or code"
    )
    date_from = serializers.DateField(
        required=False, allow_null=True, help_text="decisions made on or after"
    )
    date_to = serializers.DateField(
        required=False, allow_null=True, help_text="decisions made on or before"
    )


# ---- responses ----------------------------------------------------------------------------------


class DecisionSerializer(serializers.ModelSerializer):
    based_on = serializers.IntegerField(source="previous_id", allow_null=True)
    user = serializers.CharField(source="user_name")
    status_display = serializers.CharField(source="get_status_display")
    model_version_name = serializers.CharField(source="model_version.name", default=None)

    class Meta:
        model = ReviewDecision
        fields = [
            "id",
            "node",
            "based_on",
            "status",
            "status_display",
            "further_work",
            "note",
            "user",
            "created_at",
            "model_version",
            "model_version_name",
            "node_score",
            "score",
            "threshold",
            "screened_positive",
            "regions",
            "region_rule",
            "amendment",
            "reason",
        ]


class ViewedRegionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ViewedRegion
        fields = [
            "id",
            "node",
            "region_key",
            "heatmap",
            "slide",
            "x",
            "y",
            "viewport",
            "zoom",
            "viewed_at",
        ]


class SignOffSerializer(serializers.ModelSerializer):
    class Meta:
        model = CaseSignOff
        fields = ["id", "case", "action", "user_name", "at", "reason", "decisions"]


def queue_row_json(row: QueueRow) -> dict:
    """One node of a queue as the API and the page's script see it."""
    slide = row.slide
    return {
        "id": row.node.pk,
        "label": row.node.label,
        "position": row.position,
        "case": row.node.case_id,
        "score": row.score.score if row.score else None,
        "score_id": row.score.pk if row.score else None,
        "threshold": row.threshold,
        "screened": row.screened,
        "slide": (
            {
                "id": slide.pk,
                "name": slide.name,
                "thumbnail_url": f"/api/slides/{slide.pk}/thumbnail.jpg?size=128",
            }
            if slide
            else None
        ),
        "viewer_url": row.viewer_url,
        "regions": [
            r.as_dict()
            | {"viewed": r.key in row.viewed, "viewer_url": r.viewer_url(node_id=row.node.pk)}
            for r in row.regions
        ],
        "regions_to_view": [r.key for r in row.unviewed_required],
        "status": row.status,
        "decision": DecisionSerializer(row.decision).data if row.decision else None,
    }
