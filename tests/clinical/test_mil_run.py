"""A MIL training run end to end through the TrainingRun machinery: cases with slides, tumour
outlines and clinical records -> bags (cached .npy per case) -> execute_training_run -> a
ModelVersion with AUC and its CI -> the case's prediction with attention per patch (API, page).

The slides are small generated TIFFs (never real tissue): the outlined tumour area of N+ cases
is dark purple and that of N0 cases pale pink, so even a random-init feature extractor separates
them. No mock: real files, real large-image reads, the real task function."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import Client

from annotations import services as annotation_services
from clinical.services import save_clinical_record
from inference.jobs import TrainingRequestError, execute_training_run, launch_training
from inference.mil import MIL_ARCHITECTURE, bag_dir
from inference.records import ModelVersion, TrainingRun
from slides.ingest import register_slide
from tests.factories import gradient_image, make_case, write_pyramid_tiff

pytestmark = pytest.mark.django_db

TUMOUR = {
    "type": "Polygon",
    "coordinates": [[[100, 100], [340, 100], [340, 340], [100, 340], [100, 100]]],
}


def _slide(tmp_path, node, *, positive: bool, seed: int):
    image = gradient_image(480, 400, seed=seed)
    rng = np.random.default_rng(seed)
    colour = (90, 40, 120) if positive else (235, 190, 210)
    patch = np.clip(np.array(colour) + rng.integers(-25, 25, (260, 260, 3)), 0, 255)
    image[90:350, 90:350] = patch.astype(np.uint8)
    path = write_pyramid_tiff(tmp_path / f"slide-{seed}.tiff", image, mpp=0.5)
    return register_slide(node=node, path=path, synthetic=True)


@pytest.fixture
def cohort(people, tmp_path):
    """Eight cases, four N0 and four N+ (1-2 or >2 positive nodes), each with a tumour outline."""
    cases = []
    for i in range(8):
        positive = i % 2 == 1
        case = make_case(people.lab, f"CNB-{i:03d}", nodes=("core biopsy",))
        slide = _slide(tmp_path, case.nodes.get(), positive=positive, seed=i + 10)
        annotation_services.create_annotation(
            slide=slide, user=people.pathologist, geometry=TUMOUR, label_class="tumour"
        )
        save_clinical_record(
            case=case,
            values={
                "age": 40 + 3 * i,
                "tumour_size": 10 + (15 if positive else 0) + i,
                "er": "positive",
            },
            positive_nodes=(1 + i % 4) if positive else 0,
            user=people.pathologist,
        )
        cases.append(case)
    return cases


SOURCE = {
    "kind": "mil-bags",
    "task": "binary",
    "clinical": ["age", "tumour_size", "er"],
    "extractor": {
        "architecture": "resnet-small",
        "seed": 0,
        "model_kwargs": {"widths": [8, 16, 16, 32]},
    },
    "max_instances": 16,
    "val_fraction": 0.5,
    "seed": 0,
}


def test_launch_refuses_bad_mil_requests(cohort, people):
    with pytest.raises(TrainingRequestError, match="unknown task"):
        launch_training(
            dataset_source={**SOURCE, "task": "four-class"},
            architecture=MIL_ARCHITECTURE,
            enqueue=False,
        )
    with pytest.raises(TrainingRequestError, match="unknown clinical variables"):
        launch_training(
            dataset_source={**SOURCE, "clinical": ["grade"]},
            architecture=MIL_ARCHITECTURE,
            enqueue=False,
        )
    with pytest.raises(TrainingRequestError, match="unknown MIL recipe fields"):
        launch_training(
            dataset_source=SOURCE, architecture=MIL_ARCHITECTURE, recipe={"lr": 1}, enqueue=False
        )
    with pytest.raises(TrainingRequestError, match="at least two node statuses"):
        launch_training(
            dataset_source={**SOURCE, "cases": [c.pk for c in cohort[::2]]},
            architecture=MIL_ARCHITECTURE,
            enqueue=False,
        )
    with pytest.raises(TrainingRequestError, match="trains on dataset kind mil-bags"):
        launch_training(
            dataset_source={"kind": "arrays"}, architecture=MIL_ARCHITECTURE, enqueue=False
        )
    assert not TrainingRun.objects.exists()


def test_training_run_produces_a_model_version_and_predictions(cohort, people, settings):
    run = launch_training(
        dataset_source=SOURCE,
        architecture=MIL_ARCHITECTURE,
        recipe={
            "max_epochs": 15,
            "early_stopping_patience": 15,
            "batch_size": 2,
            "n_bootstrap": 200,
        },
        user=people.admin,
        enqueue=False,
    )
    assert run.stage == "mil"
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.SUCCEEDED
    run.refresh_from_db()
    version = ModelVersion.objects.get(training_run=run)
    assert version.architecture == MIL_ARCHITECTURE and version.stage == "mil"
    summary = version.dataset_summary
    assert summary["counts"] == {"N0": 4, "N+": 4} and summary["train"] + summary["val"] == 8
    assert "split by group" in summary["split"]
    metrics = summary["metrics"]["n_plus_vs_n0"]
    assert version.val_auc == metrics["auc"]["value"]
    assert version.val_auc >= 0.75  # the outlined areas differ in colour
    assert set(metrics) >= {"auc", "accuracy", "sensitivity", "specificity"}
    assert len(metrics["auc"]["ci95"]) == 2
    assert version.hyperparameters["clinical_encoding"][0]["key"] == "age"
    assert version.curves["epoch"][-1] == 15
    # one cached bag (features and boxes) per case
    cached = sorted(p.name for p in bag_dir(version.hyperparameters["extractor_key"]).iterdir())
    assert len([n for n in cached if n.endswith(".features.npy")]) == 8

    client = Client()
    client.force_login(people.pathologist)
    case = cohort[1]
    answer = client.get(f"/api/cases/{case.pk}/mil-prediction/")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["classes"] == ["N0", "N+"] and body["uses_clinical"]
    assert body["predicted_class"] in ("N0", "N+")
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    weights = [a["weight"] for a in body["attention"]]
    assert len(weights) == body["instances"] == 16
    assert sum(weights) == pytest.approx(1.0, abs=1e-5) and weights == sorted(weights, reverse=True)
    slide = case.nodes.get().slides.get()
    assert {a["slide"] for a in body["attention"]} == {slide.pk}
    assert all(20 <= a["x"] <= 340 and a["size"] == 80 for a in body["attention"])
    page = client.get(f"/cases/{case.pk}/")
    assert b"Predicted node status" in page.content and b"data-predicted-class" in page.content
    assert client.get(f"/api/cases/{case.pk}/mil-prediction/?model_version=abc").status_code == 400
    assert (
        client.get(f"/api/cases/{case.pk}/mil-prediction/?model_version=99999").status_code == 409
    )
    outsider = Client()
    outsider.force_login(people.outsider)
    assert outsider.get(f"/api/cases/{case.pk}/mil-prediction/").status_code == 404
    # the models pages list MIL versions like any other
    assert client.get("/models/").status_code == 200
    assert client.get(f"/models/{version.pk}/").status_code == 200
    assert client.get(f"/api/model-versions/{version.pk}/").json()["stage"] == "mil"


def test_a_case_without_tumour_outline_is_skipped_and_says_so(cohort, people):
    bare = make_case(people.lab, "CNB-BARE", nodes=("core biopsy",))
    save_clinical_record(case=bare, values={}, positive_nodes=0, user=people.pathologist)
    run = launch_training(
        dataset_source={**SOURCE, "clinical": False},
        architecture=MIL_ARCHITECTURE,
        recipe={"max_epochs": 2, "n_bootstrap": 0},
        enqueue=False,
    )
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.SUCCEEDED
    summary = ModelVersion.objects.get(training_run=run).dataset_summary
    assert any("CNB-BARE has no tumour annotation" in s for s in summary["skipped"])
    client = Client()
    client.force_login(people.pathologist)
    answer = client.get(f"/api/cases/{bare.pk}/mil-prediction/")
    assert answer.status_code == 409 and "outline the cancer areas" in answer.json()["detail"]


def test_train_mil_command_refuses_unknown_clinical_variables(cohort):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="unknown clinical variables"):
        call_command("train_mil", "--clinical", "grade", "--here")
    assert not TrainingRun.objects.exists()


def test_admins_launch_a_mil_run_through_the_api(cohort, people):
    client = Client()
    client.force_login(people.admin)
    response = client.post(
        "/api/training-runs/",
        {"dataset_source": {**SOURCE, "task": "nine-class"}, "architecture": MIL_ARCHITECTURE},
        content_type="application/json",
    )
    assert response.status_code == 400 and "unknown task" in str(response.json())
    response = client.post(
        "/api/training-runs/",
        {"dataset_source": SOURCE, "architecture": MIL_ARCHITECTURE},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["stage"] == "mil"


def test_promoting_a_mil_model_rescores_no_slide_and_makes_it_the_case_pages_model(
    cohort, people, django_capture_on_commit_callbacks
):
    from inference.jobs import promote

    versions = []
    for seed in (0, 1):
        run = launch_training(
            dataset_source={**SOURCE, "clinical": False, "seed": seed},
            architecture=MIL_ARCHITECTURE,
            recipe={"max_epochs": 2, "n_bootstrap": 0, "seed": seed},
            enqueue=False,
        )
        assert execute_training_run(run_id=run.pk) == TrainingRun.Status.SUCCEEDED
        versions.append(run.model_version)
    with django_capture_on_commit_callbacks() as callbacks:
        promote(version=versions[0], user=people.admin)
    assert callbacks == []  # no rescoring of every slide queued
    versions[0].refresh_from_db()
    assert versions[0].is_live and versions[0].stage == "mil"
    client = Client()
    client.force_login(people.pathologist)
    body = client.get(f"/api/cases/{cohort[0].pk}/mil-prediction/").json()
    assert body["model_version"]["id"] == versions[0].pk  # the live one, not the newest
