"""Labs (sites), cases, lymph nodes and their slides."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from .project_types import ProjectDefaults, ProjectType, defaults_for


class Role(models.TextChoices):
    """A user's role, held as membership of the Django group of the same name."""

    PATHOLOGIST = "pathologist", "Pathologist"
    LAB_LEAD = "lab lead", "Lab lead"
    ADMIN = "admin", "Admin"
    #: Platform operator: promotes and rolls back the live models every lab screens with, and
    #: chooses their operating points (see slides.access.may_promote_models). Held with admin.
    PLATFORM_ADMIN = "platform admin", "Platform admin"


class Lab(models.Model):
    """A laboratory (site). Users see only the cases of labs they belong to."""

    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=200)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="labs", blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Case(models.Model):
    """A patient's case: one accession, several lymph nodes (or, for a biopsy, specimens).

    `project_type` picks the patch grid and label names of its datasets (`slides.project_types`).
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        SIGNED_OFF = "signed off", "Signed off"

    lab = models.ForeignKey(Lab, on_delete=models.PROTECT, related_name="cases")
    accession_number = models.CharField(max_length=64, unique=True)
    patient_pseudonym = models.CharField(max_length=128, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OPEN)
    project_type = models.CharField(
        max_length=20,
        choices=ProjectType.choices,
        default=ProjectType.LYMPH_NODE,
        help_text="Lymph node (40 px patches at 1.0 µm/px) or biopsy (256 px at 0.5 µm/px)",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.accession_number

    @property
    def project(self) -> ProjectDefaults:
        """The patch grid and label names of this case's project type."""
        return defaults_for(self.project_type)


class Node(models.Model):
    """A lymph node of a case, e.g. "level II, node 3"."""

    class GroundTruth(models.TextChoices):
        UNKNOWN = "unknown", "Unknown"
        NEGATIVE = "negative", "Negative"
        POSITIVE = "positive", "Positive"

    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="nodes")
    label = models.CharField(max_length=120)
    ground_truth = models.CharField(
        max_length=10, choices=GroundTruth.choices, default=GroundTruth.UNKNOWN
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["case_id", "label"]
        constraints = [
            models.UniqueConstraint(fields=["case", "label"], name="node_label_unique_in_case")
        ]

    def __str__(self) -> str:
        return f"{self.case.accession_number} / {self.label}"


class Slide(models.Model):
    """A digitised slide of a node, registered with the metadata large-image reads from it.

    A row may also hold a plain image of the node (CT, ultrasound or another image, see
    `slides.node_images`): `modality` says which; whole slides keep `modality="slide"`.
    """

    class Modality(models.TextChoices):
        SLIDE = "slide", "Whole slide"
        CT = "ct", "CT"
        ULTRASOUND = "ultrasound", "Ultrasound"
        IMAGE = "image", "Other image"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="slides")
    name = models.CharField(max_length=255)
    file_path = models.CharField(max_length=1024, help_text="File, or folder for a DICOM series")
    source = models.CharField(max_length=32, help_text="large-image source that opens it")
    vendor = models.CharField(max_length=64, blank=True)
    checksum = models.CharField(
        max_length=64, db_index=True, help_text="SHA-256 of the file(s); unique within a lab"
    )
    lab = models.ForeignKey(
        Lab,
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The lab the file was registered in: a lab registers a file once; other labs "
        "may register the same file",
    )
    file_size = models.BigIntegerField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    levels = models.PositiveSmallIntegerField()
    tile_width = models.PositiveIntegerField()
    tile_height = models.PositiveIntegerField()
    mpp_x = models.FloatField(null=True, blank=True, help_text="µm per pixel at level 0")
    mpp_y = models.FloatField(null=True, blank=True)
    magnification = models.FloatField(null=True, blank=True)
    associated_images = models.JSONField(default=list, blank=True)
    synthetic = models.BooleanField(default=False, help_text="Generated slide, never real tissue")
    modality = models.CharField(
        max_length=12,
        choices=Modality.choices,
        default=Modality.SLIDE,
        help_text="Whole slide, or a plain image of the node (CT, ultrasound, other)",
    )
    window_center = models.FloatField(
        null=True, blank=True, help_text="Default display window centre (CT: HU, from DICOM)"
    )
    window_width = models.FloatField(
        null=True, blank=True, help_text="Default display window width (CT: HU, from DICOM)"
    )
    imported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    imported_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["node_id", "name"]
        constraints = [
            models.UniqueConstraint(fields=["lab", "checksum"], name="slide_checksum_unique_in_lab")
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        if self.lab_id is None and self.node_id is not None:
            self.lab_id = (
                Case.objects.filter(nodes__id=self.node_id).values_list("lab_id", flat=True).first()
            )
        super().save(*args, **kwargs)

    @property
    def is_node_image(self) -> bool:
        """A plain image (CT, ultrasound, other) rather than a whole slide."""
        return self.modality != self.Modality.SLIDE

    @property
    def mpp(self) -> float | None:
        """Mean µm per pixel at level 0, if known."""
        if self.mpp_x and self.mpp_y:
            return (self.mpp_x + self.mpp_y) / 2
        return self.mpp_x or self.mpp_y
