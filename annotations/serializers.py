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


class _OutlineGeometryField(serializers.JSONField):
    """The outline sent for a row (context `outlines`: pk → `services.Outline`), not its stored
    geometry, which the zoomed-out list does not load."""

    def get_attribute(self, instance: Annotation):
        return self.context["outlines"][instance.pk].geometry


class _OutlineSimplifiedField(serializers.BooleanField):
    def get_attribute(self, instance: Annotation) -> bool:
        return self.context["outlines"][instance.pk].simplified


class ViewportAnnotationSerializer(AnnotationSerializer):
    """An annotation as the viewport list gives it with `?simplify=`: the rows come without their
    stored geometry (deferred), and context `outlines` (pk → `services.Outline`) gives what to
    send instead, an outline simplified for a zoomed-out view (`simplified: true`) or the stored
    one; `vertex_count` is still that of the stored outline, and `repaired_on_import` comes from
    the row's `repaired` annotation (`source_geometry` is deferred too)."""

    geometry = _OutlineGeometryField(read_only=True)
    simplified = _OutlineSimplifiedField(
        required=False,  # sent only with ?simplify= (the list without it has no such field)
        help_text="Only with ?simplify=: the geometry is simplified for drawing (not for editing)",
    )

    class Meta(AnnotationSerializer.Meta):
        fields = [*AnnotationSerializer.Meta.fields, "simplified"]

    def get_repaired_on_import(self, obj: Annotation) -> bool:
        return bool(obj.repaired)


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
