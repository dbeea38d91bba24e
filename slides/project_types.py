"""Project types: what kind of specimen a case holds, and the patch grid and label names it uses.

Every per-type default lives here and nowhere else; `annotations.datasets.create_snapshot`, the
`make_dataset` command and the case pages read them.

- **lymph node** (seed 002, the default): 40 x 40 px patches at 1.0 µm/px, scored at stride 10
  px; training labels "non-tumour" / "tumour".
- **biopsy** (seed 000, nasopharyngeal biopsies): 256 x 256 px patches, training labels "benign" /
  "tumour". The seed text gives the patch size but no magnification, so the µm/px is our choice:
  0.5 µm/px, the usual 20x scanning resolution of diagnostic H&E slides, which makes a patch 128 µm
  across (a few dozen cells, enough to see tumour-cell nests among the lymphocytes). Scoring stride
  64 px, a quarter of the window, like the lymph-node grid (10 of 40).

The annotation-to-label path is the same for both (`annotations.labels`): a patch with any pixel
of a tumour-class polygon is tumour, and the rest of the tissue is the other training class, which
a biopsy calls "benign" rather than "non-tumour". The label class keys on annotations stay the
same (a pathologist draws "tumour" and "non-tumour" polygons on either kind of case).

A biopsy case keeps the Case → Node → Slide data model; its pages call a node a "specimen".
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models


class ProjectType(models.TextChoices):
    """The choices of `Case.project_type`."""

    LYMPH_NODE = "lymph-node", "Lymph node"
    BIOPSY = "biopsy", "Biopsy"


@dataclass(frozen=True)
class ProjectDefaults:
    """The patch grid and label names of one project type."""

    key: str
    label: str
    patch_px: int  # patch side, px at target_mpp
    target_mpp: float  # µm per pixel of the patches
    scoring_stride_px: int  # dense-scanning stride, px at target_mpp
    training_classes: tuple[str, str]  # (label 0, label 1): the other class, then tumour
    specimen: str  # what the case's parts are called on its pages
    specimens: str


DEFAULTS: dict[str, ProjectDefaults] = {
    ProjectType.LYMPH_NODE: ProjectDefaults(
        key=ProjectType.LYMPH_NODE.value,
        label="Lymph node",
        patch_px=40,
        target_mpp=1.0,
        scoring_stride_px=10,
        training_classes=("non-tumour", "tumour"),
        specimen="node",
        specimens="nodes",
    ),
    ProjectType.BIOPSY: ProjectDefaults(
        key=ProjectType.BIOPSY.value,
        label="Biopsy",
        patch_px=256,
        target_mpp=0.5,
        scoring_stride_px=64,
        training_classes=("benign", "tumour"),
        specimen="specimen",
        specimens="specimens",
    ),
}


def defaults_for(project_type: str) -> ProjectDefaults:
    """The defaults of `project_type`; `ValueError` naming the known types if it is unknown."""
    try:
        return DEFAULTS[ProjectType(project_type)]
    except ValueError:
        known = ", ".join(repr(t.value) for t in ProjectType)
        raise ValueError(f"unknown project type {project_type!r} (use {known})") from None


def parse_project_type(text: str) -> str:
    """A project type from what a person typed ("biopsy", "Lymph node", "lymph_node"); `ValueError`
    naming the known types otherwise."""
    word = (text or "").strip().lower().replace("_", "-").replace(" ", "-")
    return defaults_for(word).key
