from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from . import views

router = DefaultRouter()
router.register("cases", views.CaseViewSet, basename="case")
router.register("nodes", views.NodeViewSet, basename="node")
router.register("slides", views.SlideViewSet, basename="slide")

page_urls = [
    path("", views.case_list, name="case-list"),
    path("cases/<int:pk>/", views.case_detail, name="case-detail"),
    path("slides/<int:pk>/view/", views.slide_viewer, name="slide-viewer"),
]

api_urls = [
    path("slides/<int:pk>/tiles/<int:z>/<int:x>/<int:y>.jpg", views.slide_tile, name="slide-tile"),
    path("slides/<int:pk>/tilesource/", views.slide_tilesource, name="slide-tilesource"),
    path("slides/<int:pk>/thumbnail.jpg", views.slide_thumbnail, name="slide-thumbnail"),
    path(
        "slides/<int:pk>/associated/<slug:name>.jpg",
        views.slide_associated_image,
        name="slide-associated",
    ),
    path("", include(router.urls)),
]
