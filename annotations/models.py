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


class DatasetFrozen(Exception):
    """An attempt to change what a dataset snapshot holds; only its extraction state may change."""


class Dataset(models.Model):
    """An immutable snapshot of patch labels for training (see `annotations.datasets`).

    What it holds is fixed at creation: the slides (ids and checksums in `slide_records`), the
    annotation versions the labels came from, the grid, the sampling, the split by case, the class
    counts and the `content_hash` over all of them. The per-slide label arrays are written to
    `folder` at creation, so later annotation edits never change the snapshot. Only the extraction
    of the patch pixels moves on: pending → extracting → ready | failed (with its reason).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        EXTRACTING = "extracting", "Extracting"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    # The extraction state; every other concrete field is frozen once the row exists.
    MUTABLE_FIELDS = frozenset(
        {
            "status",
            "status_reason",
            "progress",
            "extracted_patches",
            "worker",
            "attempts",
            "heartbeat_at",
            "started_at",
            "finished_at",
        }
    )

    name = models.CharField(max_length=120, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    slides = models.ManyToManyField(
        "slides.Slide",
        related_name="datasets",
        blank=True,
        help_text="For look-ups; the record that counts is slide_records",
    )
    slide_records = models.JSONField(
        default=list, help_text="Per slide: id, name, checksum, case, node, mpp, patches"
    )
    annotation_versions = models.JSONField(
        default=dict, help_text="{annotation id: version} the labels were derived from"
    )
    patch_px = models.PositiveIntegerField(default=40, help_text="Patch side in px at target_mpp")
    target_mpp = models.FloatField(default=1.0, help_text="µm per pixel of the patches")
    stride_px = models.PositiveIntegerField(default=40, help_text="Grid stride in px at target_mpp")
    min_tissue = models.FloatField(default=0.5, help_text="Least tissue share of a kept patch")
    seed = models.IntegerField(default=0)
    val_fraction = models.FloatField(default=0.3)
    max_per_class = models.PositiveIntegerField(null=True, blank=True)
    balanced = models.BooleanField(default=False)
    classes = models.JSONField(default=list, help_text="Fine label classes (index = fine label)")
    training_classes = models.JSONField(
        default=list, help_text="Training label names (index = label)"
    )
    class_counts = models.JSONField(default=dict, help_text="Patches per fine class")
    split = models.JSONField(default=dict, help_text="Cases, patches and counts per side")
    total_patches = models.PositiveIntegerField(default=0)
    content_hash = models.CharField(max_length=64, db_index=True)

    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    status_reason = models.TextField(blank=True)
    progress = models.JSONField(default=dict, blank=True)
    extracted_patches = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"dataset {self.name} ({self.status})"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            fields = kwargs.get("update_fields")
            if fields is None or set(fields) - self.MUTABLE_FIELDS:
                raise DatasetFrozen(
                    f"dataset {self.pk} is an immutable snapshot: create a new one instead of "
                    "changing it (only its extraction state can be saved, with update_fields)"
                )
        super().save(*args, **kwargs)

    def split_cases(self, side: str) -> list[dict]:
        """The cases of one side of the split ("train" or "val"): {id, accession, patches}."""
        return list((self.split or {}).get(side, {}).get("cases", []))

    @property
    def folder(self):
        """Where its label and patch arrays live: RESULTS_DIR/datasets/<id>."""
        from pathlib import Path

        return Path(settings.RESULTS_DIR) / "datasets" / str(self.pk)

    @classmethod
    def stale_before(cls):
        from datetime import timedelta

        from django.utils import timezone

        return timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS)

    def claim(self, *, worker: str) -> bool:
        """pending, failed, or extracting with a stale heartbeat → extracting (conditional update)."""
        from django.utils import timezone

        now = timezone.now()
        claimable = (
            Q(status=self.Status.PENDING)
            | Q(status=self.Status.FAILED)
            | Q(status=self.Status.EXTRACTING, heartbeat_at__lt=self.stale_before())
            | Q(status=self.Status.EXTRACTING, heartbeat_at__isnull=True)
        )
        won = Dataset.objects.filter(claimable, pk=self.pk).update(
            status=self.Status.EXTRACTING,
            status_reason="",
            worker=worker[:200],
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            attempts=models.F("attempts") + 1,
        )
        self.refresh_from_db()
        return won == 1

    def record_progress(self, *, done: int, total: int, slide_id: int | None = None) -> None:
        """Write how far extraction is, and a heartbeat."""
        from django.utils import timezone

        Dataset.objects.filter(pk=self.pk, status=self.Status.EXTRACTING).update(
            extracted_patches=done,
            progress={
                "done": done,
                "total": total,
                "fraction": round(done / total, 4) if total else 1.0,
                "slide": slide_id,
            },
            heartbeat_at=timezone.now(),
        )

    def finish(self, status: str, *, reason: str = "") -> None:
        """extracting → ready or failed (with its reason)."""
        from django.utils import timezone

        fields: dict = {
            "status": status,
            "status_reason": reason[:5000],
            "finished_at": timezone.now(),
        }
        if status == self.Status.READY:
            fields["extracted_patches"] = self.total_patches
            fields["progress"] = {
                "done": self.total_patches,
                "total": self.total_patches,
                "fraction": 1.0,
                "slide": None,
            }
        Dataset.objects.filter(pk=self.pk, status=self.Status.EXTRACTING).update(**fields)
        self.refresh_from_db()
