"""The slide-level classifier of seed 000 (inference.slide_level) on generated heat maps with a
known answer: tumour slides hold a focus of high scores, negative slides only isolated single-cell
false positives that are higher than any focus. The max-score rule ranks them the wrong way round;
a classifier of the reconstructed images separates them."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from inference.heatmaps import write_raster
from inference.records import HeatMap, ScoringRun
from inference.slide_level import (
    SlideLevelError,
    case_folds,
    compare_with_max_rule,
    load_result,
    reconstruct,
)
from slides.models import Node
from tests.factories import make_case
from tests.review.factories import make_model_version, make_slide

STEPS = 100  # enough for these images; keeps the test quick on a shared CPU


def generated_counts(*, positive: bool, rng: np.random.Generator) -> np.ndarray:
    """A count raster (0 ... 16): faint noise; a positive slide has a disc of 10-14 (a tumour
    focus), a negative one one to three isolated cells of 16 (false positives)."""
    rows, cols = int(rng.integers(90, 140)), int(rng.integers(110, 170))
    counts = np.zeros((rows, cols), np.uint8)
    noise = rng.random((rows, cols)) < 0.02
    counts[noise] = rng.integers(1, 6, int(noise.sum()))
    if positive:
        yy, xx = np.mgrid[:rows, :cols]
        cy, cx, r = rng.integers(15, rows - 15), rng.integers(15, cols - 15), rng.integers(5, 9)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        counts[disc] = rng.integers(10, 15, int(disc.sum()))
    else:
        for _ in range(int(rng.integers(1, 4))):
            counts[rng.integers(0, rows), rng.integers(0, cols)] = 16
    return counts


def test_reconstruction_keeps_small_foci_and_the_aspect_ratio():
    scores = np.zeros((100, 200), np.float32)
    scores[60, 150] = 0.9  # one cell
    image = reconstruct(scores, size=64)
    assert image.shape == (64, 64) and image.max() == pytest.approx(0.9)
    r, c = np.unravel_index(int(np.argmax(image)), image.shape)
    assert (r, c) == (60 * 64 // 200, 150 * 64 // 200)  # padded to 200 x 200, then pooled
    assert image[40:].max() == 0  # the padding below the 100 rows
    small = reconstruct(np.eye(8, dtype=np.float32), size=64)  # smaller: nearest cell
    assert small.shape == (64, 64) and small[0, 0] == 1 and small[0, 63] == 0


def test_folds_keep_cases_together_and_mix_classes():
    groups = np.repeat(np.arange(12), 2)
    labels = np.repeat(np.arange(12) < 5, 2)
    fold = case_folds(groups, labels, folds=3, seed=0)
    for g in range(12):
        assert len(set(fold[groups == g])) == 1
    for k in range(3):
        assert labels[fold == k].any() and not labels[fold == k].all()


def test_the_slide_classifier_beats_the_max_score_rule_where_it_should():
    rng = np.random.default_rng(0)
    labels = np.arange(32) < 16
    counts = [generated_counts(positive=bool(p), rng=rng) for p in labels]
    images = np.stack([reconstruct(c / 16) for c in counts])
    max_scores = np.array([c.max() / 16 for c in counts])
    result = compare_with_max_rule(
        images, max_scores, labels, np.arange(32), folds=4, bootstrap=300, steps=STEPS
    )
    assert result["max_score"]["auc"] == 0.0  # every negative's spike outranks every focus
    assert result["slide_classifier"]["auc"] >= 0.95
    low, high = result["slide_classifier"]["ci95"]
    assert low <= result["slide_classifier"]["auc"] <= high
    assert result["difference"]["ci95"][0] > 0.5  # the difference is far from chance
    assert len(result["probabilities"]) == 32


def test_too_few_slides_are_refused_with_the_reason():
    images = np.zeros((3, 64, 64), np.float32)
    with pytest.raises(SlideLevelError, match="at least 2 positive and 2 negative"):
        compare_with_max_rule(images, np.zeros(3), np.array([1, 0, 0]), np.arange(3))


@pytest.mark.django_db
def test_from_stored_heat_maps_to_the_model_page(tmp_path, people):
    """Heat maps of a scoring run, node truths, the command, the stored result, the model page."""
    version = make_model_version("slide-level-primary")
    run = ScoringRun.objects.create(model_version=version, status=ScoringRun.Status.SUCCEEDED)
    rng = np.random.default_rng(1)
    for i in range(20):
        positive = i % 2 == 0
        case = make_case(people.lab, f"SL-{i}", nodes=("node 1",))
        node = case.nodes.get()
        node.ground_truth = Node.GroundTruth.POSITIVE if positive else Node.GroundTruth.NEGATIVE
        node.save()
        slide = make_slide(node, f"slide-{i}")
        counts = generated_counts(positive=positive, rng=rng)
        path = write_raster(
            tmp_path / f"hm-{i}.npz", counts=counts, denominator=16, stride_px=40, window_px=160
        )
        HeatMap.objects.create(
            slide=slide,
            model_version=version,
            scoring_run=run,
            raster_path=str(path),
            stride_px=40,
            window_px=160,
            rows=counts.shape[0],
            cols=counts.shape[1],
            max_score=counts.max() / 16,
            max_x=0,
            max_y=0,
        )
    # a slide of a node without known truth is left out
    unknown = make_case(people.lab, "SL-unknown", nodes=("node 1",)).nodes.get()
    HeatMap.objects.create(
        slide=make_slide(unknown, "unknown"),
        model_version=version,
        scoring_run=run,
        raster_path=str(path),
        stride_px=40,
        window_px=160,
        rows=1,
        cols=1,
        max_score=1.0,
        max_x=0,
        max_y=0,
    )

    client = Client()
    client.force_login(people.pathologist)
    page = client.get(f"/models/{version.pk}/").content.decode()
    assert "Slide-level classifier" in page and "Not computed yet" in page

    call_command(
        "slide_level_classifier", str(version.pk), "--folds", "4", "--bootstrap", "200",
        "--steps", str(STEPS),
    )  # fmt: skip
    result = load_result(version)
    assert result["slides"] == 20 and result["positive"] == 10 and result["scoring_run"] == run.pk
    assert result["max_score"]["auc"] == 0.0 and result["slide_classifier"]["auc"] >= 0.9

    page = client.get(f"/models/{version.pk}/").content.decode()
    assert "Max-score rule" in page and "Not computed yet" not in page
    assert f"{result['slide_classifier']['auc']:.3f}" in page

    with pytest.raises(CommandError, match="no scoring run"):
        call_command("slide_level_classifier", str(version.pk), "--run", "999999")
    other = make_model_version("never-scored")
    with pytest.raises(CommandError, match="no scoring run with heat maps"):
        call_command("slide_level_classifier", str(other.pk))
