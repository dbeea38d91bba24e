"""Clinical data per case (seed 001: age, tumour size, ER, PR, HER2, Ki-67, histological type,
number of tumour foci) and the case's axillary node status (N0, N+(1-2), N+(>2)).

The variables are rows of ClinicalField, so an admin adds one in the admin site without a
migration. A case's clinical data is append-only: every save is a new ClinicalRecord, the latest
one is current and the earlier ones are its history (who entered what, when, from where).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class NodeStatus(models.TextChoices):
    """Axillary lymph node status as in seed 001 (BALNMP): by the number of positive nodes."""

    N0 = "N0", "N0 (no positive node)"
    N_PLUS_1_2 = "N+(1-2)", "N+(1-2) (one or two positive nodes)"
    N_PLUS_GT_2 = "N+(>2)", "N+(>2) (three or more positive nodes)"


class ClinicalField(models.Model):
    """One clinical variable: how it is entered, validated and shown."""

    class Kind(models.TextChoices):
        NUMERIC = "numeric", "Numeric"
        CATEGORICAL = "categorical", "Categorical"
        BOOLEAN = "boolean", "Yes / no"

    key = models.SlugField(
        max_length=40, unique=True, help_text="Column name in CSV files and key in the API"
    )
    label = models.CharField(max_length=120)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    allowed_values = models.JSONField(
        default=list, blank=True, help_text="Categorical only: the values a case may take"
    )
    min_value = models.FloatField(null=True, blank=True, help_text="Numeric only")
    max_value = models.FloatField(null=True, blank=True, help_text="Numeric only")
    integer = models.BooleanField(default=False, help_text="Numeric only: whole numbers")
    unit = models.CharField(max_length=20, blank=True)
    required = models.BooleanField(default=False)
    order = models.PositiveSmallIntegerField(default=0)
    active = models.BooleanField(default=True, help_text="Inactive fields are no longer entered")

    class Meta:
        ordering = ["order", "key"]

    def __str__(self) -> str:
        return self.label


class ClinicalRecord(models.Model):
    """A case's clinical values and node status as entered once (append-only; latest is current)."""

    class Source(models.TextChoices):
        FORM = "form", "Form"
        API = "api", "API"
        CSV = "csv", "CSV import"

    case = models.ForeignKey(
        "slides.Case", on_delete=models.CASCADE, related_name="clinical_records"
    )
    values = models.JSONField(default=dict, blank=True, help_text="field key -> validated value")
    positive_nodes = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Number of positive axillary lymph nodes"
    )
    node_status = models.CharField(max_length=10, choices=NodeStatus.choices, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.API)
    entered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    entered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-entered_at", "-id"]
        indexes = [models.Index(fields=["case", "-id"])]

    def __str__(self) -> str:
        return f"clinical record {self.pk} of case {self.case_id}"

    def save(self, *args, **kwargs) -> None:
        """Append-only: a record is written once; a change is a new record."""
        if self.pk is not None:
            raise ValueError("clinical records are append-only: create a new record instead")
        super().save(*args, **kwargs)
