"""Clinical API routes, included under /api/ by config/urls.py (pages: clinical/page_urls.py)."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("clinical-fields/", views.ClinicalFieldsView.as_view(), name="clinical-fields"),
    path("clinical/import/", views.ClinicalImportView.as_view(), name="clinical-import"),
    path("cases/<int:pk>/clinical/", views.CaseClinicalView.as_view(), name="case-clinical-api"),
    path(
        "cases/<int:pk>/clinical/history/",
        views.CaseClinicalHistoryView.as_view(),
        name="case-clinical-history",
    ),
    path(
        "cases/<int:pk>/mil-prediction/",
        views.CaseMILPredictionView.as_view(),
        name="case-mil-prediction",
    ),
]
