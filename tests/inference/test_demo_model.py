"""The demo's live model: trained, scored, calibrated and promoted through the platform's paths."""

from __future__ import annotations

import pytest

from inference.demo import DEMO_MODEL_NAME, ensure_demo_model
from inference.records import HeatMap, ModelVersion, ScoringRun, TrainingRun
from review.queues import case_queue, negative_screened_node_ids
from slides.ingest import register_slide
from slides.models import Node, Slide
from slides.synthetic import generate_slide
from tests.factories import make_case

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_lab(people, label_classes, tmp_path):
    """Two cases of a positive and a negative generated node each (small, at 0.5 µm/px)."""
    for accession, seeds in (("DEMO-A", (11, 12)), ("DEMO-B", (21, 22))):
        case = make_case(people.lab, accession, nodes=("node 1", "node 2"))
        for node, seed, tumour in zip(
            case.nodes.order_by("label"), seeds, (True, False), strict=True
        ):
            node.ground_truth = Node.GroundTruth.POSITIVE if tumour else Node.GroundTruth.NEGATIVE
            node.save(update_fields=["ground_truth"])
            made = generate_slide(
                tmp_path / f"{accession}-{seed}.tiff",
                width=1600,
                height=1600,
                mpp=0.5,
                seed=seed,
                tumour=tumour,
                workers=1,
            )
            register_slide(node=node, path=made.path, synthetic=True)
    return people.lab


def test_the_demo_model_is_live_with_a_threshold_and_every_slide_scored(people, demo_lab):
    version = ensure_demo_model(
        lab=demo_lab,
        pathologist=people.pathologist,
        admin=people.admin,
        progress=lambda _msg: None,
        epochs=1,
    )
    assert version is not None and version.name == DEMO_MODEL_NAME
    assert version.is_live and version.threshold is not None
    assert (version.hyperparameters["model_kwargs"] or {})["padding"] == "valid"
    slides = Slide.objects.filter(node__case__lab=demo_lab)
    assert set(HeatMap.objects.filter(model_version=version).values_list("slide", flat=True)) == {
        s.pk for s in slides
    }
    assert version.node_scores.count() == Node.objects.filter(case__lab=demo_lab).count()
    # the queue is ordered by score and every node has a screening result
    _, rows = case_queue(case=slides.first().node.case, user=people.pathologist)
    assert all(r.score is not None for r in rows)
    assert [r.score.score for r in rows] == sorted((r.score.score for r in rows), reverse=True)
    # a threshold locked at 100% validation sensitivity keeps the validation positives positive
    val_positive = version.node_scores.filter(
        node__ground_truth=Node.GroundTruth.POSITIVE,
        node_id__in=version.threshold_metrics["source"]["nodes"],
    )
    assert val_positive.exists()
    assert all(s.score >= version.threshold for s in val_positive)
    below = {s.node_id for s in version.node_scores.all() if s.score < version.threshold}
    screened = {row["node_id"] for row in negative_screened_node_ids(version)}
    assert screened == below  # triage lists exactly the nodes below the locked threshold

    # a second run reuses it: no new training, no new scoring
    runs, scorings = TrainingRun.objects.count(), ScoringRun.objects.count()
    again = ensure_demo_model(
        lab=demo_lab, pathologist=people.pathologist, admin=people.admin, progress=lambda _m: None
    )
    assert again.pk == version.pk
    assert (TrainingRun.objects.count(), ScoringRun.objects.count()) == (runs, scorings)
    assert ModelVersion.objects.filter(is_live=True, stage="primary").get() == version
