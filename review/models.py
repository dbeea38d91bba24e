"""Review records: decisions on nodes, regions viewed, case sign-offs, lab settings, corrections.

Decisions are append-only. A node's current status is its latest decision (none: unreviewed). Each
decision names the decision it was based on (`previous`); the database allows one successor per
decision and one first decision per node, so of two reviewers deciding the same node from the
same state exactly one insert succeeds, whatever the isolation level or backend.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class AppendOnly(Exception):
    """An attempt to change or delete a record that is only ever appended to."""


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):  # noqa: D102 - refuse bulk edits
        raise AppendOnly(f"{self.model._meta.verbose_name_plural} are append-only")

    def delete(self):  # noqa: D102 - refuse bulk deletes (cascades from a deleted node still work)
        raise AppendOnly(f"{self.model._meta.verbose_name_plural} are append-only")


class AppendOnlyModel(models.Model):
    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise AppendOnly(f"{self._meta.verbose_name} {self.pk} is append-only: add a new one")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnly(f"{self._meta.verbose_name} {self.pk} is append-only")


class ReviewStatus(models.TextChoices):
    """What a reviewer says about a node."""

    UNREVIEWED = "unreviewed", "Unreviewed"
    CONFIRMED_POSITIVE = "confirmed_positive", "Confirmed positive"
    CONFIRMED_NEGATIVE = "confirmed_negative", "Confirmed negative"
    NEEDS_FURTHER_WORK = "needs_further_work", "Needs further work"


#: Statuses that settle a node: a case signs off only when every node holds one of these.
FINAL_STATUSES = (ReviewStatus.CONFIRMED_POSITIVE, ReviewStatus.CONFIRMED_NEGATIVE)


class FurtherWork(models.TextChoices):
    NONE = "", "—"
    IHC = "ihc", "Immunohistochemistry"
    SECOND_OPINION = "second_opinion", "Second opinion"
    LEVELS = "levels", "Deeper levels"
    OTHER = "other", "Other"


class ReviewDecision(AppendOnlyModel):
    """One reviewer's decision on one node, with what they saw when they made it."""

    node = models.ForeignKey("slides.Node", on_delete=models.CASCADE, related_name="decisions")
    previous = models.OneToOneField(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="next",
        help_text="The decision this one was based on (none for a node's first decision)",
    )
    status = models.CharField(max_length=24, choices=ReviewStatus.choices)
    further_work = models.CharField(max_length=20, choices=FurtherWork.choices, blank=True)
    note = models.TextField(blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.SET_NULL,
        related_name="review_decisions",
    )
    user_name = models.CharField(max_length=150, help_text="kept if the user is removed")
    created_at = models.DateTimeField(auto_now_add=True)
    # What the model said when the decision was made (the live primary model's latest score).
    node_score = models.ForeignKey(
        "inference.NodeScore", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    model_version = models.ForeignKey(
        "inference.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    score = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    screened_positive = models.BooleanField(null=True)
    # The regions at or above the threshold, and whether the deciding user had opened each one.
    regions = models.JSONField(default=list, blank=True)
    region_rule = models.BooleanField(
        default=True, help_text="Whether the lab required every region viewed before a negative"
    )
    amendment = models.BooleanField(default=False, help_text="Made after the case was signed off")
    reason = models.TextField(blank=True, help_text="Why a signed-off decision was amended")

    class Meta:
        ordering = ["node_id", "id"]
        indexes = [models.Index(fields=["node", "-id"], name="review_decision_node_latest")]
        constraints = [
            models.UniqueConstraint(
                fields=["node"],
                condition=Q(previous__isnull=True),
                name="review_one_first_decision",
            ),
            models.CheckConstraint(
                condition=Q(status__in=ReviewStatus.values), name="review_decision_status_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_status_display()} on node {self.node_id} by {self.user_name}"

    @property
    def viewed_region_keys(self) -> list[str]:
        return [r["key"] for r in self.regions if r.get("viewed")]


class ViewedRegion(AppendOnlyModel):
    """A reviewer opened a region of a node in the viewer (one row per opening); the review
    viewer reports it once the region was on screen at a legible zoom, with what it showed."""

    node = models.ForeignKey("slides.Node", on_delete=models.CASCADE, related_name="viewed_regions")
    heatmap = models.ForeignKey(
        "inference.HeatMap", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    slide = models.ForeignKey(
        "slides.Slide", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    region_key = models.CharField(max_length=120)
    x = models.FloatField(null=True, blank=True, help_text="level-0 x of the centre viewed")
    y = models.FloatField(null=True, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    viewed_at = models.DateTimeField(auto_now_add=True)
    # What the review viewer showed when it reported the region (none: opened by key alone).
    viewport = models.JSONField(
        null=True, blank=True, help_text="[x0, y0, x1, y1] of the view, level-0 px of the slide"
    )
    zoom = models.FloatField(null=True, blank=True, help_text="screen px per level-0 px")

    class Meta:
        ordering = ["node_id", "id"]
        indexes = [models.Index(fields=["node", "user", "region_key"], name="review_viewed_lookup")]

    def __str__(self) -> str:
        return f"{self.region_key} of node {self.node_id} viewed by {self.user_id}"


class CaseSignOff(AppendOnlyModel):
    """A case signed off (its decisions locked) or reopened, by a lab lead."""

    class Action(models.TextChoices):
        SIGNED_OFF = "signed_off", "Signed off"
        REOPENED = "reopened", "Reopened"

    case = models.ForeignKey("slides.Case", on_delete=models.CASCADE, related_name="sign_offs")
    action = models.CharField(max_length=12, choices=Action.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    user_name = models.CharField(max_length=150)
    at = models.DateTimeField(auto_now_add=True)
    reason = models.TextField(blank=True)
    decisions = models.JSONField(
        default=dict, blank=True, help_text="{node id: decision id} in force at sign-off"
    )

    class Meta:
        ordering = ["case_id", "id"]

    def __str__(self) -> str:
        return f"case {self.case_id} {self.action} by {self.user_name}"


class ReviewSettings(models.Model):
    """Review settings of a lab. Changed only through `review.services.set_lab_settings` (audited)."""

    lab = models.OneToOneField(
        "slides.Lab", on_delete=models.CASCADE, related_name="review_settings"
    )
    require_region_views = models.BooleanField(
        default=True,
        help_text="A node cannot be confirmed negative before every region at or above the "
        "threshold has been opened in the viewer by the deciding reviewer",
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "review settings"

    def __str__(self) -> str:
        return f"review settings of {self.lab}"


class ReviewerCorrection(AppendOnlyModel):
    """A high-scoring region a reviewer marked "not tumour": the hard-negative annotation it became."""

    annotation = models.OneToOneField(
        "annotations.Annotation", on_delete=models.CASCADE, related_name="reviewer_correction"
    )
    node = models.ForeignKey("slides.Node", on_delete=models.CASCADE, related_name="corrections")
    node_score = models.ForeignKey(
        "inference.NodeScore", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    region_key = models.CharField(max_length=120, blank=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["node_id", "id"]

    def __str__(self) -> str:
        return f"correction {self.pk} (annotation {self.annotation_id}) on node {self.node_id}"
