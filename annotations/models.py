"""Label classes, annotation polygons, their history, and annotation-file imports.

Geometry is GeoJSON (Polygon or MultiPolygon, holes allowed) in level-0 pixels of its slide. The
bbox columns exist for viewport queries (one composite index, live rows only); `version` is the
optimistic-concurrency counter that every change (update, delete, restore) increments with a
conditional UPDATE, and each change writes one `AnnotationHistory` row in the same transaction.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q


class LabelClass(models.Model):
    """What a polygon says about the tissue under it (admin-editable, seeded by a migration)."""

    class Kind(models.TextChoices):
        TUMOUR = "tumour", "Tumour"
        NON_TUMOUR = "non-tumour", "Non-tumour"
        HARD_NEGATIVE = "hard-negative", "Hard negative"
        EXCLUDE = "exclude", "Exclude"

    key = models.SlugField(
        max_length=40, unique=True, help_text="Stable identifier used in files and the API"
    )
    name = models.CharField(max_length=80, unique=True)
    colour = models.CharField(
        max_length=7,
        validators=[RegexValidator(r"^#[0-9a-fA-F]{6}$", "Colour must be #rrggbb")],
        help_text="#rrggbb",
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    shortcut = models.CharField(
        max_length=1, blank=True, help_text="Keyboard shortcut in the viewer"
    )
    order = models.PositiveSmallIntegerField(
        default=0, help_text="Display order; among hard negatives, precedence"
    )

    class Meta:
        ordering = ["order", "key"]
        verbose_name_plural = "label classes"
        constraints = [
            models.UniqueConstraint(
                fields=["shortcut"], condition=~Q(shortcut=""), name="label_class_shortcut_unique"
            )
        ]

    def __str__(self) -> str:
        return self.name


class AnnotationImport(models.Model):
    """One annotation file imported onto a slide: provenance, and what needed repair or was dropped.

    `repaired` lists polygons that were invalid in the file and were repaired on request
    (`repair="make_valid"`); `dropped` keeps, with their coordinates, polygons that cannot be an
    area at all (fewer than 3 distinct vertices, or all on one line), so nothing of the file is lost.
    """

    slide = models.ForeignKey(
        "slides.Slide", on_delete=models.CASCADE, related_name="annotation_imports"
    )
    file_name = models.CharField(max_length=255)
    format = models.CharField(max_length=16)
    repair = models.CharField(max_length=16, blank=True)
    imported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    imported_at = models.DateTimeField(auto_now_add=True)
    polygon_count = models.PositiveIntegerField(default=0, help_text="Polygons in the file")
    vertex_count = models.PositiveIntegerField(default=0, help_text="Vertices in the file")
    repaired = models.JSONField(default=list, blank=True)
    dropped = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-imported_at", "-id"]

    def __str__(self) -> str:
        return f"{self.file_name} → slide {self.slide_id}"


class Annotation(models.Model):
    """One polygon (or multipolygon) of one class on one slide."""

    slide = models.ForeignKey("slides.Slide", on_delete=models.CASCADE, related_name="annotations")
    label_class = models.ForeignKey(
        LabelClass, on_delete=models.PROTECT, related_name="annotations"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="annotations",
        help_text="Who drew it; empty for polygons imported from a file by the command line",
    )
    name = models.CharField(
        max_length=255, blank=True, help_text="Name in the file it came from, if any"
    )
    geometry = models.JSONField(help_text="GeoJSON Polygon or MultiPolygon, level-0 px")
    min_x = models.FloatField()
    min_y = models.FloatField()
    max_x = models.FloatField()
    max_y = models.FloatField()
    vertex_count = models.PositiveIntegerField()
    area_px = models.FloatField()
    version = models.PositiveIntegerField(default=1)
    source_import = models.ForeignKey(
        AnnotationImport,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="annotations",
    )
    source_geometry = models.JSONField(
        null=True,
        blank=True,
        help_text="The invalid polygon as the file had it, when it was repaired on import",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["slide_id", "id"]
        indexes = [
            models.Index(
                fields=["slide", "min_x", "max_x", "min_y", "max_y"],
                condition=Q(deleted_at__isnull=True),
                name="annotation_viewport",
            )
        ]

    def __str__(self) -> str:
        return f"{self.label_class_id} polygon {self.pk} on slide {self.slide_id}"

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def bbox(self) -> list[float]:
        return [self.min_x, self.min_y, self.max_x, self.max_y]


class AnnotationHistory(models.Model):
    """One change of an annotation: who, when, and the state before and after (for undo and audit).

    `before`/`after` are `{"label_class": key, "geometry": {...}, "deleted": bool}`; `before` is
    empty for a creation.
    """

    class Action(models.TextChoices):
        CREATE = "create", "Create"
        UPDATE = "update", "Update"
        DELETE = "delete", "Delete"
        RESTORE = "restore", "Restore"

    annotation = models.ForeignKey(Annotation, on_delete=models.CASCADE, related_name="history")
    version = models.PositiveIntegerField(help_text="The annotation's version after this change")
    action = models.CharField(max_length=10, choices=Action.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    at = models.DateTimeField(auto_now_add=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["annotation_id", "version"]
        verbose_name_plural = "annotation history"
        constraints = [
            models.UniqueConstraint(
                fields=["annotation", "version"], name="annotation_history_version_unique"
            )
        ]

    def __str__(self) -> str:
        return f"annotation {self.annotation_id} v{self.version} {self.action}"
