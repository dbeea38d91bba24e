"""The lab lead's triage list: negative-screened nodes of open cases, oldest case first."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from review import services
from slides.models import Case
from tests.factories import make_case

from .conftest import client_for
from .factories import make_model_version, score_node

pytestmark = pytest.mark.django_db


@pytest.fixture
def cases(people, version):
    """Three open cases of different ages in the lab, one in the other lab, one signed off."""
    now = timezone.now()
    made = {}
    for accession, days, lab, scores in [
        ("OLD", 30, people.lab, {"n1": 0.1, "n2": 0.8}),
        ("MID", 10, people.lab, {"n1": 0.3, "n2": 0.49}),
        ("NEW", 1, people.lab, {"n1": 0.2, "n2": None}),
        ("ELSEWHERE", 20, people.other_lab, {"n1": 0.1}),
        ("DONE", 40, people.lab, {"n1": 0.1}),
    ]:
        case = make_case(lab, accession, nodes=tuple(scores))
        Case.objects.filter(pk=case.pk).update(created_at=now - timedelta(days=days))
        for node in case.nodes.all():
            if scores[node.label] is not None:
                score_node(node, version, scores[node.label])
        made[accession] = case
    Case.objects.filter(pk=made["DONE"].pk).update(status=Case.Status.SIGNED_OFF)
    return made


def rows(response) -> list[tuple[str, str]]:
    return [(r["case"]["accession_number"], r["label"]) for r in response.json()["results"]]


def test_triage_lists_negative_screened_nodes_of_open_cases_oldest_first(people, cases):
    response = client_for(people.lab_lead).get("/api/review/triage/")
    assert response.status_code == 200
    assert rows(response) == [("OLD", "n1"), ("MID", "n1"), ("MID", "n2"), ("NEW", "n1")]
    first = response.json()["results"][0]
    assert first["score"] == pytest.approx(0.1) and first["threshold"] == 0.5
    assert first["status"] == "unreviewed" and first["decision"] is None
    assert first["queue_url"] == f"/review/cases/{cases['OLD'].pk}/#node-{first['id']}"
    assert (
        response.json()["count"] == 4 and response.json()["model_version"]["name"] == "primary-v1"
    )


def test_confirmed_nodes_leave_the_default_list_but_stay_under_any(people, cases):
    node = cases["MID"].nodes.get(label="n1")
    services.decide(node=node, user=people.lab_lead, status="confirmed_negative", based_on=None)
    client = client_for(people.lab_lead)
    assert ("MID", "n1") not in rows(client.get("/api/review/triage/"))
    listed = client.get("/api/review/triage/?status=any").json()["results"]
    assert next(r for r in listed if r["id"] == node.pk)["status"] == "confirmed_negative"
    assert rows(client.get("/api/review/triage/?status=confirmed_negative")) == [("MID", "n1")]


def test_triage_filters_by_lab_date_and_model_version(people, cases):
    client = client_for(people.admin)
    people.other_lab.members.add(people.admin)
    assert ("ELSEWHERE", "n1") in rows(client.get("/api/review/triage/"))
    assert rows(client.get("/api/review/triage/?lab=other-lab")) == [("ELSEWHERE", "n1")]
    assert rows(client.get(f"/api/review/triage/?lab={people.other_lab.pk}")) == [
        ("ELSEWHERE", "n1")
    ]
    today = timezone.now().date()
    recent = client.get(f"/api/review/triage/?lab=h-lab&date_from={today - timedelta(days=15)}")
    assert rows(recent) == [("MID", "n1"), ("MID", "n2"), ("NEW", "n1")]
    older = client.get(f"/api/review/triage/?lab=h-lab&date_to={today - timedelta(days=5)}")
    assert rows(older) == [("OLD", "n1"), ("MID", "n1"), ("MID", "n2")]
    # Another model version screens differently: v0 calls everything in MID positive.
    v0 = make_model_version("v0", threshold=0.2, live=False)
    for node in cases["MID"].nodes.all():
        score_node(node, v0, 0.6)
    score_node(cases["NEW"].nodes.get(label="n2"), v0, 0.1)
    assert rows(client.get(f"/api/review/triage/?lab=h-lab&model_version={v0.pk}")) == [
        ("NEW", "n2")
    ]


@pytest.mark.parametrize(
    "query",
    [
        "lab=nope",
        "date_from=2026-13-01",
        "date_from=2026-02-01&date_to=2026-01-01",
        "model_version=999999",
        "status=maybe",
        "model_version=-1",
        "model_version=99999999999999999999999",
        "lab=%C2%B2",
    ],
)
def test_bad_filters_are_400(people, cases, query):
    response = client_for(people.lab_lead).get(f"/api/review/triage/?{query}")
    assert response.status_code == 400, response.content


def test_pathologists_and_outsiders_do_not_see_triage(people, cases):
    assert client_for(people.pathologist).get("/api/review/triage/").status_code == 403
    assert client_for(people.pathologist).get("/review/triage/").status_code == 403
    assert client_for(people.outsider).get("/api/review/triage/").status_code == 403


def test_triage_page_lists_rows_and_filters(people, cases):
    response = client_for(people.lab_lead).get("/review/triage/?status=unreviewed")
    assert response.status_code == 200
    html = response.content.decode()
    order = [html.index(f">{a}</a>") for a in ("OLD", "MID", "NEW")]
    assert order == sorted(order)
    assert "ELSEWHERE" not in html and "DONE" not in html
    assert "4 nodes" in html and 'name="date_from"' in html
    bad = client_for(people.lab_lead).get("/review/triage/?date_from=nope")
    assert bad.status_code == 200 and "errorlist" in bad.content.decode()


def test_pagination(people, cases):
    page = client_for(people.lab_lead).get("/api/review/triage/?limit=2&offset=1").json()
    assert page["count"] == 4 and [r["label"] for r in page["results"]] == ["n1", "n2"]


def test_latest_score_and_latest_decision_decide_the_listing(people, cases, version):
    """Only a node's newest live score screens it, and only its newest decision is its status."""
    client = client_for(people.lab_lead)
    old_n2 = cases["OLD"].nodes.get(label="n2")  # 0.8: positive-screened, not listed
    score_node(old_n2, version, 0.3)  # rescored below the threshold: listed now
    mid_n1 = cases["MID"].nodes.get(label="n1")  # 0.3
    score_node(mid_n1, version, 0.7)  # rescored above: gone, though an older score was below
    assert rows(client.get("/api/review/triage/")) == [
        ("OLD", "n1"),
        ("OLD", "n2"),
        ("MID", "n2"),
        ("NEW", "n1"),
    ]
    new_n1 = cases["NEW"].nodes.get(label="n1")
    first = services.decide(
        node=new_n1, user=people.lab_lead, status="confirmed_negative", based_on=None
    )
    services.decide(
        node=new_n1,
        user=people.lab_lead,
        status="needs_further_work",
        further_work="ihc",
        based_on=first.pk,
    )
    assert ("NEW", "n1") not in rows(client.get("/api/review/triage/"))
    assert rows(client.get("/api/review/triage/?status=confirmed_negative")) == []
    assert rows(client.get("/api/review/triage/?status=needs_further_work")) == [("NEW", "n1")]


def test_a_page_past_the_end_is_empty_with_the_total(people, cases):
    page = client_for(people.lab_lead).get("/api/review/triage/?limit=2&offset=10").json()
    assert page["count"] == 4 and page["results"] == [] and page["next"] is None
