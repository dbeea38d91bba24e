"""Clinical pages, included at the root by config/urls.py."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("cases/<int:pk>/clinical/", views.case_clinical_page, name="case-clinical"),
]
