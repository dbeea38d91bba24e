"""REST representations of cases, nodes and slides. File paths and associated images are admin-only."""

from __future__ import annotations

from django.urls import reverse
from rest_framework import serializers

from .access import has_role
from .models import Case, Node, Role, Slide


class SlideSerializer(serializers.ModelSerializer):
    mpp = serializers.FloatField(read_only=True)
    tilesource_url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()

    class Meta:
        model = Slide
        fields = [
            "id",
            "node",
            "name",
            "source",
            "vendor",
            "checksum",
            "file_size",
            "width",
            "height",
            "levels",
            "tile_width",
            "tile_height",
            "mpp",
            "mpp_x",
            "mpp_y",
            "magnification",
            "synthetic",
            "modality",
            "window_center",
            "window_width",
            "imported_at",
            "tilesource_url",
            "thumbnail_url",
            "file_path",
            "associated_images",
        ]
        read_only_fields = fields

    def get_tilesource_url(self, obj: Slide) -> str:
        return reverse("slide-tilesource", args=[obj.pk])

    def get_thumbnail_url(self, obj: Slide) -> str:
        return reverse("slide-thumbnail", args=[obj.pk])

    def to_representation(self, instance: Slide) -> dict:
        data = super().to_representation(instance)
        request = self.context.get("request")
        if request is None or not has_role(request.user, Role.ADMIN):
            # File locations and label/macro images can identify patients.
            data.pop("file_path", None)
            data.pop("associated_images", None)
        return data


class NodeSerializer(serializers.ModelSerializer):
    slides = SlideSerializer(many=True, read_only=True)

    class Meta:
        model = Node
        fields = ["id", "case", "label", "ground_truth", "created_at", "slides"]
        read_only_fields = ["id", "created_at", "slides"]


class CaseSerializer(serializers.ModelSerializer):
    lab = serializers.SlugRelatedField(slug_field="code", read_only=True)
    node_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Case
        fields = [
            "id",
            "lab",
            "accession_number",
            "patient_pseudonym",
            "status",
            "project_type",
            "created_at",
            "node_count",
        ]
        read_only_fields = fields


class SlideUploadSerializer(serializers.Serializer):
    """An upload: a whole slide by default, or a node image with `modality` ct, ultrasound or
    image (and, optionally, its default display window)."""

    node = serializers.IntegerField()
    file = serializers.FileField()
    name = serializers.CharField(required=False, max_length=255)
    modality = serializers.ChoiceField(choices=Slide.Modality.choices, required=False)
    window_center = serializers.FloatField(required=False)
    window_width = serializers.FloatField(required=False, min_value=0.001)

    def validate(self, attrs: dict) -> dict:
        windowed = ("window_center" in attrs) + ("window_width" in attrs)
        if windowed == 1:
            raise serializers.ValidationError(
                {"window_width": ["give both window_center and window_width, or neither"]}
            )
        if windowed and attrs.get("modality", Slide.Modality.SLIDE) == Slide.Modality.SLIDE:
            raise serializers.ValidationError(
                {
                    "modality": [
                        "a display window needs a node image modality (ct, ultrasound, image)"
                    ]
                }
            )
        return attrs
