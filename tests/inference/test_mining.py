"""Hard-negative mining and the secondary-training chain (seed 002), on generated slides."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.jobs import TrainingRequestError, execute_training_run, launch_training, run_dir
from inference.mining import MinedPatches, balance, launch_secondary_training, mine
from inference.records import ModelVersion, Stage, TrainingRun
from inference.scoring import Classifier, ScanGeometry, naive_window_probabilities
from slides.models import Node
from tests.factories import make_case
from tests.inference.test_scoring import (
    TINY,
    _read_at_1um,
    generated_slide,
    make_version,
    random_dense_model,
    save_weights,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def negative_case(people, tmp_path):
    """A case of two negative nodes (generated follicle/sinus slides) and one positive node."""
    case = make_case(people.lab, "S26-0300", nodes=("neg-1", "neg-2", "pos-1"))
    slides = {}
    for i, node in enumerate(case.nodes.order_by("label")):
        positive = node.label.startswith("pos")
        node.ground_truth = Node.GroundTruth.POSITIVE if positive else Node.GroundTruth.NEGATIVE
        node.save()
        slides[node.label] = generated_slide(
            node, tmp_path / "slides", seed=70 + i, tumour=positive
        )
    return case, slides


@pytest.fixture
def tumour_arrays(tmp_path):
    """A 40 px patch folder: 40 tumour and 40 normal patches from two cases, split by case."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 255, (80, 40, 40, 3), dtype=np.uint8)
    labels = np.repeat([0, 1], 40)
    groups = np.tile([101, 102], 40)
    folder = tmp_path / "tumour-patches"
    folder.mkdir()
    np.save(folder / "images.npy", images)
    np.save(folder / "labels.npy", labels)
    np.save(folder / "groups.npy", groups)
    (folder / "classes.txt").write_text("normal\ntumour\n")
    return folder, images, labels, groups


@pytest.fixture
def primary(tmp_path):
    return make_version(save_weights(random_dense_model(), tmp_path / "primary.pt"))


def _source(primary, tumour_arrays, slides=None, **kw):
    source = {
        "kind": "hard-negatives",
        "primary": primary.pk,
        "tumour_source": {"kind": "arrays", "path": str(tumour_arrays[0])},
        **kw,
    }
    if slides is not None:
        source["negative_slides"] = [s.pk for s in slides]
    return source


def test_mined_patches_are_exactly_the_windows_the_primary_calls_tumour(
    negative_case, tumour_arrays, primary, tmp_path
):
    _case, slides = negative_case
    out = tmp_path / "mined"
    events = []
    summary = mine(_source(primary, tumour_arrays), out, progress=events.append)

    # the default set is every slide of a node known negative; never the positive node
    assert sorted(summary["slides"]) == sorted([slides["neg-1"].pk, slides["neg-2"].pk])
    assert summary["stride"] == 20 and summary["window"] == 40
    assert events[-1]["phase"] == "mining" and events[-1]["fraction"] == 1.0
    images = np.load(out / "images.npy")
    labels = np.load(out / "labels.npy")
    in_val = np.load(out / "val.npy")
    sources = np.load(out / "sources.npy")
    assert (out / "classes.txt").read_text().split() == ["non-tumour", "tumour"]
    assert not list(tmp_path.glob(".mined.*"))  # no temporary folder left behind

    classifier = Classifier.from_version(primary)
    mined = np.flatnonzero(sources[:, 0] >= 0)
    assert mined.size == summary["hard_negatives"] > 0
    assert (labels[mined] == 0).all()
    # each hard negative is a window the primary calls tumour, cut from its slide where it says
    assert (classifier.window_probabilities(images[mined]) >= 0.5).all()
    by_slide = {s.pk: _read_at_1um(Path(s.file_path)) for s in slides.values()}
    for i in mined[:: max(1, mined.size // 25)]:
        slide_id, x, y = sources[i]
        assert np.array_equal(images[i], by_slide[slide_id][y : y + 40, x : x + 40])
    # the scan found every such window of the tissue: never more than the patch loop over the
    # whole image at stride 20 calls tumour
    naive = sum(
        int((naive_window_probabilities(classifier, img, window=40, stride=20) >= 0.5).sum())
        for sid, img in by_slide.items()
        if sid != slides["pos-1"].pk
    )
    assert summary["windows_called_tumour"] <= naive
    assert summary["windows_called_tumour"] >= 0.5 * naive  # most of a generated node is tissue

    # balanced on each side; tumour patches keep the primary's split (read from the folder)
    for side in (False, True):
        counts = np.bincount(labels[in_val == side], minlength=2)
        assert counts[0] == counts[1] > 0
    tumour_images = tumour_arrays[1][tumour_arrays[2] == 1]
    for patch in images[labels == 1][:10]:
        assert any(np.array_equal(patch, t) for t in tumour_images)

    # mining again reuses the finished folder (a resumed run does not scan twice)
    stamp = (out / "images.npy").stat().st_mtime_ns
    assert mine(_source(primary, tumour_arrays), out) == summary
    assert (out / "images.npy").stat().st_mtime_ns == stamp


def test_balance_samples_the_larger_class_on_each_side():
    def patches(n, val_every):
        in_val = np.zeros(n, bool)
        in_val[::val_every] = True
        return MinedPatches(
            np.zeros((n, 4, 4, 3), np.uint8), np.arange(n), in_val, np.zeros((n, 3), np.int64)
        )

    negatives, tumour = balance(patches(100, 4), patches(30, 3), max_per_class=1000, seed=0)
    assert len(negatives) == len(tumour) == 30
    assert negatives.in_val.sum() == tumour.in_val.sum() == 10
    small_neg, small_tum = balance(patches(100, 4), patches(30, 3), max_per_class=8, seed=0)
    assert len(small_neg) == len(small_tum) <= 8


def test_refusals_name_the_problem_and_queue_nothing(
    negative_case, tumour_arrays, primary, tmp_path
):
    _case, slides = negative_case
    secondary = make_version(
        save_weights(random_dense_model(), tmp_path / "s.pt"), stage=Stage.SECONDARY
    )
    same = make_version(
        save_weights(random_dense_model(**{**TINY, "padding": "same"}), tmp_path / "same.pt"),
        padding="same",
    )
    before = TrainingRun.objects.count()
    with pytest.raises(TrainingRequestError, match="known to hold tumour"):
        launch_training(
            dataset_source=_source(primary, tumour_arrays, [slides["pos-1"]]),
            stage=Stage.SECONDARY,
            enqueue=False,
        )
    with pytest.raises(TrainingRequestError, match="stage secondary"):
        launch_training(dataset_source=_source(primary, tumour_arrays), enqueue=False)
    with pytest.raises(TrainingRequestError, match="mining needs a primary"):
        launch_secondary_training(
            primary=secondary,
            tumour_source=_source(primary, tumour_arrays)["tumour_source"],
            enqueue=False,
        )
    with pytest.raises(TrainingRequestError, match="padding"):
        launch_secondary_training(primary=same, enqueue=False)
    with pytest.raises(TrainingRequestError, match="multiple of the stride"):
        launch_secondary_training(
            primary=primary,
            stride=15,
            tumour_source={"kind": "arrays", "path": str(tumour_arrays[0])},
            enqueue=False,
        )
    Node.objects.filter(ground_truth=Node.GroundTruth.NEGATIVE).update(ground_truth="unknown")
    with pytest.raises(TrainingRequestError, match="no negative nodes"):
        launch_secondary_training(
            primary=primary,
            tumour_source={"kind": "arrays", "path": str(tumour_arrays[0])},
            enqueue=False,
        )
    assert TrainingRun.objects.count() == before


def test_a_primary_without_false_positives_ends_the_run_failed_with_the_reason(
    negative_case, tumour_arrays, tmp_path
):
    model = random_dense_model()
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.0, -1e4]))  # never tumour
    primary = make_version(save_weights(model, tmp_path / "never.pt"))
    run = launch_secondary_training(
        primary=primary,
        tumour_source={"kind": "arrays", "path": str(tumour_arrays[0])},
        enqueue=False,
    )
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.FAILED
    run.refresh_from_db()
    assert "called 0 window(s) of 2 negative slide(s) tumour" in run.status_reason
    assert not ModelVersion.objects.filter(training_run=run).exists()
    assert not (run_dir(run) / "hard-negatives").exists()  # nothing half-written


def test_one_action_mines_and_trains_a_secondary(negative_case, tumour_arrays, primary, settings):
    # as a real primary run records it: the network the weights are for
    primary.training_run.recipe = {"model_kwargs": TINY}
    primary.training_run.save()
    run = launch_secondary_training(
        primary=primary,
        tumour_source={"kind": "arrays", "path": str(tumour_arrays[0])},
        recipe={"max_epochs": 1, "batch_size": 16},
        enqueue=False,
    )
    assert run.stage == Stage.SECONDARY and run.dataset_source["kind"] == "hard-negatives"
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.SUCCEEDED, run.status_reason
    run.refresh_from_db()
    version = run.model_version
    assert version.stage == Stage.SECONDARY
    mining = version.dataset_summary["mining"]
    assert mining["primary"] == primary.pk and mining["hard_negatives"] > 0
    assert (
        version.dataset_summary["counts"]["non-tumour"]
        == version.dataset_summary["counts"]["tumour"]
    )
    folder = Path(settings.RESULTS_DIR) / "training" / f"run-{run.pk}" / "hard-negatives"
    assert json.loads((folder / "summary.json").read_text()) == mining
    # it started from the primary's weights (every tensor loaded, our own key names)
    assert run.recipe["pretrained_weights"] == primary.weights_path
    report = version.hyperparameters["pretrained_report"]
    assert report["loaded"] and not report["missing"] and not report["shape_mismatch"]
    # the secondary is dense-scannable like the primary, so the cascade can run it densely
    Classifier.from_version(version).check_dense(ScanGeometry())


def test_only_admins_launch_the_chain_and_bad_requests_say_why(
    client, people, negative_case, tumour_arrays, primary, settings
):
    # an admin's run reads files under the import roots only (inference.scope)
    settings.SLIDE_IMPORT_ROOTS = [Path(tumour_arrays[0]).parent]
    url = f"/api/model-versions/{primary.pk}/train-secondary/"
    client.force_login(people.pathologist)
    assert client.post(url, {}, content_type="application/json").status_code == 403
    client.force_login(people.admin)
    # the test primary's own dataset ({"kind": "test"}) holds no tumour patches to balance with
    bad = client.post(url, {"stride": 20}, content_type="application/json")
    assert bad.status_code == 400 and "kind" in json.dumps(bad.json())
    bad = client.post(url, {"negative_slides": []}, content_type="application/json")
    assert bad.status_code == 400 and "negative_slides" in bad.json()
    primary.training_run.dataset_source = {"kind": "arrays", "path": str(tumour_arrays[0])}
    primary.training_run.save()
    ok = client.post(
        url, {"stride": 20, "recipe": {"max_epochs": 2}}, content_type="application/json"
    )
    assert ok.status_code == 201, ok.content
    body = ok.json()
    assert body["stage"] == "secondary" and body["dataset_source"]["primary"] == primary.pk
    assert body["recipe"]["max_epochs"] == 2 and body["status"] == "queued"


def test_manage_py_train_secondary_from_refuses_with_the_reason(negative_case, primary):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="known to hold tumour"):
        pos = negative_case[1]["pos-1"].pk
        call_command("train", "--secondary-from", str(primary.pk), "--negative-slides", str(pos))
    with pytest.raises(CommandError, match="no model version 999999"):
        call_command("train", "--secondary-from", "999999")


def test_the_model_page_offers_the_chain_to_admins_only(client, people, primary):
    client.force_login(people.admin)
    page = client.get(f"/models/{primary.pk}/").content.decode()
    assert f"/api/model-versions/{primary.pk}/train-secondary/" in page
    client.force_login(people.pathologist)
    page = client.get(f"/models/{primary.pk}/").content.decode()
    assert "train-secondary" not in page


def test_the_weights_a_secondary_started_from_are_shown_to_admins_only(client, people, primary):
    primary.hyperparameters = {"pretrained_weights": "/srv/secret/primary.pt", "max_epochs": 3}
    primary.save()
    primary.training_run.status_reason = "could not read /srv/secret/patches.npy"
    primary.training_run.save()
    pages = [f"/api/model-versions/{primary.pk}/", f"/models/{primary.pk}/", "/models/"]
    client.force_login(people.pathologist)
    for url in pages:
        body = client.get(url).content.decode()
        assert "/srv/secret" not in body, url
    assert client.get(pages[0]).json()["hyperparameters"] == {"max_epochs": 3}
    client.force_login(people.admin)
    assert "/srv/secret/primary.pt" in client.get(pages[0]).content.decode()
    assert "/srv/secret/patches.npy" in client.get("/models/").content.decode()
