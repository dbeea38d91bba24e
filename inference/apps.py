from __future__ import annotations

from importlib import import_module

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    """Models, training and scoring.

    `inference/models/` is the package of PyTorch architectures (the design card's name), so the
    app's database models live in `inference/records.py`, which this config imports in its place.
    """

    name = "inference"
    default_auto_field = "django.db.models.BigAutoField"

    def import_models(self) -> None:
        self.models = self.apps.all_models[self.label]
        self.models_module = import_module(f"{self.name}.records")

    def ready(self) -> None:
        from . import signals  # noqa: F401 - scores newly imported slides
