"""Review routes. `urlpatterns` (API) is included under /api/ by config/urls.py; `page_urls` at the
root: `path("", include(review_urls.page_urls))`."""

from __future__ import annotations

from django.urls import path

from . import calibration_views, views

urlpatterns = [
    path(
        "nodes/<int:pk>/decisions/", views.NodeDecisionsView.as_view(), name="review-node-decisions"
    ),
    path(
        "nodes/<int:pk>/viewed-regions/",
        views.NodeViewedRegionsView.as_view(),
        name="review-node-viewed-regions",
    ),
    path(
        "nodes/<int:pk>/corrections/",
        views.NodeCorrectionsView.as_view(),
        name="review-node-corrections",
    ),
    path(
        "review/cases/<int:pk>/queue/", views.CaseQueueView.as_view(), name="review-case-queue-api"
    ),
    path(
        "review/cases/<int:pk>/sign-off/",
        views.CaseSignOffView.as_view(),
        name="review-case-sign-off",
    ),
    path(
        "review/cases/<int:pk>/reopen/", views.CaseReopenView.as_view(), name="review-case-reopen"
    ),
    path(
        "model-versions/<int:pk>/threshold/",
        calibration_views.ModelThresholdView.as_view(),
        name="model-version-threshold",
    ),
    path(
        "model-versions/<int:pk>/calibration-scoring/",
        calibration_views.CalibrationScoringView.as_view(),
        name="model-version-calibration-scoring",
    ),
    path("review/triage/", views.TriageView.as_view(), name="review-triage-api"),
    path("review/metrics/", views.MetricsView.as_view(), name="review-metrics-api"),
    path("review/decisions.csv", views.DecisionExportView.as_view(), name="review-decisions-csv"),
    path(
        "review/labs/<int:pk>/settings/",
        views.LabSettingsView.as_view(),
        name="review-lab-settings",
    ),
]

page_urls = [
    path("review/cases/<int:pk>/", views.case_queue_page, name="review-case-queue"),
    path(
        "review/nodes/<int:pk>/slides/<int:slide_pk>/view/",
        views.review_viewer_page,
        name="review-viewer",
    ),
    path("review/triage/", views.triage_page, name="review-triage"),
    path("review/metrics/", views.metrics_page, name="review-metrics"),
]
