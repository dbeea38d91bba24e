"""ROC and AUC against values worked out by hand, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from inference.metrics import accuracy, auc_by_ranks, roc_auc, roc_curve


def test_roc_without_ties_matches_hand_computation():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs won 0.8>0.1, 0.8>0.4, 0.35>0.1 -> 3/4
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    roc = roc_curve(y, s)
    assert roc.thresholds[0] == np.inf
    np.testing.assert_allclose(roc.thresholds[1:], [0.8, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(roc.tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(roc.fpr, [0, 0, 0.5, 0.5, 1])
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert auc_by_ranks(y, s) == pytest.approx(0.75)


def test_tied_scores_are_one_threshold_and_count_half():
    # positives 0.5, 0.9; negatives 0.5, 0.2: 0.5 vs 0.5 is a tie (1/2), the other three are won
    y = [0, 1, 0, 1]
    s = [0.5, 0.5, 0.2, 0.9]
    roc = roc_curve(y, s)
    np.testing.assert_allclose(roc.thresholds[1:], [0.9, 0.5, 0.2])
    np.testing.assert_allclose(roc.tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(roc.fpr, [0, 0, 0.5, 1])  # diagonal step across the tie
    assert roc_auc(y, s) == pytest.approx(3.5 / 4)
    assert auc_by_ranks(y, s) == pytest.approx(3.5 / 4)


def test_all_scores_tied_is_chance_and_perfect_and_inverted():
    assert roc_auc([0, 1, 0, 1, 1], [0.3] * 5) == pytest.approx(0.5)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1.0)
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(0.0)


def test_auc_agrees_with_ranks_on_random_tied_data():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y * 0.7, 1)  # rounding makes many ties
    assert roc_auc(y, s) == pytest.approx(auc_by_ranks(y, s), abs=1e-12)
    # brute force over all pairs
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    brute = ((diff > 0) + 0.5 * (diff == 0)).mean()
    assert roc_auc(y, s) == pytest.approx(brute, abs=1e-12)


def test_drop_intermediate_keeps_area_and_corners():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.random(300) + 0.3 * y
    full = roc_curve(y, s)
    thin = roc_curve(y, s, drop_intermediate=True)
    assert thin.fpr.size < full.fpr.size
    assert thin.auc == pytest.approx(full.auc, abs=1e-12)
    assert (thin.fpr[0], thin.tpr[0], thin.fpr[-1], thin.tpr[-1]) == (0, 0, 1, 1)


def test_one_class_and_bad_input():
    assert np.isnan(roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_curve([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="labels must be 0/1"):
        roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0, 1], [0.1, np.nan])


def test_accuracy_and_json():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    d = roc_curve([0, 1], [0.2, 0.7]).to_dict()
    assert d["thresholds"][0] is None and d["fpr"][-1] == 1.0
