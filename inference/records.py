"""Database records of training and models: TrainingRun (a job) and ModelVersion (its product).

A TrainingRun is a state machine: queued → running → succeeded | failed | cancelled. A worker
claims a run with a conditional update; a run left `running` by a killed worker is claimed again
when Celery redelivers its task (late acknowledgement) and resumes from its last epoch checkpoint.
A ModelVersion exists only after success.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone


def stale_before():
    """Jobs whose worker has been silent since before this moment are taken over."""
    return timezone.now() - timedelta(seconds=settings.JOB_STALE_SECONDS)


def lost_job_ids(jobs: models.QuerySet, *, queued_since: str = "created_at") -> list[int]:
    """Ids among ``jobs`` that a starting worker queues again: `running` with no heartbeat since
    :func:`stale_before` (the worker died), or still `queued` that long after ``queued_since``
    (the message may have died with a broker that kept no copy). A second message is harmless:
    a job is claimed by a conditional update, so one worker runs it."""
    before = stale_before()
    return list(
        jobs.filter(
            models.Q(status="running", heartbeat_at__lt=before)
            | models.Q(status="queued", **{f"{queued_since}__lt": before})
        ).values_list("pk", flat=True)
    )


class Stage(models.TextChoices):
    PRIMARY = "primary", "Primary"
    SECONDARY = "secondary", "Secondary (hard negatives)"


class TrainingRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    server_side = models.BooleanField(
        default=False,
        help_text="launched on the server with no user (manage.py): reads every lab and any path;"
        " otherwise the run reads only its launcher's labs and the import roots (inference.scope)",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    dataset_source = models.JSONField(
        help_text='what to train on, e.g. {"kind": "image-folder", "path": ..., "size": 96}'
    )
    architecture = models.CharField(max_length=40, default="mobilenetv2")
    stage = models.CharField(max_length=20, choices=Stage.choices, default=Stage.PRIMARY)
    recipe = models.JSONField(default=dict, blank=True, help_text="TrainingRecipe overrides")
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    status_reason = models.TextField(blank=True)
    progress = models.JSONField(default=dict, blank=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="last sign of life from its worker"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"training run {self.pk} ({self.architecture}, {self.stage}, {self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @classmethod
    def stale_before(cls):
        return stale_before()

    def claim(self, *, worker: str) -> bool:
        """queued, or running with a stale heartbeat (its worker died) → running.

        A conditional update: of two workers handed the same run, exactly one wins.
        """
        now = timezone.now()
        claimable = models.Q(status=self.Status.QUEUED) | models.Q(
            status=self.Status.RUNNING, heartbeat_at__lt=self.stale_before()
        )
        won = TrainingRun.objects.filter(claimable, pk=self.pk, cancel_requested=False).update(
            status=self.Status.RUNNING,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
            attempts=models.F("attempts") + 1,
        )
        if won:
            self.refresh_from_db()
        return won == 1

    def finish(self, status: str, *, reason: str = "") -> None:
        """running → a final state, written once."""
        TrainingRun.objects.filter(pk=self.pk).exclude(status__in=self.FINISHED).update(
            status=status, status_reason=reason[:5000], finished_at=timezone.now()
        )
        self.refresh_from_db()

    def request_cancel(self) -> None:
        """Ask a running job to stop between steps; a queued one is cancelled at once."""
        with transaction.atomic():
            TrainingRun.objects.filter(pk=self.pk).update(cancel_requested=True)
            TrainingRun.objects.filter(pk=self.pk, status=self.Status.QUEUED).update(
                status=self.Status.CANCELLED,
                status_reason="cancelled before it started",
                finished_at=timezone.now(),
            )
        self.refresh_from_db()


class ModelVersion(models.Model):
    """A trained model with its evidence. Created only when its TrainingRun succeeded."""

    training_run = models.OneToOneField(
        TrainingRun, on_delete=models.PROTECT, related_name="model_version"
    )
    name = models.CharField(max_length=120, unique=True)
    architecture = models.CharField(max_length=40)
    stage = models.CharField(max_length=20, choices=Stage.choices)
    weights_path = models.CharField(max_length=1024)
    weights_sha256 = models.CharField(max_length=64)
    dataset_hash = models.CharField(max_length=64)
    dataset_summary = models.JSONField(default=dict, blank=True)
    hyperparameters = models.JSONField(default=dict)
    code_version = models.CharField(max_length=80)
    classes = models.JSONField(default=list)
    val_accuracy = models.FloatField()
    val_auc = models.FloatField()
    roc = models.JSONField(default=dict, blank=True, help_text="fpr, tpr, thresholds")
    curves = models.JSONField(default=dict, blank=True, help_text="per-epoch losses, AUC, accuracy")
    device = models.CharField(max_length=40, blank=True)
    training_seconds = models.FloatField(default=0)
    # Locked operating point from validation nodes (see inference.thresholds).
    threshold = models.FloatField(
        null=True, blank=True, help_text="node positive at or above this score"
    )
    threshold_method = models.CharField(max_length=80, blank=True)
    threshold_metrics = models.JSONField(
        default=dict,
        blank=True,
        help_text="sensitivity, specificity, accuracy with bootstrap 95% CIs",
    )
    is_live = models.BooleanField(default=False)
    promoted_at = models.DateTimeField(null=True, blank=True)
    promoted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["stage"], condition=models.Q(is_live=True), name="one_live_model_per_stage"
            )
        ]

    def __str__(self) -> str:
        return self.name


class ScoringRun(models.Model):
    """Rescoring a set of slides with a model (the cascade of a primary and, optionally, a secondary)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed (some slides)"

    class Trigger(models.TextChoices):
        PROMOTION = "promotion", "Model promoted"
        IMPORT = "import", "Slide imported"
        MANUAL = "manual", "Manual"

    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="scoring_runs"
    )
    secondary_version = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="secondary_scoring_runs",
    )
    threshold = models.FloatField(null=True, blank=True)
    trigger = models.CharField(max_length=20, choices=Trigger.choices, default=Trigger.MANUAL)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    slides_total = models.PositiveIntegerField(default=0)
    slides_done = models.PositiveIntegerField(default=0)
    slides_failed = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"scoring run {self.pk} with {self.model_version}"


class SlideScoring(models.Model):
    """One slide's job within a ScoringRun: one Celery task on the training queue."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    scoring_run = models.ForeignKey(ScoringRun, on_delete=models.CASCADE, related_name="slide_jobs")
    slide = models.ForeignKey("slides.Slide", on_delete=models.CASCADE, related_name="scorings")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    status_reason = models.TextField(blank=True)
    progress = models.FloatField(default=0.0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    seconds = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["scoring_run", "slide"], name="one_job_per_slide_per_run"
            )
        ]

    def __str__(self) -> str:
        return f"slide {self.slide_id} in scoring run {self.scoring_run_id} ({self.status})"


class HeatMap(models.Model):
    """A slide's tumour-probability raster (one value per stride cell), written atomically."""

    slide = models.ForeignKey("slides.Slide", on_delete=models.CASCADE, related_name="heatmaps")
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="heatmaps"
    )
    secondary_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    scoring_run = models.ForeignKey(
        ScoringRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="heatmaps"
    )
    raster_path = models.CharField(max_length=1024)
    stride_px = models.FloatField(help_text="level-0 px per raster cell")
    window_px = models.FloatField(help_text="level-0 px of the classifier window")
    rows = models.PositiveIntegerField()
    cols = models.PositiveIntegerField()
    max_score = models.FloatField()
    max_x = models.FloatField(help_text="level-0 x of the highest-scoring cell's centre")
    max_y = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"heat map {self.pk} of slide {self.slide_id} (max {self.max_score:.4f})"


class NodeScore(models.Model):
    """A node's score (the maximum pixel score over its slides) from one model version."""

    node = models.ForeignKey("slides.Node", on_delete=models.CASCADE, related_name="scores")
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="node_scores"
    )
    scoring_run = models.ForeignKey(
        ScoringRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="node_scores"
    )
    score = models.FloatField()
    threshold = models.FloatField(null=True, blank=True)
    screened_positive = models.BooleanField(
        null=True, help_text="score >= threshold; null without a threshold"
    )
    max_heatmap = models.ForeignKey(
        HeatMap, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    max_x = models.FloatField(null=True, blank=True)
    max_y = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["node", "-created_at"])]

    def __str__(self) -> str:
        return f"node {self.node_id}: {self.score:.4f} by {self.model_version_id}"


class GradCam(models.Model):
    """A Grad-CAM map of one model over one slide region (level-0 px), or a class activation map
    (``method`` cam or grad-cam, see inference.cam) over a whole node image, computed on demand by
    a task on the `gpu` queue and kept: the same region, model version and method give the same
    record.
    The map and its PNG overlay are written atomically before the row says `succeeded`."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Method(models.TextChoices):
        GRAD_CAM = "grad-cam", "Grad-CAM"
        CAM = "cam", "CAM (global average pooling)"

    FINISHED = (Status.SUCCEEDED, Status.FAILED)

    slide = models.ForeignKey("slides.Slide", on_delete=models.CASCADE, related_name="gradcams")
    method = models.CharField(
        max_length=20,
        choices=Method.choices,
        default=Method.GRAD_CAM,
        help_text="a slide region: always grad-cam; a node image (whole image): cam or grad-cam",
    )
    model_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, related_name="gradcams"
    )
    x = models.PositiveIntegerField(help_text="level-0 px of the region's left edge")
    y = models.PositiveIntegerField()
    width = models.PositiveIntegerField(help_text="level-0 px")
    height = models.PositiveIntegerField()
    window_px = models.FloatField(help_text="level-0 px of the classifier window")
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    status_reason = models.TextField(blank=True)
    raster_path = models.CharField(max_length=1024, blank=True)
    overlay_path = models.CharField(max_length=1024, blank=True)
    windows = models.PositiveIntegerField(
        default=0, help_text="classifier windows the region was cut into"
    )
    max_probability = models.FloatField(
        null=True, blank=True, help_text="highest tumour probability of a window"
    )
    peak_x = models.FloatField(null=True, blank=True, help_text="level-0 x of the map's maximum")
    peak_y = models.FloatField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["slide", "model_version", "method", "x", "y", "width", "height"],
                name="one_gradcam_per_region_model_and_method",
            )
        ]

    def __str__(self) -> str:
        return f"Grad-CAM {self.pk} of slide {self.slide_id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED
