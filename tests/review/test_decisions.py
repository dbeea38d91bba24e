"""Decisions: what they record, bad input, and two reviewers deciding the same node at once."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from audit.models import AuditEvent
from review import queues, services
from review.models import AppendOnly, ReviewDecision

from .conftest import client_for

pytestmark = pytest.mark.django_db


def decide_url(node) -> str:
    return f"/api/nodes/{node.pk}/decisions/"


def test_decision_records_user_time_model_threshold_score_and_regions(people, scored):
    node = scored.nodes["node A"]
    client = client_for(people.pathologist)
    region = client.get(f"/api/nodes/{node.pk}/viewed-regions/").json()["regions"][0]
    assert (
        client.post(
            f"/api/nodes/{node.pk}/viewed-regions/",
            {"region": region["key"]},
            content_type="application/json",
        ).status_code
        == 201
    )
    response = client.post(
        decide_url(node),
        {"status": "confirmed_negative", "based_on": None, "note": "reactive follicles"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["user"] == "path" and body["created_at"]
    assert body["model_version"] == scored.version.pk and body["model_version_name"] == "primary-v1"
    assert body["score"] == pytest.approx(0.61) and body["threshold"] == 0.5
    assert body["screened_positive"] is True
    expected = {k: v for k, v in region.items() if k != "viewer_url"} | {"viewed": True}
    assert body["regions"] == [expected]
    assert body["note"] == "reactive follicles" and body["based_on"] is None
    decision = ReviewDecision.objects.get()
    assert decision.user == people.pathologist and decision.node_score.score == pytest.approx(0.61)
    event = AuditEvent.objects.get(action="review decision")
    assert event.actor == people.pathologist and event.object_id == str(decision.pk)
    assert event.detail["regions_viewed"] == [region["key"]]
    # The history lists every decision, oldest first.
    history = client.get(decide_url(node)).json()
    assert [d["id"] for d in history] == [decision.pk]


def test_latest_decision_is_the_status_and_history_is_kept(people, scored):
    node = scored.nodes["node C"]
    first = services.decide(
        node=node,
        user=people.pathologist,
        status="needs_further_work",
        based_on=None,
        further_work="ihc",
    )
    second = services.decide(
        node=node, user=people.lab_lead, status="confirmed_negative", based_on=first.pk
    )
    _, rows = queues.case_queue(case=scored.case, user=people.pathologist)
    row = next(r for r in rows if r.node == node)
    assert row.status == "confirmed_negative" and row.decision == second
    assert second.previous == first and first.further_work == "ihc"
    assert ReviewDecision.objects.filter(node=node).count() == 2


def test_decisions_are_append_only(people, scored):
    d = services.decide(
        node=scored.nodes["node C"],
        user=people.pathologist,
        status="confirmed_negative",
        based_on=None,
    )
    d.note = "changed"
    with pytest.raises(AppendOnly):
        d.save()
    with pytest.raises(AppendOnly):
        d.delete()
    with pytest.raises(AppendOnly):
        ReviewDecision.objects.filter(pk=d.pk).update(note="x")
    with pytest.raises(AppendOnly):
        ReviewDecision.objects.all().delete()


@pytest.mark.parametrize(
    "body, code",
    [
        ({"status": "maybe", "based_on": None}, "unknown_status"),
        (
            {"status": "needs_further_work", "based_on": None, "further_work": "x-ray"},
            "unknown_further_work",
        ),
        ({"status": "confirmed_positive", "based_on": None, "further_work": "ihc"}, "further_work"),
    ],
)
def test_bad_statuses_are_refused_with_a_clear_message(people, scored, body, code):
    response = client_for(people.pathologist).post(
        decide_url(scored.nodes["node C"]), body, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert "use one of" in response.json()["detail"] or "further work" in response.json()["detail"]
    assert not ReviewDecision.objects.exists()


def test_based_on_is_required_and_must_be_an_id(people, scored):
    client = client_for(people.pathologist)
    url = decide_url(scored.nodes["node C"])
    response = client.post(url, {"status": "confirmed_negative"}, content_type="application/json")
    assert response.status_code == 400 and "based_on" in response.json()
    response = client.post(
        url, {"status": "confirmed_negative", "based_on": "abc"}, content_type="application/json"
    )
    assert response.status_code == 400
    response = client.post(url, [1, 2], content_type="application/json")
    assert response.status_code == 400
    assert not ReviewDecision.objects.exists()


def test_node_outside_the_users_labs_is_404(people, scored):
    client = client_for(people.outsider)
    node = scored.nodes["node C"]
    response = client.post(
        decide_url(node),
        {"status": "confirmed_negative", "based_on": None},
        content_type="application/json",
    )
    assert response.status_code == 404
    assert client.get(decide_url(node)).status_code == 404
    assert (
        client.post(
            f"/api/nodes/{node.pk}/viewed-regions/",
            {"region": "x"},
            content_type="application/json",
        ).status_code
        == 404
    )
    assert client.get("/api/nodes/999999/decisions/").status_code == 404
    assert not ReviewDecision.objects.exists()


def test_stale_decision_is_409_with_the_current_one_and_nothing_is_lost(people, scored):
    node = scored.nodes["node C"]
    url = decide_url(node)
    alice, bob = client_for(people.pathologist), client_for(people.lab_lead)
    # Both saw "no decision"; Alice saves first.
    first = alice.post(
        url, {"status": "confirmed_negative", "based_on": None}, content_type="application/json"
    )
    assert first.status_code == 201
    second = bob.post(
        url,
        {"status": "needs_further_work", "based_on": None, "note": "bob's note"},
        content_type="application/json",
    )
    assert second.status_code == 409
    body = second.json()
    assert body["code"] == "stale"
    assert body["current"]["id"] == first.json()["id"]
    assert body["current"]["status"] == "confirmed_negative" and body["current"]["user"] == "path"
    assert ReviewDecision.objects.filter(node=node).count() == 1
    # Bob decides again on top of what he now sees: recorded, Alice's stays in the history.
    third = bob.post(
        url,
        {"status": "needs_further_work", "based_on": first.json()["id"]},
        content_type="application/json",
    )
    assert third.status_code == 201
    assert [d["status"] for d in alice.get(url).json()] == [
        "confirmed_negative",
        "needs_further_work",
    ]
    # A based_on naming a decision that is not the current one is stale too.
    stale = alice.post(
        url,
        {"status": "confirmed_positive", "based_on": first.json()["id"]},
        content_type="application/json",
    )
    assert stale.status_code == 409 and stale.json()["current"]["id"] == third.json()["id"]


def test_database_refuses_a_second_successor_even_if_the_check_is_raced(
    people, scored, monkeypatch
):
    """The unique constraints catch what the read-then-insert check could miss."""
    node = scored.nodes["node C"]
    services.decide(node=node, user=people.pathologist, status="confirmed_negative", based_on=None)
    # Simulate a first read that did not see the committed decision (as under a race).
    reads = []
    real = services.latest_decision

    def stale_then_real(node):
        reads.append(node)
        return None if len(reads) == 1 else real(node)

    monkeypatch.setattr(services, "latest_decision", stale_then_real)
    with pytest.raises(services.StaleDecision) as refused:
        services.decide(node=node, user=people.lab_lead, status="confirmed_positive", based_on=None)
    assert refused.value.current.status == "confirmed_negative"
    monkeypatch.undo()
    assert list(ReviewDecision.objects.filter(node=node).values_list("status", flat=True)) == [
        "confirmed_negative"
    ]


@pytest.mark.django_db(transaction=True)
def test_two_threads_deciding_the_same_node_at_once(people, scored):
    """Two reviewers, two connections, released together, many times: one wins each round."""
    rounds = 6
    users = [people.pathologist, people.lab_lead]
    node = scored.nodes["node C"]
    outcomes: list[list[str]] = []
    for _ in range(rounds):
        current = queues.latest_decision(node)
        based_on = current.pk if current else None
        barrier = threading.Barrier(2)
        results: list[str] = []
        lock = threading.Lock()

        def run(user, status, based_on=based_on, barrier=barrier, results=results, lock=lock):
            try:
                barrier.wait(timeout=10)
                services.decide(node=node, user=user, status=status, based_on=based_on)
                outcome = "saved"
            except services.StaleDecision:
                outcome = "stale"
            except Exception as exc:  # noqa: BLE001 - reported below
                outcome = f"error: {exc!r}"
            finally:
                connection.close()
            with lock:
                results.append(outcome)

        threads = [
            threading.Thread(target=run, args=(users[0], "confirmed_negative")),
            threading.Thread(target=run, args=(users[1], "needs_further_work")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        outcomes.append(sorted(results))
    assert outcomes == [["saved", "stale"]] * rounds, outcomes
    chain = list(ReviewDecision.objects.filter(node=node).order_by("id"))
    assert len(chain) == rounds
    assert [d.previous_id for d in chain] == [None] + [d.pk for d in chain[:-1]]


def test_unauthenticated_and_roleless_users_cannot_decide(
    people, scored, client, django_user_model
):
    url = decide_url(scored.nodes["node C"])
    body = {"status": "confirmed_negative", "based_on": None}
    assert client.post(url, body, content_type="application/json").status_code == 403
    nobody = django_user_model.objects.create_user("nobody", password="x" * 12)
    people.lab.members.add(nobody)
    assert client_for(nobody).post(url, body, content_type="application/json").status_code == 404
