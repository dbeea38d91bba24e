"""Review records: append-only, removed only with their node or case, visible in the admin."""

from __future__ import annotations

import pytest

from review import services
from review.models import AppendOnly, CaseSignOff, ReviewDecision, ViewedRegion

from .conftest import client_for

pytestmark = pytest.mark.django_db


def test_deleting_a_case_removes_its_review_records(people, scored):
    node = scored.nodes["node C"]
    first = services.decide(
        node=node, user=people.pathologist, status="needs_further_work", based_on=None
    )
    services.decide(
        node=node, user=people.pathologist, status="confirmed_negative", based_on=first.pk
    )
    services.record_viewed_region(
        node=node, user=people.pathologist, region=services.node_regions(node)[0].key
    )
    with pytest.raises(AppendOnly):
        ViewedRegion.objects.all().delete()
    scored.case.delete()
    assert not ReviewDecision.objects.exists() and not ViewedRegion.objects.exists()


def test_sign_off_records_are_append_only(people, scored):
    for node in scored.nodes.values():
        for region in services.node_regions(node):
            services.record_viewed_region(node=node, user=people.lab_lead, region=region.key)
        services.decide(node=node, user=people.lab_lead, status="confirmed_negative", based_on=None)
    record = services.sign_off(case=scored.case, user=people.lab_lead)
    with pytest.raises(AppendOnly):
        record.save()
    with pytest.raises(AppendOnly):
        CaseSignOff.objects.update(reason="x")


def test_admin_lists_review_records_read_only(people, scored, django_user_model):
    services.decide(
        node=scored.nodes["node C"],
        user=people.pathologist,
        status="confirmed_negative",
        based_on=None,
    )
    superuser = django_user_model.objects.create_superuser("root", password="x" * 12)
    client = client_for(superuser)
    assert client.get("/admin/review/reviewdecision/").status_code == 200
    decision = ReviewDecision.objects.get()
    page = client.get(f"/admin/review/reviewdecision/{decision.pk}/change/")
    assert page.status_code == 200 and b'name="status"' not in page.content
    assert client.get("/admin/review/reviewdecision/add/").status_code == 403


def test_switching_the_rule_in_the_admin_is_audited(people, django_user_model):
    from audit.models import AuditEvent

    superuser = django_user_model.objects.create_superuser("root", password="x" * 12)
    client = client_for(superuser)
    response = client.post(
        "/admin/review/reviewsettings/add/", {"lab": people.lab.pk, "require_region_views": ""}
    )
    assert response.status_code == 302, response.content[:2000]
    assert services.lab_settings(people.lab).require_region_views is False
    event = AuditEvent.objects.get(action="review setting changed")
    assert event.actor == superuser and event.detail["after"] is False
