"""The review viewer: its page, regions reported with the view that showed them, corrections."""

from __future__ import annotations

import json
import re

import pytest

from review.models import ViewedRegion

from .conftest import client_for

pytestmark = pytest.mark.django_db


def post(client, url: str, body: dict):
    return client.post(url, data=json.dumps(body), content_type="application/json")


def viewer_data(html: str) -> dict:
    found = re.search(
        r'<script id="review-viewer-data" type="application/json">(.*?)</script>', html, re.S
    )
    assert found, "the page carries no review-viewer-data"
    return json.loads(found.group(1))


def test_review_viewer_page_carries_regions_rule_and_classes(people, scored):
    node = scored.nodes["node B"]
    slide = node.slides.get(name="B-1")
    response = client_for(people.pathologist).get(
        f"/review/nodes/{node.pk}/slides/{slide.pk}/view/?x=1200&y=900&zoom=1"
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="viewer"' in html and "dist/viewer.js" in html and "dist/review.js" in html
    assert 'id="review-not-tumour"' in html and "<kbd>n</kbd>" in html
    data = viewer_data(html)
    assert data["node"]["id"] == node.pk and data["slide"] == slide.pk
    assert data["rule"] == {"required": True, "min_zoom": 0.25, "min_inside": 0.8, "dwell_ms": 600}
    first, second = data["regions"]
    # The heat map's window is 160 px: a region is the square of twice that around its maximum.
    assert first["slide"] == slide.pk and first["box"] == [1040.0, 740.0, 1360.0, 1060.0]
    assert second["slide"] != slide.pk and second["box"] == [140.0, 40.0, 460.0, 360.0]
    assert [r["viewed"] for r in data["regions"]] == [False, False]
    assert "lymphoid-follicle" in [c["key"] for c in data["label_classes"]]
    assert "tumour" not in [c["key"] for c in data["label_classes"]]
    assert data["urls"]["viewed_regions"] == f"/api/nodes/{node.pk}/viewed-regions/"


def test_review_viewer_page_is_404_outside_your_labs_or_for_another_nodes_slide(people, scored):
    node = scored.nodes["node B"]
    slide = node.slides.get(name="B-1")
    other_slide = scored.nodes["node A"].slides.get()
    assert (
        client_for(people.outsider)
        .get(f"/review/nodes/{node.pk}/slides/{slide.pk}/view/")
        .status_code
        == 404
    )
    assert (
        client_for(people.pathologist)
        .get(f"/review/nodes/{node.pk}/slides/{other_slide.pk}/view/")
        .status_code
        == 404
    )


def test_viewed_region_reported_with_its_view_is_checked_and_kept(people, scored):
    node = scored.nodes["node B"]
    client = client_for(people.pathologist)
    url = f"/api/nodes/{node.pk}/viewed-regions/"
    first, second = client.get(url).json()["regions"]
    slide = first["slide"]

    # The view showed another part of the slide: nothing is recorded.
    away = post(
        client,
        url,
        {"region": first["key"], "slide": slide, "viewport": [2000, 2000, 3400, 2800], "zoom": 1},
    )
    assert away.status_code == 400 and away.json()["code"] == "not_shown"
    assert "0% inside the view" in away.json()["detail"]
    # Half of the square in the view is not enough.
    half = post(
        client,
        url,
        {"region": first["key"], "slide": slide, "viewport": [1200, 0, 2600, 2000], "zoom": 1},
    )
    assert half.status_code == 400 and "50% inside" in half.json()["detail"]
    # The whole slide at a glance (0.1 screen px per slide px) is too far out to count.
    far = post(
        client,
        url,
        {"region": first["key"], "slide": slide, "viewport": [0, 0, 4000, 3000], "zoom": 0.1},
    )
    assert far.status_code == 400 and "zoom in" in far.json()["detail"]
    # Reported as on another slide of the node.
    wrong = post(
        client,
        url,
        {
            "region": first["key"],
            "slide": second["slide"],
            "viewport": [1000, 700, 1400, 1100],
            "zoom": 1,
        },
    )
    assert wrong.status_code == 400 and wrong.json()["code"] == "slide"
    assert not ViewedRegion.objects.exists()

    shown = post(
        client,
        url,
        {"region": first["key"], "slide": slide, "viewport": [600, 400, 2000, 1200], "zoom": 1.0},
    )
    assert shown.status_code == 201, shown.content
    record = ViewedRegion.objects.get()
    assert record.region_key == first["key"] and record.user == people.pathologist
    assert record.viewport == [600.0, 400.0, 2000.0, 1200.0] and record.zoom == 1.0
    assert shown.json()["viewport"] == [600.0, 400.0, 2000.0, 1200.0]

    decisions = f"/api/nodes/{node.pk}/decisions/"
    refused = post(client, decisions, {"status": "confirmed_negative", "based_on": None})
    assert refused.status_code == 400 and "1 of 2 not viewed" in refused.json()["detail"]
    assert (
        post(
            client,
            url,
            {
                "region": second["key"],
                "slide": second["slide"],
                "viewport": [0, 0, 1400, 800],
                "zoom": 0.5,
            },
        ).status_code
        == 201
    )
    saved = post(client, decisions, {"status": "confirmed_negative", "based_on": None})
    assert saved.status_code == 201
    assert [r["viewed"] for r in saved.json()["regions"]] == [True, True]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"viewport": [0, 0, 100, 100]}, "non_field_errors"),
        ({"zoom": 1}, "non_field_errors"),
        ({"viewport": [100, 0, 0, 100], "zoom": 1}, "viewport"),
        ({"viewport": [0, 0, 100], "zoom": 1}, "viewport"),
        ({"viewport": [0, 0, 100, "wide"], "zoom": 1}, "viewport"),
        ({"viewport": [0, 0, 100, 100], "zoom": -1}, "zoom"),
    ],
)
def test_bad_views_are_400_naming_the_field(people, scored, body, field):
    node = scored.nodes["node B"]
    client = client_for(people.pathologist)
    key = client.get(f"/api/nodes/{node.pk}/viewed-regions/").json()["regions"][0]["key"]
    response = post(client, f"/api/nodes/{node.pk}/viewed-regions/", {"region": key, **body})
    assert response.status_code == 400 and field in response.json(), response.content
    assert not ViewedRegion.objects.exists()


def test_not_tumour_on_a_region_saves_its_square_as_a_hard_negative(people, scored):
    from annotations.models import Annotation

    node = scored.nodes["node B"]
    client = client_for(people.pathologist)
    region = client.get(f"/api/nodes/{node.pk}/viewed-regions/").json()["regions"][0]
    saved = post(
        client,
        f"/api/nodes/{node.pk}/corrections/",
        {"label_class": "lymphoid-follicle", "region": region["key"]},
    )
    assert saved.status_code == 201, saved.content
    annotation = Annotation.objects.get(pk=saved.json()["annotation"])
    assert annotation.label_class.key == "lymphoid-follicle"
    assert annotation.label_class.kind == "hard-negative"
    ring = annotation.geometry["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    assert (min(xs), min(ys), max(xs), max(ys)) == (1040, 740, 1360, 1060)
    listed = client.get(f"/api/nodes/{node.pk}/corrections/").json()["corrections"]
    assert [c["annotation"] for c in listed] == [annotation.pk]
