"""Cases, nodes and slides over the REST API, including uploads."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from slides.models import Slide
from tests.factories import gradient_image, make_case, write_pyramid_tiff


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_case_list_is_scoped_to_the_users_labs(people, case):
    make_case(people.other_lab, "OTHER-1")
    mine = _client(people.pathologist).get("/api/cases/").json()
    assert [c["accession_number"] for c in mine["results"]] == ["S26-0001"]
    theirs = _client(people.outsider).get("/api/cases/").json()
    assert [c["accession_number"] for c in theirs["results"]] == ["OTHER-1"]
    assert Client().get("/api/cases/").status_code == 403


def test_pages_list_cases_and_slides(people, case, tiny_tiff):
    from slides.ingest import register_slide

    slide = register_slide(node=case.nodes.first(), path=tiny_tiff)
    client = _client(people.pathologist)
    page = client.get(reverse("case-list")).content.decode()
    assert "S26-0001" in page
    detail = client.get(reverse("case-detail", args=[case.pk])).content.decode()
    assert "level II, node 1" in detail and reverse("slide-viewer", args=[slide.pk]) in detail
    assert _client(people.outsider).get(reverse("case-detail", args=[case.pk])).status_code == 404


def test_upload_registers_a_slide(people, case, tmp_path):
    path = write_pyramid_tiff(tmp_path / "up.tiff", gradient_image(512, 512), mpp=0.25)
    node = case.nodes.first()
    with open(path, "rb") as fh:
        response = _client(people.pathologist).post("/api/slides/", {"node": node.pk, "file": fh})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["width"] == 512 and body["mpp"] == pytest.approx(0.25, rel=1e-3)
    assert "file_path" not in body
    assert Slide.objects.get().node == node


def test_upload_of_corrupt_file_is_400_and_leaves_nothing(people, case, tmp_path, settings):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"\x00" * 5000)
    with open(bad, "rb") as fh:
        response = _client(people.pathologist).post(
            "/api/slides/", {"node": case.nodes.first().pk, "file": fh}
        )
    assert response.status_code == 400
    assert "broken.svs" in response.json()["file"][0]
    assert not Slide.objects.exists()
    uploads = settings.SLIDE_STORAGE_DIR / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_upload_refuses_wrong_type_oversize_and_foreign_node(people, case, tmp_path, settings):
    client = _client(people.pathologist)
    txt = tmp_path / "x.exe"
    txt.write_bytes(b"MZ")
    with open(txt, "rb") as fh:
        response = client.post("/api/slides/", {"node": case.nodes.first().pk, "file": fh})
    assert response.status_code == 400 and "unsupported file type" in response.json()["file"][0]

    settings.MAX_UPLOAD_BYTES = 100
    path = write_pyramid_tiff(tmp_path / "big.tiff", gradient_image(256, 256), mpp=0.5)
    with open(path, "rb") as fh:
        response = client.post("/api/slides/", {"node": case.nodes.first().pk, "file": fh})
    assert response.status_code == 413 and "limit" in response.json()["file"][0]

    other = make_case(people.other_lab, "OTHER-2")
    settings.MAX_UPLOAD_BYTES = 10**9
    with open(path, "rb") as fh:
        response = client.post("/api/slides/", {"node": other.nodes.first().pk, "file": fh})
    assert response.status_code == 400 and "node" in response.json()
    assert not Slide.objects.exists()
