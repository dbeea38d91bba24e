"""The demo's reader study: the demo lab's CT and ultrasound images, read blind by the demo
pathologist, managed by the demo lab lead (`manage.py load_demo`; idempotent)."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from slides.models import Lab, Slide

from .models import ReaderStudy
from .services import create_study, open_study

DEMO_STUDY = "Demo: CT and ultrasound nodes, read blind"


def ensure_demo_study(lab: Lab, *, manager: str = "lablead", reader: str = "pathologist"):
    """Create and open the demo study once; returns it (None when the lab has no node images)."""
    existing = ReaderStudy.objects.filter(lab=lab, name=DEMO_STUDY).first()
    if existing is not None:
        return existing
    images = list(
        Slide.objects.filter(node__case__lab=lab)
        .exclude(modality=Slide.Modality.SLIDE)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if not images:
        return None
    users = get_user_model().objects
    lead, pathologist = users.get(username=manager), users.get(username=reader)
    study = create_study(
        user=lead,
        data={
            "name": DEMO_STUDY,
            "lab": lab.pk,
            "instructions": "Metastatic or benign? Judge each node image on its own.",
            "images": images,
            "readers": [pathologist.pk],
        },
    )
    return open_study(study=study, user=lead)
