from __future__ import annotations

from django.apps import AppConfig


class SlidesConfig(AppConfig):
    name = "slides"
    verbose_name = "Cases, nodes and slides"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Log-out drops cached slide grants; a new password or deactivation revokes API tokens.
        from .auth import connect_signals

        connect_signals()
