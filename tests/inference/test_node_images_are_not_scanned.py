"""CT and ultrasound images of a node are not whole slides: patch models never scan them.

Rescoring after a promotion, scoring on import, the node's score, patch datasets and hard-negative
mining all take whole slides only; naming a node image explicitly is refused with the reason.
"""

from __future__ import annotations

import pytest

from annotations.datasets import DatasetError, create_snapshot
from inference.mining import MiningError, negative_slides
from inference.records import ScoringRun
from inference.rescoring import ScoringRequestError, rescore_all
from slides.models import Node, Slide
from slides.node_images import register_node_image
from tests.slides.node_image_files import write_dicom

from .test_scoring import generated_slide, make_version, random_dense_model, save_weights


@pytest.fixture
def node_with_both(case, tmp_path):
    """A negative node with one whole slide and one CT image."""
    node = case.nodes.first()
    Node.objects.filter(pk=node.pk).update(ground_truth=Node.GroundTruth.NEGATIVE)
    slide = generated_slide(node, tmp_path / "slides", seed=5, tumour=False)
    ct = register_node_image(node=node, path=write_dicom(tmp_path / "ct.dcm"), modality="ct")
    assert ct.modality == Slide.Modality.CT and slide.modality == Slide.Modality.SLIDE
    return node, slide, ct


def test_rescoring_takes_whole_slides_and_refuses_named_node_images(node_with_both, tmp_path):
    _, slide, ct = node_with_both
    version = make_version(save_weights(random_dense_model(), tmp_path / "dense.pt"))
    run = rescore_all(version=version, enqueue=False)
    assert run.slides_total == 1
    assert list(run.slide_jobs.values_list("slide_id", flat=True)) == [slide.pk]
    with pytest.raises(ScoringRequestError, match=rf"slides \[{ct.pk}\] are node images"):
        rescore_all(version=version, slides=[slide.pk, ct.pk], enqueue=False)


def test_importing_a_node_image_queues_no_scoring(
    case, tmp_path, django_capture_on_commit_callbacks
):
    version = make_version(save_weights(random_dense_model(), tmp_path / "dense.pt"), live=True)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        register_node_image(
            node=case.nodes.first(), path=write_dicom(tmp_path / "ct.dcm"), modality="ct"
        )
    assert not ScoringRun.objects.exists()
    # a whole slide imported the same way is scored by the live model
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        slide = generated_slide(case.nodes.first(), tmp_path / "slides", seed=6, tumour=False)
    assert callbacks
    run = ScoringRun.objects.get()
    assert run.model_version == version
    assert list(run.slide_jobs.values_list("slide_id", flat=True)) == [slide.pk]


def test_patch_datasets_refuse_node_images(node_with_both, people):
    _, slide, ct = node_with_both
    with pytest.raises(DatasetError, match=rf"these are node images: {ct.pk} \("):
        create_snapshot(name="mixed", slides=[slide.pk, ct.pk], user=people.pathologist)


def test_mining_skips_node_images_and_refuses_them_by_name(node_with_both):
    _, slide, ct = node_with_both
    assert [s.pk for s in negative_slides()] == [slide.pk]
    with pytest.raises(MiningError, match=rf"not whole slides: {ct.pk} \("):
        negative_slides([ct.pk])
