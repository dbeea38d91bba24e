from __future__ import annotations

from django.contrib import admin

from slides.admin import LabScopedAdmin

from .models import ClinicalField, ClinicalRecord


@admin.register(ClinicalField)
class ClinicalFieldAdmin(admin.ModelAdmin):
    list_display = (
        "key",
        "label",
        "kind",
        "unit",
        "min_value",
        "max_value",
        "required",
        "active",
        "order",
    )
    list_editable = ("order", "active")


@admin.register(ClinicalRecord)
class ClinicalRecordAdmin(LabScopedAdmin):
    list_display = ("case", "node_status", "positive_nodes", "source", "entered_by", "entered_at")
    readonly_fields = (
        "case",
        "values",
        "positive_nodes",
        "node_status",
        "source",
        "entered_by",
        "entered_at",
    )

    def has_change_permission(self, request, obj=None) -> bool:
        return False
