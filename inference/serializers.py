"""REST representations of training runs and model versions (weights paths are admin-only)."""

from __future__ import annotations

from rest_framework import serializers

from .records import ModelVersion, Stage, TrainingRun


class TrainingRunSerializer(serializers.ModelSerializer):
    model_version = serializers.PrimaryKeyRelatedField(read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = TrainingRun
        fields = [
            "id", "created_by", "created_at", "dataset_source", "architecture", "stage", "recipe", "status",
            "status_reason", "progress", "cancel_requested", "attempts", "started_at", "finished_at",
            "model_version",
        ]
        read_only_fields = fields


class LaunchTrainingSerializer(serializers.Serializer):
    dataset_source = serializers.JSONField(help_text='{"kind": "image-folder"|"arrays"|"snapshot", ...}')
    architecture = serializers.ChoiceField(choices=["mobilenetv2", "resnet18"], default="mobilenetv2")
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
    promoted_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "id", "name", "architecture", "stage", "training_run", "weights_sha256", "dataset_hash",
            "dataset_summary", "hyperparameters", "code_version", "classes", "val_accuracy", "val_auc", "roc",
            "curves", "device", "training_seconds", "is_live", "promoted_at", "promoted_by", "created_at",
        ]
        read_only_fields = fields


class RollbackSerializer(serializers.Serializer):
    stage = serializers.ChoiceField(choices=Stage.choices, default=Stage.PRIMARY)
