"""Writing audit events from services: `record(actor=..., action=..., obj=..., **detail)`."""

from __future__ import annotations

from typing import Any

from django.db import models

from .models import AuditEvent


def record(*, actor, action: str, obj: models.Model | None = None, **detail: Any) -> AuditEvent:
    """Append one event; call inside the same transaction as the change it records."""
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditEvent.objects.create(
        actor=user,
        actor_name=getattr(user, "username", "") or "",
        action=action,
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        detail=detail,
    )
