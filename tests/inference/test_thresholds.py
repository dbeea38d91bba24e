"""Choosing and locking the node threshold on hand-made validation score lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference.records import NodeScore, ScoringRun
from inference.thresholds import (
    ThresholdError,
    choose_threshold,
    lock_threshold,
    metrics_at,
    validation_scores,
)

from ..factories import make_case

# seed 002's development set, in spirit: every positive node >= 0.9375 except one at 0.6875
POSITIVE = [1.0, 1.0, 0.9375, 0.9375, 1.0, 0.6875, 1.0]
NEGATIVE = [0.0, 0.0625, 0.25, 0.5, 0.625, 0.375, 0.0, 0.125, 0.5625]


def test_default_is_the_highest_threshold_with_full_sensitivity():
    point = choose_threshold(POSITIVE + NEGATIVE, [True] * 7 + [False] * 9)
    assert point.threshold == 0.6875
    assert (point.sensitivity, point.specificity, point.accuracy) == (1.0, 1.0, 1.0)
    assert (point.tp, point.fn, point.tn, point.fp) == (7, 0, 9, 0)
    assert point.method == "highest threshold with 100% validation sensitivity"
    # any higher grid value loses the 0.6875 positive
    assert metrics_at(np.array(POSITIVE), np.ones(7, bool), 0.75)["sensitivity"] < 1


def test_a_negative_tied_with_the_lowest_positive_is_called_positive():
    point = choose_threshold([0.75, 1.0, 0.75, 0.25], [True, True, False, False])
    assert point.threshold == 0.75
    assert (point.tp, point.fp, point.tn) == (2, 1, 1)
    assert point.sensitivity == 1.0 and point.specificity == 0.5 and point.accuracy == 0.75


def test_threshold_is_snapped_down_onto_the_score_grid():
    point = choose_threshold([0.70, 0.95, 0.1], [True, True, False])
    assert point.threshold == 0.6875  # 0.70 -> 11/16, still keeping the 0.70 node positive
    assert point.sensitivity == 1.0
    raw = choose_threshold([0.70, 0.95, 0.1], [True, True, False], grid=None)
    assert raw.threshold == 0.70


def test_a_target_sensitivity_raises_the_threshold():
    scores = [1.0, 0.9375, 0.875, 0.5, 0.25, 0.0625, 0.5625, 0.0]
    truths = [1, 1, 1, 1, 0, 0, 0, 0]
    full = choose_threshold(scores, truths)
    assert full.threshold == 0.5 and full.specificity == 0.75  # the 0.5625 negative is above
    relaxed = choose_threshold(scores, truths, target_sensitivity=0.75)
    assert relaxed.threshold == 0.875
    assert relaxed.sensitivity == 0.75 and relaxed.specificity == 1.0
    assert "75.0%" in relaxed.method
    with pytest.raises(ThresholdError, match="target sensitivity"):
        choose_threshold(scores, truths, target_sensitivity=0)


@pytest.mark.parametrize(
    ("scores", "truths", "message"),
    [
        ([], [], "no validation nodes"),
        ([0.5, 0.25], [False, False], "all 2 validation nodes are negative"),
        (
            [0.5, 0.75, 1.0],
            ["positive", "positive", "positive"],
            "all 3 validation nodes are positive",
        ),
        ([0.5, 0.75], [True], "2 scores but 1 truths"),
        ([0.5, float("nan")], [True, False], "finite"),
        ([0.5, 1.5], [True, False], r"\[0, 1\]"),
        ([0.5, 0.25], ["positive", "maybe"], "cannot read 'maybe'"),
    ],
)
def test_sets_without_both_classes_and_bad_input_are_refused(scores, truths, message):
    with pytest.raises(ThresholdError, match=message):
        choose_threshold(scores, truths)


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimates():
    rng = np.random.default_rng(5)
    truths = np.r_[np.ones(30, bool), np.zeros(40, bool)]
    scores = np.where(truths, rng.integers(8, 17, 70), rng.integers(0, 12, 70)) / 16
    a = choose_threshold(scores, truths, seed=3, n_bootstrap=500)
    b = choose_threshold(scores, truths, seed=3, n_bootstrap=500)
    c = choose_threshold(scores, truths, seed=4, n_bootstrap=500)
    assert a.ci == b.ci and a.ci != c.ci
    assert a.sensitivity == 1.0 and a.ci["sensitivity"] == [
        1.0,
        1.0,
    ]  # the bootstrap cannot see beyond
    low, high = a.exact_ci["sensitivity"]
    assert 0.85 < low < 1.0 and high == 1.0  # Clopper-Pearson for 30 of 30
    for name in ("specificity", "accuracy"):
        low, high = a.ci[name]
        assert low <= getattr(a, name) <= high and high - low > 0.05
        low, high = a.exact_ci[name]
        assert low <= getattr(a, name) <= high


def test_mappings_are_aligned_by_node():
    point = choose_threshold(
        {"n1": 0.75, "n2": 0.25, "n3": 1.0}, {"n3": True, "n1": True, "n2": False}
    )
    assert point.threshold == 0.75 and point.specificity == 1.0
    with pytest.raises(ThresholdError, match="no truth for nodes"):
        choose_threshold({"n1": 0.75, "n9": 0.1}, {"n1": True})


def test_lock_threshold_writes_the_version_once(db, tmp_path, people):
    from tests.inference.test_scoring import make_version, random_dense_model, save_weights

    version = make_version(save_weights(random_dense_model(), Path(tmp_path) / "w.pt"))
    point = lock_threshold(
        version=version,
        node_scores=POSITIVE + NEGATIVE,
        truths=[True] * 7 + [False] * 9,
        user=people.admin,
        n_bootstrap=200,
    )
    version.refresh_from_db()
    assert version.threshold == point.threshold == 0.6875
    assert version.threshold_method == "highest threshold with 100% validation sensitivity"
    metrics = version.threshold_metrics
    assert (
        metrics["sensitivity"] == 1.0 and metrics["n_positive"] == 7 and metrics["n_negative"] == 9
    )
    assert set(metrics["ci"]) == {"sensitivity", "specificity", "accuracy"}
    assert metrics["seed"] == 0 and metrics["n_bootstrap"] == 200
    with pytest.raises(ThresholdError, match="already has a locked threshold"):
        lock_threshold(version=version, node_scores=[0.5, 0.25], truths=[True, False])
    lock_threshold(
        version=version,
        node_scores=[0.5, 0.25],
        truths=[True, False],
        replace=True,
        target_sensitivity=1.0,
        n_bootstrap=0,
    )
    version.refresh_from_db()
    assert version.threshold == 0.5
    from audit.models import AuditEvent

    assert AuditEvent.objects.filter(action="threshold locked").count() == 2


def test_validation_scores_come_from_a_run_and_skip_unknown_truths(db, tmp_path, people):
    from tests.inference.test_scoring import make_version, random_dense_model, save_weights

    version = make_version(save_weights(random_dense_model(), Path(tmp_path) / "w.pt"))
    case = make_case(people.lab, "S26-0200", nodes=("a", "b", "c"))
    run = ScoringRun.objects.create(model_version=version)
    truths = {"a": "positive", "b": "negative", "c": "unknown"}
    for node in case.nodes.all():
        node.ground_truth = truths[node.label]
        node.save()
        NodeScore.objects.create(node=node, model_version=version, scoring_run=run, score=0.5)
    scores, known = validation_scores(run=run)
    labels = {n.pk: n.label for n in case.nodes.all()}
    assert {labels[k]: v for k, v in known.items()} == {"a": True, "b": False}
    assert set(scores) == set(known)


def test_manage_py_calibrate_locks_the_runs_model(db, tmp_path, people, capsys):
    from django.core.management import CommandError, call_command

    from tests.inference.test_scoring import make_version, random_dense_model, save_weights

    version = make_version(save_weights(random_dense_model(), Path(tmp_path) / "w.pt"))
    case = make_case(people.lab, "S26-0300", nodes=("p1", "p2", "n1", "n2"))
    run = ScoringRun.objects.create(model_version=version)
    values = {"p1": (1.0, "positive"), "p2": (0.75, "positive"), "n1": (0.75, "negative")}
    values["n2"] = (0.125, "negative")
    for node in case.nodes.all():
        score, truth = values[node.label]
        node.ground_truth = truth
        node.save()
        NodeScore.objects.create(node=node, model_version=version, scoring_run=run, score=score)
    call_command("calibrate", str(run.pk), "--dry-run", "--bootstrap", "50")
    version.refresh_from_db()
    assert version.threshold is None and "would lock threshold 0.75" in capsys.readouterr().out
    call_command("calibrate", str(run.pk), "--bootstrap", "50")
    version.refresh_from_db()
    assert version.threshold == 0.75 and version.threshold_metrics["specificity"] == 0.5
    assert version.threshold_metrics["source"]["scoring_run"] == run.pk
    with pytest.raises(CommandError, match="already has a locked threshold"):
        call_command("calibrate", str(run.pk))
