from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin

from .access import sync_staff
from .models import Case, Lab, Node, Slide


@admin.register(Lab)
class LabAdmin(admin.ModelAdmin):
    """Admins manage the membership of their own labs; superusers every lab (adding oneself to
    another lab would open its cases)."""

    list_display = ["code", "name"]
    filter_horizontal = ["members"]

    def get_queryset(self, request):
        labs = super().get_queryset(request)
        return labs if request.user.is_superuser else labs.filter(members=request.user)


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class NodeScopeUserAdmin(UserAdmin):
    """Admins create users, set passwords and roles (groups); only superusers see or make
    superusers, staff flags or per-user permissions. A user's admin-site access follows the
    admin role (`slides.access.sync_staff`)."""

    OPERATOR_ONLY = ("is_superuser", "is_staff", "user_permissions")

    def get_queryset(self, request):
        users = super().get_queryset(request)
        return users if request.user.is_superuser else users.filter(is_superuser=False)

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += [f for f in self.OPERATOR_ONLY if f not in fields]
        return fields

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        sync_staff(form.instance)


class NodeInline(admin.TabularInline):
    model = Node
    extra = 0


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
    list_display = [
        "accession_number",
        "patient_pseudonym",
        "lab",
        "project_type",
        "status",
        "created_at",
    ]
    list_filter = ["lab", "project_type", "status"]
    search_fields = ["accession_number", "patient_pseudonym"]
    inlines = [NodeInline]


@admin.register(Slide)
class SlideAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "node",
        "source",
        "width",
        "height",
        "mpp_x",
        "magnification",
        "synthetic",
    ]
    list_filter = ["source", "synthetic"]
    readonly_fields = [f.name for f in Slide._meta.fields]
