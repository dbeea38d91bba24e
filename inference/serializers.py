"""REST representations of training runs and model versions (weights paths are admin-only)."""

from __future__ import annotations

import re

from rest_framework import serializers

from slides.access import has_role
from slides.models import Role

from .records import ModelVersion, Stage, TrainingRun


class TrainingRunSerializer(serializers.ModelSerializer):
    model_version = serializers.PrimaryKeyRelatedField(read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "created_by",
            "created_at",
            "dataset_source",
            "architecture",
            "stage",
            "recipe",
            "status",
            "status_reason",
            "progress",
            "cancel_requested",
            "attempts",
            "started_at",
            "finished_at",
            "model_version",
        ]
        read_only_fields = fields

    def to_representation(self, instance: TrainingRun) -> dict:
        """Server paths (the training folder, files named in a failure) are shown to admins only."""
        data = super().to_representation(instance)
        request = self.context.get("request")
        if request is None or not has_role(request.user, Role.ADMIN):
            source = data.get("dataset_source")
            if isinstance(source, dict):
                data["dataset_source"] = {k: v for k, v in source.items() if not _is_path_key(k)}
            data["status_reason"] = ABSOLUTE_PATH.sub(
                "<server path>", data.get("status_reason") or ""
            )
        return data


# An absolute POSIX path inside a message ("cannot read /srv/data/x.png: ...").
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"]+/)*[^\s/'\":,;]+")


def _is_path_key(key: str) -> bool:
    return key in {"path", "csv", "root", "folder", "file"} or key.endswith(
        ("_path", "_dir", "_file", "_weights")
    )


def without_server_paths(value):
    """``value`` (JSON-like) with path-named keys dropped and absolute paths in strings masked:
    what non-admins may see of a recipe, a dataset source or a failure reason."""
    if isinstance(value, dict):
        return {k: without_server_paths(v) for k, v in value.items() if not _is_path_key(str(k))}
    if isinstance(value, list):
        return [without_server_paths(v) for v in value]
    if isinstance(value, str):
        return ABSOLUTE_PATH.sub("<server path>", value)
    return value


class LaunchTrainingSerializer(serializers.Serializer):
    dataset_source = serializers.JSONField(
        help_text='{"kind": "image-folder"|"arrays"|"snapshot"|"node-images", ...}'
    )
    architecture = serializers.ChoiceField(
        choices=[
            "mobilenetv2",
            "resnet18",
            "resnet50",
            "inception-v3",
            "resnet-small",
            "gated-attention-mil",
        ],
        default="mobilenetv2",
    )
    stage = serializers.ChoiceField(choices=Stage.choices, default=Stage.PRIMARY)
    recipe = serializers.JSONField(required=False, default=dict)

    def validate_dataset_source(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object with a kind")
        return value

    def validate_recipe(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object of recipe fields")
        return value


class ModelVersionSerializer(serializers.ModelSerializer):
    def to_representation(self, instance: ModelVersion) -> dict:
        """Server paths (e.g. the weights a secondary started from) are shown to admins only."""
        data = super().to_representation(instance)
        request = self.context.get("request")
        if request is None or not has_role(request.user, Role.ADMIN):
            for key in ("hyperparameters", "dataset_summary"):
                data[key] = without_server_paths(data.get(key))
        return data

    promoted_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "architecture",
            "stage",
            "training_run",
            "weights_sha256",
            "dataset_hash",
            "dataset_summary",
            "hyperparameters",
            "code_version",
            "classes",
            "val_accuracy",
            "val_auc",
            "roc",
            "curves",
            "device",
            "training_seconds",
            "is_live",
            "promoted_at",
            "promoted_by",
            "created_at",
        ]
        read_only_fields = fields


class RollbackSerializer(serializers.Serializer):
    stage = serializers.ChoiceField(choices=Stage.choices, default=Stage.PRIMARY)
