"""Admin: label classes are edited here; annotations and their history are read-only."""

from __future__ import annotations

from django.contrib import admin

from slides.access import labs_of
from slides.admin import LabScopedAdmin
from slides.models import Slide

from .models import Annotation, AnnotationHistory, AnnotationImport, LabelClass

BULKY = ["geometry", "source_geometry"]


@admin.register(LabelClass)
class LabelClassAdmin(admin.ModelAdmin):
    list_display = ["key", "name", "kind", "colour", "shortcut", "order"]
    list_editable = ["name", "colour", "shortcut", "order"]
    list_filter = ["kind"]
    ordering = ["order", "key"]

    def get_readonly_fields(self, request, obj=None):
        # Files, history entries and the API name classes by key: it never changes once used.
        return ["key"] if obj is not None else []


class AnnotationHistoryInline(admin.TabularInline):
    model = AnnotationHistory
    extra = 0
    can_delete = False
    fields = ["version", "action", "user", "at"]
    readonly_fields = fields
    ordering = ["version"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Annotation)
class AnnotationAdmin(LabScopedAdmin):
    list_display = [
        "id",
        "slide",
        "label_class",
        "author",
        "vertex_count",
        "area_px",
        "version",
        "updated_at",
        "deleted_at",
    ]
    list_filter = ["label_class", "deleted_at"]
    list_select_related = ["slide", "label_class", "author"]
    search_fields = ["name", "slide__name"]
    exclude = BULKY  # up to 200,000 vertices: not for a form
    readonly_fields = [f.name for f in Annotation._meta.fields if f.name not in BULKY]
    inlines = [AnnotationHistoryInline]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AnnotationImport)
class AnnotationImportAdmin(LabScopedAdmin):
    list_display = [
        "file_name",
        "slide",
        "format",
        "repair",
        "polygon_count",
        "vertex_count",
        "imported_by",
        "imported_at",
    ]
    readonly_fields = [f.name for f in AnnotationImport._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False


from .models import Dataset  # noqa: E402  (appended with the Dataset model)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    """Snapshots are made by `create_snapshot` (or `manage.py make_dataset`), never edited here.

    A snapshot may hold slides of several labs: a lab admin sees one only when every slide of it
    is of their labs (and it has one); the rest are the platform operators'."""

    list_display = [
        "name",
        "status",
        "total_patches",
        "extracted_patches",
        "patch_px",
        "target_mpp",
        "created_by",
        "created_at",
        "content_hash",
    ]
    list_filter = ["status"]
    search_fields = ["name", "content_hash"]
    exclude = ["slides"]
    readonly_fields = [f.name for f in Dataset._meta.fields]

    def get_queryset(self, request):
        datasets = super().get_queryset(request)
        if request.user.is_superuser:
            return datasets
        labs = labs_of(request.user)
        mine = Dataset.objects.filter(slides__node__case__lab__in=labs).values("pk")
        elsewhere = Slide.objects.exclude(node__case__lab__in=labs)
        return datasets.filter(pk__in=mine).exclude(slides__in=elsewhere)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
