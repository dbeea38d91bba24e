from __future__ import annotations

from django.apps import AppConfig


class ReviewConfig(AppConfig):
    """Per-case review queues, triage, decisions, sign-off and diagnostic metrics."""

    name = "review"
    default_auto_field = "django.db.models.BigAutoField"
