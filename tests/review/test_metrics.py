"""Metrics against confirmed decisions, on a hand-made set whose answers are worked out below."""

from __future__ import annotations

import numpy as np
import pytest

from review import services
from review.metrics import evaluate
from review.models import ReviewDecision
from tests.factories import make_case

from .conftest import client_for
from .factories import make_model_version, score_node

# label: (score by v1, truth)   v1 threshold 0.5
#   A 0.9 P   B 0.7 N   C 0.6 P   D 0.4 P (missed)   E 0.3 N   F 0.2 N   G 0.4 N (tied with D)
#   H 0.1 unreviewed   I 0.8 needs further work     (scored, not evaluated)
# Evaluated: 3 positive (A C D), 4 negative (B E F G).
#   screened positive (>= 0.5): A B C  ->  TP 2 (A C), FP 1 (B), FN 1 (D), TN 3 (E F G)
#   sensitivity 2/3, specificity 3/4, accuracy 5/7
#   AUC = P(pos > neg) + ties/2 over 3 x 4 = 12 pairs:
#     A 0.9 beats 4; C 0.6 beats E F G (3); D 0.4 beats E F (2) and ties G (0.5)  ->  9.5 / 12
#   workload saved: scored 9, screened negative D E F G H = 5  ->  5/9
SET = {
    "A": (0.9, "confirmed_positive"),
    "B": (0.7, "confirmed_negative"),
    "C": (0.6, "confirmed_positive"),
    "D": (0.4, "confirmed_positive"),
    "E": (0.3, "confirmed_negative"),
    "F": (0.2, "confirmed_negative"),
    "G": (0.4, "confirmed_negative"),
    "H": (0.1, None),
    "I": (0.8, "needs_further_work"),
}


@pytest.fixture
def hand_made(people, db):
    services.set_lab_settings(lab=people.lab, user=people.admin, require_region_views=False)
    v1 = make_model_version("v1", threshold=0.5, live=False)
    v2 = make_model_version("v2", threshold=0.35, live=True)
    case = make_case(people.lab, "S26-M", nodes=tuple(SET))
    nodes = {n.label: n for n in case.nodes.all()}
    for label, (score, status) in SET.items():
        score_node(nodes[label], v1, 0.05)  # an older v1 score: only the latest counts
        score_node(nodes[label], v1, score)
        if status:
            services.decide(
                node=nodes[label], user=people.pathologist, status=status, based_on=None
            )
    # v2 scored only A (0.95) and E (0.2) and B (0.2): perfect on those three.
    for label, score in (("A", 0.95), ("E", 0.2), ("B", 0.2)):
        score_node(nodes[label], v2, score)
    # A node of another lab never counts for this lab's users.
    other = make_case(people.other_lab, "S26-OTHER", nodes=("X",)).nodes.get()
    score_node(other, v1, 0.1)
    services.decide(node=other, user=people.outsider, status="confirmed_positive", based_on=None)
    return {"v1": v1, "v2": v2, "nodes": nodes}


def test_metrics_api_matches_hand_computed_answers(people, hand_made):
    response = client_for(people.lab_lead).get("/api/review/metrics/?bootstrap=500&seed=7")
    assert response.status_code == 200
    versions = {v["model_version"]["name"]: v for v in response.json()["versions"]}
    assert list(versions) == ["v2", "v1"]  # live first
    v1 = versions["v1"]
    assert v1["threshold"] == 0.5
    assert (v1["evaluated"], v1["positives"], v1["negatives"]) == (7, 3, 4)
    assert v1["confusion"] == {"tp": 2, "fp": 1, "tn": 3, "fn": 1}
    assert v1["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert v1["specificity"]["value"] == pytest.approx(3 / 4)
    assert v1["accuracy"]["value"] == pytest.approx(5 / 7)
    assert v1["auc"]["value"] == pytest.approx(9.5 / 12)
    for key in ("sensitivity", "specificity", "accuracy", "auc"):
        low, high = v1[key]["ci95"]
        assert 0 <= low <= v1[key]["value"] <= high <= 1, key
    assert v1["workload_saved"] == {
        "scored": 9,
        "screened_negative": 5,
        "share": pytest.approx(5 / 9),
    }
    assert [(m["case"], m["label"]) for m in v1["missed_positives"]] == [("S26-M", "D")]
    roc = v1["roc"]
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    v2 = versions["v2"]
    assert (v2["evaluated"], v2["confusion"]) == (3, {"tp": 1, "fp": 0, "tn": 2, "fn": 0})
    assert v2["auc"]["value"] == 1.0 and v2["missed_positives"] == []


def test_bootstrap_is_seeded(people, hand_made):
    client = client_for(people.lab_lead)
    a = client.get("/api/review/metrics/?bootstrap=300&seed=1").json()
    b = client.get("/api/review/metrics/?bootstrap=300&seed=1").json()
    c = client.get("/api/review/metrics/?bootstrap=300&seed=2").json()
    assert a == b
    assert a["versions"][1]["auc"]["ci95"] != c["versions"][1]["auc"]["ci95"]


def test_bootstrap_auc_matches_mann_whitney_on_each_resample():
    """The one-sort weighted AUC used for the bootstrap equals a direct Mann-Whitney count."""
    from inference.metrics import auc_by_ranks
    from review.metrics import _weighted_auc

    rng = np.random.default_rng(3)
    y = rng.random(40) < 0.4
    s = np.round(rng.random(40), 1)  # many ties
    order = np.argsort(s, kind="mergesort")
    groups = np.r_[0, np.cumsum(np.diff(s[order]) != 0)]
    for _ in range(20):
        idx = rng.integers(0, 40, 40)
        if y[idx].all() or not y[idx].any():
            continue
        w = np.bincount(idx, minlength=40).astype(float)
        assert _weighted_auc(order, groups, int(groups[-1]) + 1, y, w) == pytest.approx(
            auc_by_ranks(y[idx], s[idx])
        )


def test_evaluate_with_one_class_gives_no_auc():
    out = evaluate(np.array([True, True]), np.array([0.7, 0.2]), 0.5, n_boot=50, seed=0)
    assert out["sensitivity"].value == 0.5 and out["specificity"].value is None
    assert "auc" not in out


def test_metrics_page_shows_figures_roc_and_missed_positives(people, hand_made):
    response = client_for(people.admin).get("/review/metrics/?bootstrap=200")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('class="roc-curve"') == 2
    assert "0.792" in html  # AUC of v1, 9.5/12
    assert "0.667" in html and "0.750" in html and "0.714" in html
    assert "S26-M</a> / D" in html
    assert "5 of 9 scored nodes screened negative" in html


def test_pathologists_do_not_see_metrics(people, hand_made):
    client = client_for(people.pathologist)
    assert client.get("/api/review/metrics/").status_code == 403
    assert client.get("/review/metrics/").status_code == 403


def test_metrics_follow_the_current_decision(people, hand_made):
    node_d = hand_made["nodes"]["D"]
    current = ReviewDecision.objects.filter(node=node_d).latest("id")
    services.decide(
        node=node_d, user=people.lab_lead, status="confirmed_negative", based_on=current.pk
    )
    v1 = next(
        v
        for v in client_for(people.lab_lead)
        .get("/api/review/metrics/?bootstrap=0")
        .json()["versions"]
        if v["model_version"]["name"] == "v1"
    )
    assert v1["confusion"] == {"tp": 2, "fp": 1, "tn": 4, "fn": 0}
    assert v1["missed_positives"] == [] and v1["auc"]["ci95"] == [None, None]
