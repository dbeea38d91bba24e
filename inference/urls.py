from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from . import views

router = DefaultRouter()
router.register("training-runs", views.TrainingRunViewSet, basename="training-run")
router.register("model-versions", views.ModelVersionViewSet, basename="model-version")

urlpatterns = [path("", include(router.urls))]

page_urls = [
    path("models/", views.models_page, name="models"),
    path("models/<int:pk>/", views.model_version_page, name="model-version-page"),
]
