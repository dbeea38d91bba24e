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
    node = serializers.IntegerField()
    file = serializers.FileField()
    name = serializers.CharField(required=False, max_length=255)
