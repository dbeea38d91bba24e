from __future__ import annotations

from django.contrib import admin

from .models import Case, Lab, Node, Slide


@admin.register(Lab)
class LabAdmin(admin.ModelAdmin):
    list_display = ["code", "name"]
    filter_horizontal = ["members"]


class NodeInline(admin.TabularInline):
    model = Node
    extra = 0


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
    list_display = [
        "accession_number", "patient_pseudonym", "lab", "project_type", "status", "created_at"
    ]
    list_filter = ["lab", "project_type", "status"]
    search_fields = ["accession_number", "patient_pseudonym"]
    inlines = [NodeInline]


@admin.register(Slide)
class SlideAdmin(admin.ModelAdmin):
    list_display = ["name", "node", "source", "width", "height", "mpp_x", "magnification", "synthetic"]
    list_filter = ["source", "synthetic"]
    readonly_fields = [f.name for f in Slide._meta.fields]
