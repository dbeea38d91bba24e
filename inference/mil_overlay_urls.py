"""MIL attention overlay API routes (mounted under /api/ by config/urls.py)."""

from __future__ import annotations

from django.urls import path

from . import mil_overlay_views as views

urlpatterns = [
    path(
        "slides/<int:pk>/mil-attention/",
        views.attention_tilesource,
        name="mil-attention-tilesource",
    ),
    path(
        "slides/<int:pk>/mil-attention/tiles/<int:z>/<int:x>/<int:y>.png",
        views.attention_tile,
        name="mil-attention-tile",
    ),
]
