from __future__ import annotations

from django.apps import AppConfig


class ClinicalConfig(AppConfig):
    name = "clinical"
    verbose_name = "Clinical data and node status"
    default_auto_field = "django.db.models.BigAutoField"
