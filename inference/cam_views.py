"""Class activation maps of node images: ask for one; follow it and fetch its overlay through the
Grad-CAM routes (the same records, see inference.cam).

POST /api/slides/<slide>/cam/   {method: "cam" | "grad-cam", model_version?} on a node image;
                                202 with the record when queued, 200 when it was already there.
                                Then GET /api/slides/<slide>/gradcam/<id>/ (poll) and
                                …/gradcam/<id>/overlay.png (the colour map over the whole image).

Lab-scoped: the image must be one of ``slides_for(user)`` (404 otherwise). A whole slide gets 400
pointing to the patch Grad-CAM; an unknown method or model version gets 400 naming it.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from slides.access import slides_for

from .cam import METHODS, check_node_image, request_image_cam
from .gradcam import GradCamError, GradCamUnavailable
from .gradcam_views import Conflict, request_answer
from .records import ModelVersion
from .serializers import without_server_paths


class CamRequestSerializer(serializers.Serializer):
    method = serializers.ChoiceField(
        choices=METHODS, default="cam", help_text="cam (global average pooling) or grad-cam"
    )
    model_version = serializers.IntegerField(
        min_value=1,
        max_value=2**63 - 1,
        required=False,
        help_text="a node-image model version; default: the newest",
    )


class CamRequestView(APIView):
    """POST: the class activation map of a node image for a whole-image classifier (computed by
    a task on the `gpu` queue, kept per image, model version and method)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(request=CamRequestSerializer, responses={202: dict, 200: dict})
    def post(self, request: Request, pk: int) -> Response:
        slide = get_object_or_404(slides_for(request.user), pk=pk)
        try:
            check_node_image(slide)
        except GradCamError as exc:
            raise ValidationError({"detail": str(exc)}) from exc
        body = CamRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        version = None
        if "model_version" in data:
            version = ModelVersion.objects.filter(pk=data["model_version"]).first()
            if version is None:
                raise ValidationError(
                    {"model_version": f"no model version with id {data['model_version']}"}
                )
        try:
            gradcam, cached = request_image_cam(
                slide=slide, user=request.user, method=data["method"], version=version
            )
        except GradCamError as exc:
            field = "model_version" if version is not None else "detail"
            raise ValidationError({field: str(exc)}) from exc
        except GradCamUnavailable as exc:
            raise Conflict(without_server_paths(str(exc))) from exc
        return request_answer(gradcam, cached=cached)
