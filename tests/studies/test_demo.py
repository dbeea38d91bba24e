"""The demo's reader study: opened once over the demo lab's node images, read by the pathologist."""

from __future__ import annotations

from django.test import Client

from slides.demo import ensure_users, load_demo_node_images
from studies.demo import DEMO_STUDY, ensure_demo_study
from studies.models import ReaderStudy


def test_the_demo_opens_one_blind_study_of_its_node_images(people, tmp_path):
    lab = people.lab
    ensure_users(lab)
    assert ensure_demo_study(lab) is None  # no node images yet: nothing to read
    report = load_demo_node_images(lab=lab, folder=tmp_path / "demo", progress=lambda _m: None)
    study = ensure_demo_study(lab)
    assert study.name == DEMO_STUDY and study.status == ReaderStudy.Status.OPEN
    assert sorted(study.images.values_list("slide_id", flat=True)) == sorted(
        s.pk for s in report.imported
    )
    assert list(study.readers.values_list("user__username", flat=True)) == ["pathologist"]
    assert ensure_demo_study(lab).pk == study.pk  # idempotent
    assert ReaderStudy.objects.count() == 1
    reader = Client()
    assert reader.login(username="pathologist", password="pathologist-demo-2026")
    assert reader.get(f"/studies/{study.pk}/read/").status_code == 200
