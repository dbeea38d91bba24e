"""Reader-study statistics against values worked out by hand (written out below)."""

from __future__ import annotations

import pytest

from studies import statistics as st
from studies.models import reading_order


def test_wilson_interval_by_hand():
    # 8/10: centre (0.8 + 1.96²/20) / (1 + 1.96²/10) = 0.99208 / 1.38416 = 0.7167;
    # half-width 1.96 · sqrt(0.16/10 + 1.96²/400) / 1.38416 = 0.2266 → [0.490, 0.943]
    low, high = st.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=5e-4)
    assert high == pytest.approx(0.9433, abs=5e-4)
    # 7/10 → [0.397, 0.892]; 15/20 → [0.531, 0.888]
    assert st.wilson_interval(7, 10) == pytest.approx((0.3968, 0.8922), abs=5e-4)
    assert st.wilson_interval(15, 20) == pytest.approx((0.5313, 0.8881), abs=5e-4)
    # edges stay inside [0, 1]: 10/10 → [0.7225, 1]; 0/10 → [0, 0.2775]
    assert st.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-4)
    assert st.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-4)
    assert st.wilson_interval(0, 0) == (None, None)
    with pytest.raises(ValueError):
        st.wilson_interval(3, 2)


def test_mcnemar_exact_by_hand():
    # b=5, c=1: n=6, P(X ≤ 1) = (1 + 6)/64 → p = 14/64 = 0.21875
    assert st.mcnemar_exact(5, 1) == pytest.approx(0.21875)
    assert st.mcnemar_exact(1, 5) == pytest.approx(0.21875)
    # b=7, c=1: (1 + 8)/256 · 2 = 0.0703125
    assert st.mcnemar_exact(7, 1) == pytest.approx(0.0703125)
    # b=5, c=3: (1 + 8 + 28 + 56)/256 · 2 = 186/256
    assert st.mcnemar_exact(5, 3) == pytest.approx(186 / 256)
    # symmetric or empty tables: p = 1
    assert st.mcnemar_exact(3, 3) == 1.0
    assert st.mcnemar_exact(0, 0) == 1.0
    assert st.mcnemar_exact(0, 3) == pytest.approx(0.25)


def test_reader_with_tp8_fn2_tn7_fp3():
    truth = [True] * 10 + [False] * 10
    calls = [True] * 8 + [False] * 2 + [False] * 7 + [True] * 3
    m = st.diagnostic_metrics(truth, calls)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (8, 2, 7, 3)
    assert m["sensitivity"]["value"] == pytest.approx(0.8)
    assert (m["sensitivity"]["low"], m["sensitivity"]["high"]) == pytest.approx(
        (0.490, 0.943), abs=5e-4
    )
    assert m["specificity"]["value"] == pytest.approx(0.7)
    assert (m["specificity"]["low"], m["specificity"]["high"]) == pytest.approx(
        (0.397, 0.892), abs=5e-4
    )
    assert m["accuracy"] == {
        "k": 15,
        "n": 20,
        "value": 0.75,
        "low": pytest.approx(0.5313, abs=5e-4),
        "high": pytest.approx(0.8881, abs=5e-4),
    }


def test_mcnemar_of_two_parties_splits_by_truth():
    truth = [True, True, True, True, False, False, False]
    model = [True, True, False, True, False, True, False]  # wrong on 2 and 5
    reader = [False, True, True, False, True, False, False]  # wrong on 0, 3, 4
    r = st.mcnemar(truth, model, reader)
    assert (r["accuracy"]["b"], r["accuracy"]["c"]) == (3, 2)  # model right/reader wrong: 0,3,4
    assert (r["sensitivity"]["b"], r["sensitivity"]["c"]) == (2, 1)
    assert (r["specificity"]["b"], r["specificity"]["c"]) == (1, 1)
    assert r["accuracy"]["p"] == 1.0  # (1+5+10)/32 · 2 > 1


def test_reading_order_is_a_stable_permutation_per_reader():
    ids = list(range(100, 130))
    first = reading_order(seed=42, reader_id=7, image_ids=ids)
    assert sorted(first) == ids
    assert first == reading_order(seed=42, reader_id=7, image_ids=list(reversed(ids)))
    assert first != reading_order(seed=42, reader_id=8, image_ids=ids)
    assert first != reading_order(seed=43, reader_id=7, image_ids=ids)
    assert first != ids
