"""REST representations of label classes, annotations and their history; input shapes for writes."""

from __future__ import annotations

from rest_framework import serializers

from .formats import FORMATS
from .geometry import REPAIR_METHODS
from .models import Annotation, AnnotationHistory, LabelClass


class LabelClassSerializer(serializers.ModelSerializer):
    class Meta:
        model = LabelClass
        fields = ["key", "name", "colour", "kind", "shortcut", "order"]
        read_only_fields = fields


class AnnotationSerializer(serializers.ModelSerializer):
    label_class = serializers.SlugRelatedField(slug_field="key", read_only=True)
    author = serializers.SlugRelatedField(slug_field="username", read_only=True)
    bbox = serializers.ListField(child=serializers.FloatField(), read_only=True)
    repaired_on_import = serializers.SerializerMethodField()

    class Meta:
        model = Annotation
        fields = [
            "id",
            "slide",
            "label_class",
            "author",
            "name",
            "geometry",
            "bbox",
            "vertex_count",
            "area_px",
            "version",
            "created_at",
            "updated_at",
            "deleted_at",
            "source_import",
            "repaired_on_import",
        ]
        read_only_fields = fields

    def get_repaired_on_import(self, obj: Annotation) -> bool:
        return obj.source_geometry is not None


class ViewportAnnotationSerializer(AnnotationSerializer):
    """An annotation as the viewport list gives it. With `?simplify=` (context `simplified`:
    pk → simplified outline) the geometry may be an outline simplified for a zoomed-out view,
    marked `simplified: true`, with `vertex_count` still that of the stored outline; without it,
    exactly `AnnotationSerializer`'s fields."""

    simplified = serializers.BooleanField(
        required=False,
        help_text="Only with ?simplify=: the geometry is simplified for drawing (not for editing)",
    )

    class Meta(AnnotationSerializer.Meta):
        fields = [*AnnotationSerializer.Meta.fields, "simplified"]

    def to_representation(self, instance: Annotation) -> dict:
        data = super().to_representation(instance)  # `simplified` is no attribute: left out
        outlines = self.context.get("simplified")
        if outlines is not None:
            outline = outlines.get(instance.pk)
            data["simplified"] = outline is not None
            if outline is not None:
                data["geometry"] = outline
        return data


class AnnotationCreateSerializer(serializers.Serializer):
    geometry = serializers.JSONField()
    label_class = serializers.CharField(max_length=80)
    name = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")


class AnnotationUpdateSerializer(serializers.Serializer):
    version = serializers.IntegerField(
        min_value=1, max_value=2**31 - 1, help_text="The version the client last saw"
    )
    geometry = serializers.JSONField(required=False)
    label_class = serializers.CharField(max_length=80, required=False)


class AnnotationHistorySerializer(serializers.ModelSerializer):
    user = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = AnnotationHistory
        fields = ["version", "action", "user", "at", "before", "after"]
        read_only_fields = fields


class AnnotationImportSerializer(serializers.Serializer):
    file = serializers.FileField()
    format = serializers.ChoiceField(choices=list(FORMATS), required=False)
    repair = serializers.ChoiceField(choices=["", *REPAIR_METHODS], required=False, default="")
    default_class = serializers.CharField(
        max_length=80, required=False, allow_blank=True, default=""
    )
