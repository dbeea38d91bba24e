from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from . import image_views, mining_views, views

router = DefaultRouter()
router.register("training-runs", views.TrainingRunViewSet, basename="training-run")
router.register("model-versions", views.ModelVersionViewSet, basename="model-version")

urlpatterns = [
    path(
        "model-versions/<int:pk>/train-secondary/",
        mining_views.TrainSecondaryView.as_view(),
        name="model-version-train-secondary",
    ),
    path("scoring-runs/<int:pk>/", views.ScoringRunProgressView.as_view(), name="scoring-run-api"),
    path(
        "scoring-runs/<int:pk>/changes/",
        views.ScoringRunChangesView.as_view(),
        name="scoring-run-changes-api",
    ),
    path(
        "model-versions/<int:pk>/comparison/",
        image_views.ModelComparisonView.as_view(),
        name="model-version-comparison-api",
    ),
    path(
        "model-versions/<int:pk>/operating-point/",
        image_views.OperatingPointView.as_view(),
        name="model-version-operating-point",
    ),
    path("", include(router.urls)),
]

page_urls = [
    path("models/", views.models_page, name="models"),
    path("models/<int:pk>/", views.model_version_page, name="model-version-page"),
    path(
        "models/<int:pk>/comparison/",
        image_views.model_comparison_page,
        name="model-version-comparison",
    ),
    path(
        "scoring-runs/<int:pk>/changes/",
        views.scoring_run_changes_page,
        name="scoring-run-changes",
    ),
]
