"""Writing audit events from services: `record(actor=..., action=..., obj=..., **detail)`."""

from __future__ import annotations

from typing import Any

from django.db import models

from .models import AuditEvent


def record(
    *,
    actor,
    action: str,
    obj: models.Model | None = None,
    lab: models.Model | int | None = None,
    **detail: Any,
) -> AuditEvent:
    """Append one event; call inside the same transaction as the change it records.

    The event is filed under ``lab`` (a Lab or its id) when given, else under the lab of ``obj``
    (`slides.access.lab_id_of`: a lab, a case, or anything that leads to one); an event of no
    lab is shown to the platform operators only."""
    from slides.access import lab_id_of

    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    if isinstance(lab, models.Model):
        lab_id = lab.pk
    elif lab is not None:
        lab_id = int(lab)
    else:
        lab_id = lab_id_of(obj) if obj is not None else None
    return AuditEvent.objects.create(
        actor=user,
        actor_name=getattr(user, "username", "") or "",
        action=action,
        lab_id=lab_id,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        detail=detail,
    )
