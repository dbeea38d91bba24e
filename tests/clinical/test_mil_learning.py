"""Attention MIL on generated bags whose label depends on a known image feature (a few
"tumour-like" instances along a known direction) and a known clinical variable (tumour size):
each model learns it, the +clinical variant (DL-CNB+C) beats the image-only one (DL-CNB), and the
attention concentrates on the key instances. No database: the pure training core."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.mil import MILRecipe, collate, mil_metrics, predict_bags, train_mil
from inference.mil_synthetic import generated_bags
from inference.models.mil import GatedAttentionMIL

RECIPE = MILRecipe(max_epochs=30, early_stopping_patience=8, n_bootstrap=200)


def _fit(task: str, *, clinical: bool, seed: int = 1):
    data = generated_bags(240, task=task, seed=seed)
    train, val = data.bags[:160], data.bags[160:]
    result = train_mil(
        train_bags=train, val_bags=val, classes=data.classes, recipe=RECIPE, use_clinical=clinical
    )
    return data, val, result


@pytest.fixture(scope="module")
def binary_image_only():
    torch.set_num_threads(1)
    return _fit("binary", clinical=False)


@pytest.fixture(scope="module")
def binary_with_clinical():
    return _fit("binary", clinical=True)


def _auc(result) -> float:
    return result.metrics["n_plus_vs_n0"]["auc"]["value"]


def test_image_only_model_learns_the_key_instances(binary_image_only):
    _, _, result = binary_image_only
    # the image explains part of the label (ceiling about 0.75): well above chance
    assert _auc(result) > 0.65
    low, high = result.metrics["n_plus_vs_n0"]["auc"]["ci95"]
    assert low < _auc(result) < high


def test_clinical_variant_beats_image_only(binary_image_only, binary_with_clinical):
    _, _, image = binary_image_only
    _, _, both = binary_with_clinical
    assert _auc(both) > 0.85
    assert _auc(both) > _auc(image) + 0.1
    assert both.metrics["accuracy"] > image.metrics["accuracy"]
    for key in ("sensitivity", "specificity", "accuracy"):
        estimate = both.metrics["n_plus_vs_n0"][key]
        assert 0 <= estimate["ci95"][0] <= estimate["value"] <= estimate["ci95"][1] <= 1


def test_attention_concentrates_on_the_key_instances(binary_image_only):
    data, val, result = binary_image_only
    _, weights = predict_bags(result.build_model(), val)
    keys = data.key[160:]
    with_key = [i for i, k in enumerate(keys) if k.any()]
    share = np.mean([weights[i][keys[i]].sum() for i in with_key])
    fraction = np.mean([keys[i].mean() for i in with_key])
    assert fraction < 0.15
    assert share > 3 * fraction  # about 12% of the instances draw well over a third of attention
    for w in weights:
        assert w.sum() == pytest.approx(1.0, abs=1e-5)


def test_three_class_model_learns_and_reports_per_class():
    torch.set_num_threads(1)
    _, _, result = _fit("three-class", clinical=False, seed=2)
    metrics = result.metrics
    assert metrics["classes"] == ["N0", "N+(1-2)", "N+(>2)"]
    assert metrics["n_plus_vs_n0"]["auc"]["value"] > 0.9
    assert metrics["accuracy"] > 0.7
    for name in metrics["classes"]:
        per = metrics["per_class"][name]
        assert per["auc"]["value"] > 0.8, name
        assert set(per) >= {"auc", "accuracy", "sensitivity", "specificity", "argmax"}


def test_padded_batch_equals_each_bag_alone():
    torch.manual_seed(0)
    data = generated_bags(6, seed=3)
    model = GatedAttentionMIL(in_features=32, num_classes=3, clinical_features=6).eval()
    x, mask, clinical, _ = collate(data.bags, with_clinical=True)
    with torch.no_grad():
        logits, weights = model(x, mask, clinical)
        ref_logits, ref_weights = model.forward_one_by_one(
            [torch.from_numpy(b.features) for b in data.bags], clinical
        )
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    for i, bag in enumerate(data.bags):
        assert torch.allclose(weights[i, : len(bag)], ref_weights[i], atol=1e-6)
        assert float(weights[i, len(bag) :].abs().sum()) == 0.0  # padding gets no attention


def test_metrics_of_a_perfect_and_a_useless_scorer():
    labels = np.array([0, 0, 1, 1, 0, 1])
    perfect = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9], [0.7, 0.3], [0.3, 0.7]])
    m = mil_metrics(labels, perfect, ["N0", "N+"], n_boot=100)
    assert m["n_plus_vs_n0"]["auc"]["value"] == 1.0 and m["accuracy"] == 1.0
    assert m["n_plus_vs_n0"]["sensitivity"]["value"] == 1.0
    flat = np.full((6, 2), 0.5)
    assert mil_metrics(labels, flat, ["N0", "N+"], n_boot=0)["n_plus_vs_n0"]["auc"]["value"] == 0.5
