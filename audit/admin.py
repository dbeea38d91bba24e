from __future__ import annotations

from django.contrib import admin

from slides.admin import LabScopedAdmin

from .models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(LabScopedAdmin):
    """Viewable by admins, never editable. A lab admin reads the events of their own labs only;
    events of no lab (log-ins, user changes, platform actions) are the operators' (superusers')."""

    list_display = ["at", "actor_name", "action", "lab", "object_type", "object_id"]
    list_filter = ["action", "object_type", ("lab", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["lab"]
    search_fields = ["actor_name", "object_id", "action"]
    readonly_fields = [
        "at",
        "actor",
        "actor_name",
        "action",
        "lab",
        "object_type",
        "object_id",
        "detail",
    ]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
