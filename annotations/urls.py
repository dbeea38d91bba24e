"""Annotation API routes; `config/urls.py` mounts them under /api/."""

from __future__ import annotations

from django.urls import path

from . import dataset_views, views

urlpatterns = [
    path("datasets/", dataset_views.DatasetListView.as_view(), name="dataset-list"),
    path("datasets/<int:pk>/", dataset_views.DatasetDetailView.as_view(), name="dataset-detail"),
    path("label-classes/", views.LabelClassList.as_view(), name="label-class-list"),
    path(
        "slides/<int:slide_id>/annotations/",
        views.SlideAnnotations.as_view(),
        name="slide-annotations",
    ),
    path(
        "slides/<int:slide_id>/annotations/export/",
        views.AnnotationExport.as_view(),
        name="slide-annotations-export",
    ),
    path(
        "slides/<int:slide_id>/annotations/import/",
        views.AnnotationImportView.as_view(),
        name="slide-annotations-import",
    ),
    path("annotations/<int:pk>/", views.AnnotationDetail.as_view(), name="annotation-detail"),
    path(
        "annotations/<int:pk>/restore/",
        views.AnnotationRestore.as_view(),
        name="annotation-restore",
    ),
    path(
        "annotations/<int:pk>/history/",
        views.AnnotationHistoryList.as_view(),
        name="annotation-history",
    ),
]

page_urls = [
    path("datasets/", dataset_views.datasets_page, name="datasets"),
]
