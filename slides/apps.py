from __future__ import annotations

from django.apps import AppConfig


class SlidesConfig(AppConfig):
    name = "slides"
    verbose_name = "Cases, nodes and slides"
    default_auto_field = "django.db.models.BigAutoField"
