"""Readers who are members of the study's lab read blind too: while the study is open, the cases
holding its images are hidden from them everywhere (case and node pages and API, slides, tiles,
heat maps, review queues and triage), as another lab's cases are; the study's own reading routes
still show them the images. They see the cases again once the study closes. Nobody else loses
anything."""

from __future__ import annotations

from slides.access import cases_for, nodes_for, slides_for
from slides.models import Node
from tests.factories import make_case
from tests.review.factories import make_slide

from .conftest import create_study


def _urls(case, node, slide) -> list[str]:
    return [
        f"/cases/{case.pk}/",
        f"/api/cases/{case.pk}/",
        f"/api/nodes/{node.pk}/",
        f"/api/slides/{slide.pk}/",
        f"/api/slides/{slide.pk}/tilesource/",
        f"/api/slides/{slide.pk}/annotations/",
        f"/slides/{slide.pk}/view/",
        f"/review/cases/{case.pk}/",
    ]


def test_a_lab_member_reading_an_open_study_does_not_see_its_cases_until_it_closes(setup):
    people = setup.people
    reader = setup.readers["reader2"]  # a pathologist of the study's lab
    studied = setup.slides[0]
    case, node = studied.node.case, studied.node
    other_case = make_case(people.lab, "S26-NOT-STUDIED", nodes=("level III node 1",))
    other_node = other_case.nodes.first()
    other_slide = make_slide(other_node, name="not-studied")
    client = setup.client_for(reader)
    bystander = setup.client_for(people.pathologist)  # reader1: dropped from this study below
    lead = setup.lead_client

    sid = create_study(setup, readers=[reader.pk])["id"]
    # a draft blinds nobody: the reader still sees the case
    for url in _urls(case, node, studied):
        assert client.get(url).status_code == 200, url
    assert case.pk in {c["id"] for c in client.get("/api/cases/").json()["results"]}

    assert lead.post(f"/api/studies/{sid}/open/").status_code == 200
    for url in _urls(case, node, studied):
        assert client.get(url).status_code == 404, url
    listed = {c["id"] for c in client.get("/api/cases/").json()["results"]}
    assert case.pk not in listed and other_case.pk in listed
    nodes = {n["id"] for n in client.get("/api/nodes/").json()["results"]}
    assert node.pk not in nodes and other_node.pk in nodes
    assert set(cases_for(reader)) == {other_case}
    assert not slides_for(reader).filter(node__case=case).exists()
    assert not nodes_for(reader).filter(case=case).exists()
    # the lab's other cases, and everybody who does not read the study, are untouched
    for url in _urls(other_case, other_node, other_slide):
        assert client.get(url).status_code == 200, url
    for who in (bystander, lead):
        for url in _urls(case, node, studied):
            assert who.get(url).status_code == 200, url
    # the study's own routes still show the reader its images
    state = client.get(f"/api/studies/{sid}/reading/").json()
    image = state["next"]["image"]
    assert client.get(f"/api/studies/{sid}/reading/images/{image}/tilesource/").status_code == 200
    assert client.get(f"/studies/{sid}/read/").status_code == 200

    assert lead.post(f"/api/studies/{sid}/close/").status_code == 200
    for url in _urls(case, node, studied):
        assert client.get(url).status_code == 200, url


def test_blinding_covers_only_the_cases_of_the_studys_images(setup):
    """A case with one studied node and one other node is hidden as a whole (its page shows the
    other node's ground truth beside the studied one)."""
    reader = setup.readers["reader3"]
    case = setup.slides[0].node.case
    extra = Node.objects.create(case=case, label="level V node 9", ground_truth="positive")
    sid = create_study(setup, images=[setup.slides[0].pk], readers=[reader.pk])["id"]
    assert setup.lead_client.post(f"/api/studies/{sid}/open/").status_code == 200
    assert not nodes_for(reader).filter(pk=extra.pk).exists()
    assert setup.client_for(reader).get(f"/api/nodes/{extra.pk}/").status_code == 404
