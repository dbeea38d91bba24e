"""External readers (an active user with a role and no lab, e.g. a radiologist invited for one
study) read fully blind: the study's images through the study's own routes, nothing else of the
lab — no case pages, no slide routes, so no ground truth, no heat maps, no names."""

from __future__ import annotations

from django.test import Client

from slides.ingest import register_slide
from slides.models import Role
from tests.factories import PASSWORD, make_user


def _client(user) -> Client:
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


def test_an_external_reader_sees_the_study_images_and_nothing_else(people, case, tiny_tiff):
    slide = register_slide(node=case.nodes.first(), path=tiny_tiff)
    external = make_user("radiologist", role=Role.PATHOLOGIST, lab=None)
    lead = _client(people.lab_lead)
    body = {"name": "External read", "lab": people.lab.pk, "images": [slide.pk]}
    # a member of another lab is no external reader: refused, naming the user
    refused = lead.post(
        "/api/studies/", {**body, "readers": [people.outsider.pk]}, content_type="application/json"
    )
    assert refused.status_code == 400 and str(people.outsider.pk) in refused.json()["readers"]
    created = lead.post(
        "/api/studies/", {**body, "readers": [external.pk]}, content_type="application/json"
    )
    assert created.status_code == 201, created.content
    sid = created.json()["id"]
    assert lead.post(f"/api/studies/{sid}/open/").status_code == 200

    reader = _client(external)
    state = reader.get(f"/api/studies/{sid}/reading/").json()
    image = state["next"]["image"]
    source = reader.get(f"/api/studies/{sid}/reading/images/{image}/tilesource/").json()
    tile_url = source["tileUrl"].format(z=0, x=0, y=0)
    assert tile_url == f"/api/studies/{sid}/reading/images/{image}/tiles/0/0/0.jpg"
    tile = reader.get(tile_url)
    assert tile.status_code == 200 and tile["Content-Type"] == "image/jpeg"
    assert tile.content[:2] == b"\xff\xd8"
    assert reader.get(f"/studies/{sid}/read/").status_code == 200
    answer = reader.post(
        f"/api/studies/{sid}/reading/answers/",
        {"image": image, "label": "benign"},
        content_type="application/json",
    )
    assert answer.status_code == 201, answer.content
    # nothing of the lab outside the study
    assert reader.get(f"/api/slides/{slide.pk}/tiles/0/0/0.jpg").status_code == 404
    assert reader.get(f"/api/slides/{slide.pk}/tilesource/").status_code == 404
    assert reader.get(f"/cases/{case.pk}/").status_code == 404
    assert reader.get("/api/cases/").json()["results"] == []
    # the study's tiles are the readers' alone
    bystander = _client(people.pathologist)
    assert bystander.get(tile_url).status_code == 404
    assert lead.get(tile_url).status_code == 404  # managers too
    assert Client().get(tile_url).status_code in (302, 403)
