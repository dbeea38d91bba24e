"""Celery tasks of the slides app: thin wrappers around `slides.ingest`."""

from __future__ import annotations

from pathlib import Path

from celery import shared_task
from django.contrib.auth import get_user_model

from .ingest import SlideImportError, import_manifest, register_slide
from .models import Lab, Node


@shared_task(name="slides.register_slide", acks_late=True)
def register_slide_task(node_id: int, path: str, user_id: int | None = None) -> dict:
    """Register one file as a slide of a node; idempotent: a file already registered is reported."""
    node = Node.objects.get(pk=node_id)
    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    try:
        slide = register_slide(node=node, path=Path(path), user=user)
    except SlideImportError as exc:
        # The reason carries no server path; the file is named, not located (the log has it).
        return {"ok": False, "file": Path(exc.path).name, "reason": exc.reason}
    return {"ok": True, "slide": slide.pk, "width": slide.width, "height": slide.height}


@shared_task(name="slides.import_manifest", acks_late=True)
def import_manifest_task(
    manifest: str, lab_id: int | None = None, create_missing: bool = False
) -> dict:
    """Import a manifest in the background; the result lists what failed and why."""
    lab = Lab.objects.filter(pk=lab_id).first() if lab_id else None
    report = import_manifest(manifest=Path(manifest), lab=lab, create_missing=create_missing)
    return {
        "imported": [s.pk for s in report.imported],
        "failed": [{"row": r, "file": f, "reason": why} for r, f, why in report.failed],
    }
