"""The admin action that trains a secondary model on the hard negatives of a primary."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from .jobs import TrainingRequestError
from .mining import DEFAULT_MAX_PER_CLASS, DEFAULT_STRIDE, launch_secondary_training
from .records import ModelVersion
from .serializers import TrainingRunSerializer
from .views import _require_admin


class TrainSecondarySerializer(serializers.Serializer):
    negative_slides = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        allow_empty=False,
        help_text="Slides to mine; default: every slide of a node known or confirmed negative",
    )
    stride = serializers.IntegerField(min_value=1, max_value=400, default=DEFAULT_STRIDE)
    max_per_class = serializers.IntegerField(
        min_value=2, max_value=1_000_000, default=DEFAULT_MAX_PER_CLASS
    )
    seed = serializers.IntegerField(min_value=0, max_value=2**31 - 1, default=0)
    recipe = serializers.JSONField(required=False, default=dict)
    from_primary = serializers.BooleanField(
        default=True, help_text="Start the secondary from the primary's weights"
    )

    def validate_recipe(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object of recipe fields")
        return value


class TrainSecondaryView(APIView):
    """POST: mine the hard negatives of this primary model and train a secondary on them (admins).
    One training run on the `gpu` queue does both; its progress shows the mining, then the epochs."""

    @extend_schema(request=TrainSecondarySerializer, responses={201: TrainingRunSerializer})
    def post(self, request, pk: int):
        _require_admin(request)
        primary = get_object_or_404(ModelVersion.objects.select_related("training_run"), pk=pk)
        body = TrainSecondarySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            run = launch_secondary_training(
                primary=primary, user=request.user, **body.validated_data
            )
        except TrainingRequestError as exc:
            raise ValidationError({"detail": str(exc), "field": exc.field or ""}) from exc
        return Response(
            TrainingRunSerializer(run, context={"request": request}).data,
            status=status.HTTP_201_CREATED,
        )
