"""Newly imported whole slides are scored by the live model (after their import commits)."""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from slides.models import Slide


@receiver(post_save, sender=Slide, dispatch_uid="score-imported-slide")
def _score_new_slide(sender, instance: Slide, created: bool, raw: bool = False, **kwargs) -> None:
    if not created or raw or instance.modality != Slide.Modality.SLIDE:
        return  # node images (CT, ultrasound) are not scanned by patch models
    from .rescoring import score_imported_slides

    transaction.on_commit(
        lambda: score_imported_slides(slides=[instance.pk], user=instance.imported_by)
    )
