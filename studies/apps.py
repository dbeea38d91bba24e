from __future__ import annotations

from django.apps import AppConfig


class StudiesConfig(AppConfig):
    """Reader studies: readers label images blind, then are compared with a model."""

    name = "studies"
    verbose_name = "Reader studies"
    default_auto_field = "django.db.models.BigAutoField"
