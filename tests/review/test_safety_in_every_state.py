"""The safety rule in every state: no threshold, no score, a score of an older model.

A node must never be confirmed negative before the person deciding has opened its highest-scoring
regions: without a locked threshold every region of the node is required (nothing is
negative-screened), and a node the live model has not scored asks for each of its slides.
"""

from __future__ import annotations

import pytest

from review import services
from review.models import ReviewDecision

from .conftest import client_for
from .factories import make_heatmap, make_model_version, make_slide, score_node

pytestmark = pytest.mark.django_db

VIEWPORT_ZOOM = 0.5  # screen px per level-0 px: zoomed in enough to count as viewed


def post(client, url, body):
    return client.post(url, body, content_type="application/json")


def confirm_negative(client, node):
    return post(
        client,
        f"/api/nodes/{node.pk}/decisions/",
        {"status": "confirmed_negative", "based_on": None},
    )


@pytest.fixture
def hot_node(people):
    """A node scoring 1.00 under a live model that has no locked threshold."""
    from tests.factories import make_case

    version = make_model_version("no-threshold", threshold=None)
    case = make_case(people.lab, "S26-0900", nodes=("node hot",))
    node = case.nodes.get()
    slide = make_slide(node, "hot-1")
    heatmap = make_heatmap(slide, version, max_score=1.0, x=1500, y=1200)
    score_node(node, version, 1.0, heatmap=heatmap)
    return node


def test_without_a_threshold_a_node_at_one_cannot_be_confirmed_negative_unseen(people, hot_node):
    client = client_for(people.pathologist)
    regions = client.get(f"/api/nodes/{hot_node.pk}/viewed-regions/").json()["regions"]
    assert regions and all(r["required"] for r in regions)

    refused = confirm_negative(client, hot_node)
    assert refused.status_code == 400
    body = refused.json()
    assert body["code"] == "regions_not_viewed"
    assert "no locked threshold" in body["detail"]
    assert not ReviewDecision.objects.filter(node=hot_node).exists()

    # Viewing the region (zoomed in, on screen) lets the decision through.
    region = regions[0]
    x, y = region["x"], region["y"]
    viewed = post(
        client,
        f"/api/nodes/{hot_node.pk}/viewed-regions/",
        {
            "region": region["key"],
            "slide": region["slide"],
            "viewport": [x - 200, y - 200, x + 200, y + 200],
            "zoom": VIEWPORT_ZOOM,
        },
    )
    assert viewed.status_code == 201, viewed.content
    saved = confirm_negative(client, hot_node)
    assert saved.status_code == 201
    assert saved.json()["screened_positive"] is None  # no threshold: not negative-screened


def test_a_region_viewed_by_someone_else_does_not_count(people, hot_node):
    region = services.node_regions(hot_node)[0]
    services.record_viewed_region(node=hot_node, user=people.lab_lead, region=region.key)
    refused = confirm_negative(client_for(people.pathologist), hot_node)
    assert refused.status_code == 400 and refused.json()["code"] == "regions_not_viewed"


def test_an_unscored_node_asks_for_each_of_its_slides(people, scored):
    node = scored.nodes["node D"]  # the live model has not scored it
    client = client_for(people.pathologist)
    regions = services.node_regions(node)
    assert [r.slide_id for r in regions] == list(node.slides.values_list("pk", flat=True))
    assert all(r.required and r.x is None for r in regions)

    refused = confirm_negative(client, node)
    assert refused.status_code == 400
    assert "has not scored it" in refused.json()["detail"]

    # Opening the slide zoomed out does not count; zoomed in anywhere on it does.
    slide = node.slides.get()
    too_far = post(
        client,
        f"/api/nodes/{node.pk}/viewed-regions/",
        {"region": regions[0].key, "viewport": [0, 0, 4000, 3000], "zoom": 0.01},
    )
    assert too_far.status_code == 400 and too_far.json()["code"] == "not_shown"
    assert confirm_negative(client, node).status_code == 400
    seen = post(
        client,
        f"/api/nodes/{node.pk}/viewed-regions/",
        {"region": regions[0].key, "viewport": [0, 0, 800, 600], "zoom": VIEWPORT_ZOOM},
    )
    assert seen.status_code == 201, seen.content
    assert seen.json()["slide"] == slide.pk
    assert confirm_negative(client, node).status_code == 201


def test_a_score_of_an_older_model_does_not_excuse_viewing(people, scored):
    node = scored.nodes["node C"]  # 0.20 under the old live model: negative-screened
    make_model_version("newer", threshold=0.5)  # now live; node C has no score of it
    refused = confirm_negative(client_for(people.pathologist), node)
    assert refused.status_code == 400
    assert "has not scored it" in refused.json()["detail"]


def test_with_a_threshold_a_negative_screened_node_needs_no_viewing(people, scored):
    node = scored.nodes["node C"]  # 0.20 < 0.5
    assert confirm_negative(client_for(people.pathologist), node).status_code == 201


def test_the_queue_lists_the_required_regions_of_an_unscored_node(people, scored):
    from review.queues import case_queue

    _, rows = case_queue(case=scored.case, user=people.pathologist)
    unscored = next(r for r in rows if r.node.label == "node D")
    assert unscored.score is None
    assert [r.key for r in unscored.required_regions] == [
        f"sl{pk}" for pk in unscored.node.slides.values_list("pk", flat=True)
    ]


def test_triage_says_why_it_is_empty_without_a_threshold(people, hot_node):
    page = client_for(people.lab_lead).get("/review/triage/")
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="triage-why-empty"' in text and "has no locked threshold" in text


def test_triage_says_why_it_is_empty_without_a_live_model(people):
    page = client_for(people.lab_lead).get("/review/triage/")
    assert "no model is live yet" in page.content.decode()
