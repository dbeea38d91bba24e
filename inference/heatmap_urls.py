"""Heat-map overlay API routes (mounted under /api/ by config/urls.py)."""

from __future__ import annotations

from django.urls import path

from . import cam_views, gradcam_views
from . import heatmap_views as views

urlpatterns = [
    path(
        "slides/<int:pk>/heatmap/tilesource/",
        views.heatmap_tilesource,
        name="heatmap-tilesource",
    ),
    path(
        "slides/<int:pk>/heatmap/tiles/<int:z>/<int:x>/<int:y>.png",
        views.heatmap_tile,
        name="heatmap-tile",
    ),
    path("slides/<int:pk>/heatmap/regions/", views.heatmap_regions, name="heatmap-regions"),
    # Grad-CAM on demand (inference.gradcam)
    path(
        "slides/<int:pk>/gradcam/",
        gradcam_views.GradCamRequestView.as_view(),
        name="gradcam-request",
    ),
    path(
        "slides/<int:pk>/gradcam/<int:gradcam>/",
        gradcam_views.GradCamDetailView.as_view(),
        name="gradcam-detail",
    ),
    path(
        "slides/<int:pk>/gradcam/<int:gradcam>/overlay.png",
        gradcam_views.gradcam_overlay,
        name="gradcam-overlay",
    ),
    # class activation maps of node images (inference.cam), followed through the routes above
    path("slides/<int:pk>/cam/", cam_views.CamRequestView.as_view(), name="cam-request"),
]
