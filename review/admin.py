"""Admin: review records are read-only; lab review settings change through the audited service."""

from __future__ import annotations

from django.contrib import admin

from slides.access import has_role, labs_of
from slides.admin import LabScopedAdmin
from slides.models import Role

from . import services
from .models import CaseSignOff, ReviewDecision, ReviewerCorrection, ReviewSettings, ViewedRegion


class ReadOnlyAdmin(LabScopedAdmin):
    """Append-only records: viewable, never added, changed or deleted here."""

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.concrete_fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ReviewDecision)
class ReviewDecisionAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "node",
        "status",
        "user_name",
        "created_at",
        "score",
        "threshold",
        "amendment",
    ]
    list_filter = ["status", "amendment", "region_rule"]
    search_fields = ["node__label", "node__case__accession_number", "user_name"]
    list_select_related = ["node__case"]


@admin.register(ViewedRegion)
class ViewedRegionAdmin(ReadOnlyAdmin):
    list_display = ["id", "node", "region_key", "user", "viewed_at"]


@admin.register(CaseSignOff)
class CaseSignOffAdmin(ReadOnlyAdmin):
    list_display = ["id", "case", "action", "user_name", "at"]
    list_filter = ["action"]


@admin.register(ReviewerCorrection)
class ReviewerCorrectionAdmin(ReadOnlyAdmin):
    list_display = ["id", "node", "annotation", "region_key", "user", "created_at"]


@admin.register(ReviewSettings)
class ReviewSettingsAdmin(LabScopedAdmin):
    """Switching the region-viewing rule here goes through the service, so it is audited. A lab
    admin sees and changes the settings of their own labs only (list, change page and the lab
    choices of the add form are scoped by `LabScopedAdmin`)."""

    list_display = ["lab", "require_region_views", "updated_by", "updated_at"]
    fields = ["lab", "require_region_views"]

    def get_readonly_fields(self, request, obj=None):
        return ["lab"] if obj is not None else []

    def has_add_permission(self, request):
        return has_role(request.user, Role.ADMIN) and super().has_add_permission(request)

    def has_change_permission(self, request, obj=None):
        if obj is not None and not labs_of(request.user).filter(pk=obj.lab_id).exists():
            return False
        return has_role(request.user, Role.ADMIN) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        saved = services.set_lab_settings(
            lab=obj.lab,
            user=request.user,
            require_region_views=obj.require_region_views,
            reason="changed in the admin site",
        )
        obj.pk = saved.pk
