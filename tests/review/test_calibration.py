"""Locking a model's threshold through the API: calibration nodes, preview, refusals, lock."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from inference.records import ModelVersion, ScoringRun
from review import services
from slides.models import Node
from tests.factories import make_case

from .conftest import client_for
from .factories import make_model_version, make_slide, score_node

pytestmark = pytest.mark.django_db


@pytest.fixture
def candidate(people):
    """A primary model without a threshold; six nodes of the lab with a known truth and scores
    (positives 0.75 and 0.9375, negatives 0.25, 0.5 and 0.8125), plus one of unknown truth."""
    version = make_model_version("candidate", threshold=None, live=False)
    version.hyperparameters = {"model_kwargs": {"padding": "valid"}}
    version.save(update_fields=["hyperparameters"])
    case = make_case(people.lab, "S26-0500", nodes=("p1", "p2", "n1", "n2", "n3", "unknown"))
    truth = {"p1": "positive", "p2": "positive", "n1": "negative", "n2": "negative", "n3": None}
    scores = {"p1": 0.75, "p2": 0.9375, "n1": 0.25, "n2": 0.5, "n3": 0.8125, "unknown": 0.3}
    nodes = {n.label: n for n in case.nodes.all()}
    for label, node in nodes.items():
        make_slide(node, f"{label}-1")
        if truth.get(label):
            node.ground_truth = truth[label]
            node.save(update_fields=["ground_truth"])
        score_node(node, version, scores[label], threshold=None)
    # n3's truth comes from a confirmed review decision, not from the ground truth
    services.decide(
        node=nodes["n3"], user=people.pathologist, status="confirmed_positive", based_on=None
    )
    return version, nodes


def url(version):
    return f"/api/model-versions/{version.pk}/threshold/"


def test_preview_shows_the_rule_and_its_figures_before_locking(people, candidate):
    version, nodes = candidate
    body = client_for(people.admin).get(url(version)).json()
    assert body["source"].startswith("every node of your labs")
    assert {n["label"] for n in body["nodes"]} == {"p1", "p2", "n1", "n2", "n3"}
    n3 = next(n for n in body["nodes"] if n["label"] == "n3")
    assert n3["truth"] == "positive" and n3["truth_source"] == "confirmed decision"
    point = body["preview"]
    # positives 0.75, 0.8125 (n3), 0.9375: the highest threshold keeping all three is 0.75
    assert point["threshold"] == 0.75 and point["sensitivity"] == 1.0
    assert point["specificity"] == 1.0 and point["tn"] == 2
    assert "sensitivity" in point["ci"] and "sensitivity" in point["exact_ci"]
    version.refresh_from_db()
    assert version.threshold is None  # a preview locks nothing

    lower = client_for(people.admin).get(url(version) + "?target_sensitivity=0.6").json()
    assert lower["preview"]["threshold"] == 0.8125


def test_lock_writes_the_threshold_and_audits_it(people, candidate):
    version, _ = candidate
    response = client_for(people.admin).post(url(version), {}, content_type="application/json")
    assert response.status_code == 201, response.content
    version.refresh_from_db()
    assert version.threshold == 0.75
    assert version.threshold_metrics["source"]["truth_sources"] == [
        "confirmed decision",
        "ground truth",
    ]
    assert AuditEvent.objects.filter(action="threshold locked").count() == 1
    again = client_for(people.admin).post(url(version), {}, content_type="application/json")
    assert again.status_code == 409 and again.json()["code"] == "already_locked"


def test_chosen_nodes_of_one_class_are_refused_with_the_reason(people, candidate):
    version, nodes = candidate
    ids = f"{nodes['n1'].pk},{nodes['n2'].pk}"
    body = client_for(people.admin).get(url(version) + f"?nodes={ids}").json()
    assert body["preview"] is None and "all 2 calibration nodes are negative" in body["refused"]
    refused = client_for(people.admin).post(
        url(version),
        {"nodes": [nodes["n1"].pk, nodes["n2"].pk]},
        content_type="application/json",
    )
    assert refused.status_code == 400 and "both positive and negative" in refused.json()["detail"]
    assert ModelVersion.objects.get(pk=version.pk).threshold is None


def test_a_node_without_truth_or_outside_the_labs_is_refused(people, candidate):
    version, nodes = candidate
    client = client_for(people.admin)
    no_truth = client.get(url(version) + f"?nodes={nodes['unknown'].pk}")
    assert no_truth.status_code == 400 and "neither a ground truth" in no_truth.json()["detail"]
    other = make_case(people.other_lab, "S26-0600", nodes=("x",)).nodes.get()
    outside = client.get(url(version) + f"?nodes={other.pk}")
    assert outside.status_code == 400 and "in your labs" in outside.json()["detail"]
    bad = client.get(url(version) + "?target_sensitivity=2")
    assert bad.status_code == 400 and "target_sensitivity" in bad.json()


def test_nodes_without_a_score_of_this_model_are_scored_first(people, candidate):
    version, nodes = candidate
    extra = make_case(people.lab, "S26-0501", nodes=("p3",)).nodes.get()
    extra.ground_truth = Node.GroundTruth.POSITIVE
    extra.save(update_fields=["ground_truth"])
    make_slide(extra, "p3-1")
    client = client_for(people.admin)
    body = client.get(url(version)).json()
    assert body["missing_scores"] == [extra.pk] and body["missing_slides"] == 1
    assert "have no score of candidate yet" in body["refused"]
    started = client.post(
        f"/api/model-versions/{version.pk}/calibration-scoring/",
        {},
        content_type="application/json",
    )
    assert started.status_code == 202, started.content
    run = ScoringRun.objects.get(pk=started.json()["scoring_run"])
    assert run.model_version == version and run.slides_total == 1
    assert client.get(url(version)).json()["scoring_run"] == run.pk


def test_only_admins_lock_thresholds(people, candidate):
    version, _ = candidate
    for user in (people.pathologist, people.lab_lead):
        assert client_for(user).get(url(version)).status_code == 403
        assert (
            client_for(user).post(url(version), {}, content_type="application/json").status_code
            == 403
        )


def test_a_secondary_model_has_no_node_threshold(people):
    secondary = make_model_version("second", threshold=None, stage="secondary", live=False)
    response = client_for(people.admin).get(url(secondary))
    assert response.status_code == 400 and "primary" in response.json()["detail"]
