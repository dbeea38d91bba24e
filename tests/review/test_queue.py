"""The case queue: nodes by the live primary model's newest score, ties by label, unscored last."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import pytest

from review import services
from review.queues import case_queue
from tests.factories import make_case

from .conftest import client_for
from .factories import make_model_version, make_slide, score_node

pytestmark = pytest.mark.django_db


def labels(rows) -> list[str]:
    return [r.node.label for r in rows]


def test_queue_orders_by_score_with_unscored_last(people, scored):
    version, rows = case_queue(case=scored.case, user=people.pathologist)
    assert version == scored.version
    assert labels(rows) == ["node B", "node A", "node C", "node D"]
    assert [r.screened for r in rows] == ["positive", "positive", "negative", "not scored"]
    assert rows[-1].score is None and rows[-1].status == "unreviewed"


def test_ties_are_broken_by_node_label(people, version):
    case = make_case(people.lab, "S26-0200", nodes=("node 3", "node 1", "node 2", "node 0"))
    nodes = {n.label: n for n in case.nodes.all()}
    for label in ("node 3", "node 1", "node 2"):
        score_node(nodes[label], version, 0.7)
    score_node(nodes["node 0"], version, 0.1)
    _, rows = case_queue(case=case, user=people.pathologist)
    assert labels(rows) == ["node 1", "node 2", "node 3", "node 0"]
    # Stable: asking again gives the same order.
    assert labels(case_queue(case=case, user=people.pathologist)[1]) == labels(rows)


def test_rescoring_mid_review_reorders_by_the_newest_live_score(people, scored):
    node_c = scored.nodes["node C"]
    decision = services.decide(
        node=scored.nodes["node B"],
        user=people.pathologist,
        status="confirmed_positive",
        based_on=None,
    )
    # A new model is promoted and rescores node C high, node B low; node A is not rescored yet.
    v2 = make_model_version("primary-v2", threshold=0.4)
    score_node(node_c, v2, 0.95)
    score_node(scored.nodes["node B"], v2, 0.3)
    _, rows = case_queue(case=scored.case, user=people.pathologist)
    assert labels(rows) == ["node C", "node B", "node A", "node D"]
    assert rows[1].decision == decision  # decisions survive the reordering
    assert rows[2].score is None  # node A has no score from the live model yet
    # The same model scoring again: its newest score counts.
    score_node(node_c, v2, 0.05)
    _, rows = case_queue(case=scored.case, user=people.pathologist)
    assert labels(rows) == ["node B", "node C", "node A", "node D"]
    assert rows[1].screened == "negative"


def test_scores_of_non_live_models_do_not_count(people, scored):
    old = make_model_version("old", threshold=0.5, live=False)
    score_node(scored.nodes["node D"], old, 0.99)
    _, rows = case_queue(case=scored.case, user=people.pathologist)
    assert labels(rows)[-1] == "node D"


def test_without_a_live_model_every_node_is_not_scored(people, scored):
    scored.version.is_live = False
    scored.version.save()
    version, rows = case_queue(case=scored.case, user=people.pathologist)
    assert version is None
    assert labels(rows) == ["node A", "node B", "node C", "node D"]
    assert {r.screened for r in rows} == {"not scored"}


def test_queue_api_gives_score_screening_thumbnail_viewer_and_decider(people, scored):
    client = client_for(people.pathologist)
    node_b = scored.nodes["node B"]
    services.record_viewed_region(
        node=node_b, user=people.pathologist, region=services.node_regions(node_b)[0].key
    )
    services.decide(
        node=node_b, user=people.pathologist, status="confirmed_positive", based_on=None
    )
    response = client.get(f"/api/review/cases/{scored.case.pk}/queue/")
    assert response.status_code == 200
    data = response.json()
    assert data["model_version"]["name"] == "primary-v1"
    first = data["nodes"][0]
    assert first["label"] == "node B"
    assert first["score"] == pytest.approx(0.92) and first["threshold"] == 0.5
    assert first["screened"] == "positive"
    assert (
        first["slide"]["thumbnail_url"]
        == f"/api/slides/{first['slide']['id']}/thumbnail.jpg?size=128"
    )
    assert first["status"] == "confirmed_positive"
    assert first["decision"]["user"] == "path"
    # Opening the node opens the review viewer at its highest-scoring region, with the heat map
    # that holds it overlaid.
    url = urlparse(first["viewer_url"])
    assert url.path == f"/review/nodes/{node_b.pk}/slides/{first['slide']['id']}/view/"
    query = parse_qs(url.query)
    assert query["x"] == ["1200"] and query["y"] == ["900"]
    assert query["heatmap"] == [str(first["regions"][0]["heatmap"])]
    # zoom is screen px per level-0 px: 20x on a slide of 0.5 um/px (20x at level 0) is 1.
    assert query["zoom"] == ["1.0"] and query["region"] == [first["regions"][0]["key"]]
    # Node B has two regions at or above the threshold (one per slide's heat map); one viewed.
    assert [r["required"] for r in first["regions"]] == [True, True]
    assert [r["viewed"] for r in first["regions"]] == [True, False]
    assert first["regions_to_view"] == [first["regions"][1]["key"]]
    assert data["nodes"][-1]["screened"] == "not scored" and data["nodes"][-1]["score"] is None
    assert data["can_sign_off"] is False


def test_queue_page_lists_nodes_in_order_with_keys_help(people, scored):
    client = client_for(people.pathologist)
    response = client.get(f"/review/cases/{scored.case.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    positions = [
        html.index(f'class="node-label">{label}<')
        for label in ("node B", "node A", "node C", "node D")
    ]
    assert positions == sorted(positions)
    assert "not scored" in html
    assert "review-queue-data" in html and "dist/review.js" in html
    assert "<kbd>r</kbd>" in html


def test_outsider_gets_404_for_queue_page_and_api(people, scored):
    client = client_for(people.outsider)
    assert client.get(f"/review/cases/{scored.case.pk}/").status_code == 404
    assert client.get(f"/api/review/cases/{scored.case.pk}/queue/").status_code == 404


def test_queue_needs_login(scored, client):
    assert client.get(f"/api/review/cases/{scored.case.pk}/queue/").status_code == 403
    assert client.get(f"/review/cases/{scored.case.pk}/").status_code == 302


def test_node_without_slides_is_listed_without_thumbnail(people, version):
    case = make_case(people.lab, "S26-0300", nodes=("bare",))
    score_node(case.nodes.get(), version, 0.8, x=None, y=None)
    client = client_for(people.pathologist)
    node = client.get(f"/api/review/cases/{case.pk}/queue/").json()["nodes"][0]
    assert node["slide"] is None and node["viewer_url"] is None
    # Screened positive with nowhere to point: the node itself is the one region to open.
    assert [r["required"] for r in node["regions"]] == [True]
    make_slide(case.nodes.get(), "late")
    node = client.get(f"/api/review/cases/{case.pk}/queue/").json()["nodes"][0]
    node_id = case.nodes.get().pk
    # The region is the node's slide as a whole: the viewer opens on it, nowhere in particular.
    assert node["viewer_url"] == (
        f"/review/nodes/{node_id}/slides/{node['slide']['id']}/view/"
        f"?region={node['regions'][0]['key']}"
    )


@pytest.mark.parametrize(
    "magnification, mpp, zoom",
    [(40, None, 0.5), (None, 0.25, 0.5), (20, 0.25, 1.0), (None, None, 0.5), (5, None, 2.0)],
)
def test_viewer_zoom_opens_regions_at_20x(magnification, mpp, zoom):
    from review.queues import viewer_zoom

    assert viewer_zoom(magnification=magnification, mpp=mpp) == zoom
