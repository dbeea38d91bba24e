"""Sign-off: only when every node is confirmed; it locks decisions; amendments are recorded."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from review import services
from review.models import CaseSignOff, ReviewDecision
from slides.models import Case

from .conftest import client_for

pytestmark = pytest.mark.django_db


def view_all(node, user):
    for region in services.node_regions(node):
        services.record_viewed_region(node=node, user=user, region=region.key)


def settle(scored, user, *, skip: str | None = None) -> dict[str, ReviewDecision]:
    out = {}
    for label, node in scored.nodes.items():
        if label == skip:
            continue
        view_all(node, user)
        status = "confirmed_positive" if label == "node B" else "confirmed_negative"
        out[label] = services.decide(node=node, user=user, status=status, based_on=None)
    return out


def sign_off_url(case) -> str:
    return f"/api/review/cases/{case.pk}/sign-off/"


def test_sign_off_refused_until_every_node_is_confirmed(people, scored):
    lead = client_for(people.lab_lead)
    settle(scored, people.pathologist, skip="node D")
    response = lead.post(sign_off_url(scored.case), {}, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "case_not_ready"
    assert "node D (unreviewed)" in response.json()["detail"]
    assert [n["label"] for n in response.json()["nodes"]] == ["node D"]
    # "Needs further work" is a decision, but not a settled node.
    services.decide(
        node=scored.nodes["node D"],
        user=people.pathologist,
        status="needs_further_work",
        based_on=None,
        further_work="ihc",
    )
    response = lead.post(sign_off_url(scored.case), {}, content_type="application/json")
    assert (
        response.status_code == 400 and "node D (needs further work)" in response.json()["detail"]
    )
    scored.case.refresh_from_db()
    assert scored.case.status == Case.Status.OPEN and not CaseSignOff.objects.exists()


def test_sign_off_records_and_locks_the_decisions(people, scored):
    decisions = settle(scored, people.pathologist)
    assert (
        client_for(people.pathologist)
        .get(f"/api/review/cases/{scored.case.pk}/queue/")
        .json()["can_sign_off"]
    )
    response = client_for(people.lab_lead).post(
        sign_off_url(scored.case), {"note": "all clear but B"}, content_type="application/json"
    )
    assert response.status_code == 201, response.json()
    scored.case.refresh_from_db()
    assert scored.case.status == Case.Status.SIGNED_OFF
    record = CaseSignOff.objects.get()
    assert record.user == people.lab_lead and record.action == "signed_off"
    assert record.decisions == {str(d.node_id): d.pk for d in decisions.values()}
    event = AuditEvent.objects.get(action="case signed off")
    assert event.object_id == str(scored.case.pk) and event.actor == people.lab_lead

    # Locked: a pathologist cannot decide; a lab lead needs a reason.
    node = scored.nodes["node C"]
    url = f"/api/nodes/{node.pk}/decisions/"
    body = {"status": "confirmed_positive", "based_on": decisions["node C"].pk}
    refused = client_for(people.pathologist).post(url, body, content_type="application/json")
    assert refused.status_code == 403 and refused.json()["code"] == "signed_off"
    assert "signed off" in refused.json()["detail"]
    refused = client_for(people.lab_lead).post(url, body, content_type="application/json")
    assert refused.status_code == 400 and refused.json()["code"] == "reason_required"
    refused = client_for(people.lab_lead).post(
        url, body | {"status": "needs_further_work", "reason": "r"}, content_type="application/json"
    )
    assert refused.status_code == 400 and refused.json()["code"] == "amendment_status"
    assert ReviewDecision.objects.filter(node=node).count() == 1
    # Signing off twice is a conflict.
    again = client_for(people.lab_lead).post(
        sign_off_url(scored.case), {}, content_type="application/json"
    )
    assert again.status_code == 409 and again.json()["code"] == "already_signed_off"


def test_amendment_after_sign_off_is_a_recorded_decision_and_the_case_stays_signed_off(
    people, scored
):
    decisions = settle(scored, people.pathologist)
    services.sign_off(case=scored.case, user=people.lab_lead)
    node = scored.nodes["node C"]
    response = client_for(people.lab_lead).post(
        f"/api/nodes/{node.pk}/decisions/",
        {
            "status": "confirmed_positive",
            "based_on": decisions["node C"].pk,
            "reason": "micrometastasis on IHC",
        },
        content_type="application/json",
    )
    assert response.status_code == 201, response.json()
    amended = ReviewDecision.objects.get(pk=response.json()["id"])
    assert amended.amendment and amended.reason == "micrometastasis on IHC"
    assert amended.previous == decisions["node C"]
    event = AuditEvent.objects.get(action="review decision amended")
    assert event.detail["reason"] == "micrometastasis on IHC"
    scored.case.refresh_from_db()
    assert scored.case.status == Case.Status.SIGNED_OFF  # nothing un-signed silently
    queue = client_for(people.pathologist).get(f"/api/review/cases/{scored.case.pk}/queue/").json()
    row = next(n for n in queue["nodes"] if n["id"] == node.pk)
    assert row["status"] == "confirmed_positive" and row["decision"]["amendment"] is True


def test_only_lab_leads_sign_off_and_reopen(people, scored):
    settle(scored, people.pathologist)
    refused = client_for(people.pathologist).post(
        sign_off_url(scored.case), {}, content_type="application/json"
    )
    assert refused.status_code == 403
    assert (
        client_for(people.outsider)
        .post(sign_off_url(scored.case), {}, content_type="application/json")
        .status_code
        == 404
    )
    assert (
        client_for(people.admin)
        .post(sign_off_url(scored.case), {}, content_type="application/json")
        .status_code
        == 201
    )
    reopen = f"/api/review/cases/{scored.case.pk}/reopen/"
    assert (
        client_for(people.pathologist)
        .post(reopen, {"reason": "x"}, content_type="application/json")
        .status_code
        == 403
    )
    assert (
        client_for(people.lab_lead).post(reopen, {}, content_type="application/json").status_code
        == 400
    )
    response = client_for(people.lab_lead).post(
        reopen, {"reason": "send node C for IHC"}, content_type="application/json"
    )
    assert response.status_code == 201
    scored.case.refresh_from_db()
    assert scored.case.status == Case.Status.OPEN
    assert list(CaseSignOff.objects.values_list("action", flat=True)) == ["signed_off", "reopened"]
    assert AuditEvent.objects.get(action="case reopened").detail == {
        "reason": "send node C for IHC"
    }
    # Open again: decisions are ordinary decisions.
    node = scored.nodes["node C"]
    current = ReviewDecision.objects.filter(node=node).latest("id")
    d = services.decide(
        node=node, user=people.pathologist, status="needs_further_work", based_on=current.pk
    )
    assert not d.amendment
    assert (
        client_for(people.lab_lead)
        .post(reopen, {"reason": "x"}, content_type="application/json")
        .status_code
        == 409
    )


def test_case_without_nodes_cannot_be_signed_off(people):
    from tests.factories import make_case

    case = make_case(people.lab, "S26-EMPTY", nodes=())
    response = client_for(people.lab_lead).post(
        sign_off_url(case), {}, content_type="application/json"
    )
    assert response.status_code == 400 and response.json()["code"] == "case_not_ready"


def test_queue_page_shows_sign_off_button_to_leads_only(people, scored):
    settle(scored, people.pathologist)
    html = client_for(people.lab_lead).get(f"/review/cases/{scored.case.pk}/").content.decode()
    assert 'id="sign-off-button"' in html and 'id="sign-off-button" disabled' not in html
    html = client_for(people.pathologist).get(f"/review/cases/{scored.case.pk}/").content.decode()
    assert 'id="sign-off-button"' not in html
