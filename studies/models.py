"""Reader studies: a set of images of one lab, readers who label each image blind in their own
random order, the answers, and a model's answers on the same images for comparison."""

from __future__ import annotations

import random
import secrets as _secrets

from django.conf import settings
from django.db import models
from django.utils import timezone


class StudyStateError(Exception):
    """A change that the study's status does not allow (answered 409)."""


def new_order_seed() -> int:
    """A random seed for the study's reading orders (63 bits, fits a signed BIGINT)."""
    return _secrets.randbits(62)


def reading_order(*, seed: int, reader_id: int, image_ids: list[int]) -> list[int]:
    """A permutation of `image_ids` that depends only on the study's seed and the reader:
    stable across visits and processes (``random.Random`` seeded with a string is deterministic),
    and different between readers."""
    order = sorted(image_ids)
    random.Random(f"nodescope-study:{seed}:{reader_id}").shuffle(order)
    return order


class ReaderStudy(models.Model):
    """A reader study of one lab: draft (images and readers chosen) → open (readers answer) →
    closed (no more answers; the model's answers are computed and results compared)."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    class ModelStatus(models.TextChoices):
        NONE = "none", "No model"
        PENDING = "pending", "Not computed"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    name = models.CharField(max_length=200)
    lab = models.ForeignKey("slides.Lab", on_delete=models.PROTECT, related_name="reader_studies")
    instructions = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    model_version = models.ForeignKey(
        "inference.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reader_studies",
        help_text="the model compared with the readers",
    )
    threshold = models.FloatField(
        null=True, blank=True, help_text="model says metastatic at or above this probability"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    opened_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    order_seed = models.BigIntegerField(default=new_order_seed)
    model_status = models.CharField(
        max_length=10, choices=ModelStatus.choices, default=ModelStatus.NONE
    )
    model_status_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name

    @property
    def operating_threshold(self) -> float | None:
        """The study's threshold, else the model version's locked one."""
        if self.threshold is not None:
            return self.threshold
        return self.model_version.threshold if self.model_version else None

    def open(self) -> None:
        """Draft → open: fix every reader's order. Needs images and readers."""
        if self.status != self.Status.DRAFT:
            raise StudyStateError(f"the study is {self.status}; only a draft can be opened")
        image_ids = list(self.images.values_list("pk", flat=True))
        if not image_ids:
            raise StudyStateError("the study has no images")
        readers = list(self.readers.all())
        if not readers:
            raise StudyStateError("the study has no readers")
        if self.model_version_id is not None and self.operating_threshold is None:
            raise StudyStateError("the model version has no threshold: set one for the study")
        for reader in readers:
            reader.order = reading_order(
                seed=self.order_seed, reader_id=reader.user_id, image_ids=image_ids
            )
            reader.save(update_fields=["order"])
        self.status = self.Status.OPEN
        self.opened_at = timezone.now()
        self.save(update_fields=["status", "opened_at"])

    def close(self) -> None:
        """Open → closed: no more answers."""
        if self.status != self.Status.OPEN:
            raise StudyStateError(f"the study is {self.status}; only an open study can be closed")
        self.status = self.Status.CLOSED
        self.closed_at = timezone.now()
        fields = ["status", "closed_at"]
        if self.model_version_id is not None:
            self.model_status = self.ModelStatus.PENDING
            fields.append("model_status")
        self.save(update_fields=fields)


class StudyImage(models.Model):
    """One image of a study: a slide or a node image (a `Slide` row) of the study's lab."""

    study = models.ForeignKey(ReaderStudy, on_delete=models.CASCADE, related_name="images")
    slide = models.ForeignKey("slides.Slide", on_delete=models.CASCADE, related_name="+")

    class Meta:
        ordering = ["study_id", "id"]
        constraints = [models.UniqueConstraint(fields=["study", "slide"], name="study_image_once")]

    def __str__(self) -> str:
        return f"study {self.study_id} image {self.pk}"


class StudyReader(models.Model):
    """A reader of a study, with their own reading order (StudyImage ids), fixed at opening."""

    study = models.ForeignKey(ReaderStudy, on_delete=models.CASCADE, related_name="readers")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="study_readings"
    )
    order = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["study_id", "id"]
        constraints = [models.UniqueConstraint(fields=["study", "user"], name="study_reader_once")]

    def __str__(self) -> str:
        return f"study {self.study_id} reader {self.user_id}"


class Label(models.TextChoices):
    METASTATIC = "metastatic", "Metastatic"
    BENIGN = "benign", "Benign"


class ReaderAnswer(models.Model):
    """A reader's label of one image (changeable until the study closes; changes are audited)."""

    study = models.ForeignKey(ReaderStudy, on_delete=models.CASCADE, related_name="answers")
    image = models.ForeignKey(StudyImage, on_delete=models.CASCADE, related_name="answers")
    reader = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="study_answers"
    )
    label = models.CharField(max_length=12, choices=Label.choices)
    confidence = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1 to 5")
    answered_at = models.DateTimeField(default=timezone.now)
    changes = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["study_id", "reader_id", "answered_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "reader", "image"], name="one_answer_per_reader_image"
            ),
            models.CheckConstraint(
                condition=models.Q(confidence__isnull=True)
                | models.Q(confidence__gte=1, confidence__lte=5),
                name="answer_confidence_1_to_5",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.reader_id} on image {self.image_id}: {self.label}"


class ModelAnswer(models.Model):
    """The model's probability of metastatic for one image, and its label at the threshold."""

    study = models.ForeignKey(ReaderStudy, on_delete=models.CASCADE, related_name="model_answers")
    image = models.OneToOneField(StudyImage, on_delete=models.CASCADE, related_name="model_answer")
    model_version = models.ForeignKey(
        "inference.ModelVersion", on_delete=models.PROTECT, related_name="+"
    )
    probability = models.FloatField()
    threshold = models.FloatField()
    label = models.CharField(max_length=12, choices=Label.choices)
    computed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study_id", "image_id"]

    def __str__(self) -> str:
        return f"model on image {self.image_id}: {self.probability:.3f}"
