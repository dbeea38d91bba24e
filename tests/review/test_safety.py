"""The safety rule: no negative confirmation before every region at or above the threshold is viewed."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from review import services
from review.models import ReviewDecision, ViewedRegion

from .conftest import client_for

pytestmark = pytest.mark.django_db


def post(client, url, body):
    return client.post(url, body, content_type="application/json")


def test_negative_refused_until_each_region_is_viewed(people, scored):
    node = scored.nodes["node B"]  # 0.92, heat maps on two slides both at or above 0.5
    client = client_for(people.pathologist)
    url = f"/api/nodes/{node.pk}/decisions/"
    regions = client.get(f"/api/nodes/{node.pk}/viewed-regions/").json()["regions"]
    assert [r["required"] for r in regions] == [True, True]
    assert regions[0]["score"] == pytest.approx(0.92) and regions[1]["score"] == pytest.approx(0.55)

    refused = post(client, url, {"status": "confirmed_negative", "based_on": None})
    assert refused.status_code == 400
    body = refused.json()
    assert body["code"] == "regions_not_viewed"
    assert "2 of 2 not viewed" in body["detail"]
    assert [r["key"] for r in body["regions"]] == [r["key"] for r in regions]
    assert body["regions"][0]["viewer_url"].startswith(
        f"/review/nodes/{node.pk}/slides/{regions[0]['slide']}/view/?x=1200&y=900"
    )

    assert (
        post(
            client, f"/api/nodes/{node.pk}/viewed-regions/", {"region": regions[0]["key"]}
        ).status_code
        == 201
    )
    refused = post(client, url, {"status": "confirmed_negative", "based_on": None})
    assert refused.status_code == 400 and "1 of 2 not viewed" in refused.json()["detail"]

    # A centre reported by the viewer near the second region counts as viewing it.
    viewed = post(
        client,
        f"/api/nodes/{node.pk}/viewed-regions/",
        {"x": 320, "y": 190, "slide": regions[1]["slide"]},
    )
    assert viewed.status_code == 201 and viewed.json()["region_key"] == regions[1]["key"]
    saved = post(client, url, {"status": "confirmed_negative", "based_on": None})
    assert saved.status_code == 201
    assert [r["viewed"] for r in saved.json()["regions"]] == [True, True]
    assert saved.json()["region_rule"] is True


def test_confirming_positive_needs_no_viewing(people, scored):
    node = scored.nodes["node B"]
    decision = services.decide(
        node=node, user=people.pathologist, status="confirmed_positive", based_on=None
    )
    assert [r["viewed"] for r in decision.regions] == [False, False]


def test_regions_viewed_by_someone_else_do_not_count(people, scored):
    node = scored.nodes["node A"]
    for region in services.node_regions(node):
        services.record_viewed_region(node=node, user=people.lab_lead, region=region.key)
    with pytest.raises(services.ReviewRefused) as refused:
        services.decide(
            node=node, user=people.pathologist, status="confirmed_negative", based_on=None
        )
    assert refused.value.code == "regions_not_viewed"
    services.decide(node=node, user=people.lab_lead, status="confirmed_negative", based_on=None)


def test_negative_screened_node_satisfies_the_rule_trivially(people, scored):
    node = scored.nodes["node C"]  # 0.20 < 0.5: its maximum is a region, but not a required one
    regions = services.node_regions(node)
    assert regions and not any(r.required for r in regions)
    decision = services.decide(
        node=node, user=people.pathologist, status="confirmed_negative", based_on=None
    )
    assert decision.screened_positive is False


def test_unknown_region_key_is_refused_with_the_known_ones(people, scored):
    node = scored.nodes["node A"]
    response = post(
        client_for(people.pathologist),
        f"/api/nodes/{node.pk}/viewed-regions/",
        {"region": "hm999@1,1"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "unknown_region"
    assert services.node_regions(node)[0].key in response.json()["detail"]
    assert (
        post(
            client_for(people.pathologist), f"/api/nodes/{node.pk}/viewed-regions/", {}
        ).status_code
        == 400
    )
    assert not ViewedRegion.objects.exists()


def test_a_far_centre_is_recorded_but_satisfies_nothing(people, scored):
    node = scored.nodes["node A"]
    slide = node.slides.get()
    viewed = services.record_viewed_region(
        node=node, user=people.pathologist, x=10, y=10, slide=slide.pk
    )
    assert viewed.region_key == "xy@10,10"
    with pytest.raises(services.ReviewRefused):
        services.decide(
            node=node, user=people.pathologist, status="confirmed_negative", based_on=None
        )


def test_admin_switches_the_rule_off_and_the_switch_is_audited(people, scored):
    lab_url = f"/api/review/labs/{people.lab.pk}/settings/"
    # A lab lead can read the settings but not change them.
    lead = client_for(people.lab_lead)
    assert lead.get(lab_url).json()["require_region_views"] is True
    refused = lead.put(lab_url, {"require_region_views": False}, content_type="application/json")
    assert refused.status_code == 403
    assert client_for(people.pathologist).get(lab_url).status_code == 403
    assert client_for(people.outsider).get(lab_url).status_code == 403
    assert (
        client_for(people.admin)
        .get(f"/api/review/labs/{people.other_lab.pk}/settings/")
        .status_code
        == 404
    )

    admin = client_for(people.admin)
    response = admin.put(
        lab_url,
        {"require_region_views": False, "reason": "validation study"},
        content_type="application/json",
    )
    assert response.status_code == 200 and response.json()["require_region_views"] is False
    event = AuditEvent.objects.get(action="review setting changed")
    assert event.actor == people.admin and event.object_type == "slides.lab"
    assert event.detail == {
        "setting": "require_region_views",
        "before": True,
        "after": False,
        "reason": "validation study",
    }

    node = scored.nodes["node B"]
    decision = services.decide(
        node=node, user=people.pathologist, status="confirmed_negative", based_on=None
    )
    assert decision.region_rule is False
    assert AuditEvent.objects.get(action="review decision").detail["region_rule"] is False

    admin.put(lab_url, {"require_region_views": True}, content_type="application/json")
    assert AuditEvent.objects.filter(action="review setting changed").count() == 2
    with pytest.raises(services.ReviewRefused):
        services.decide(
            node=scored.nodes["node A"],
            user=people.pathologist,
            status="confirmed_negative",
            based_on=None,
        )
    assert ReviewDecision.objects.count() == 1
