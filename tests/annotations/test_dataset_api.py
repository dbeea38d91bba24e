"""Dataset snapshots through the API and the Datasets page: preview, create, list, lab scope."""

from __future__ import annotations

import pytest
from django.test import Client

from annotations.models import Dataset

# the slides with tumour outlines and the negative node of the snapshot tests (fixtures)
from .test_datasets import files, tissue_cache, world  # noqa: F401

URL = "/api/datasets/"


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post(client, body):
    return client.post(URL, body, content_type="application/json")


def test_preview_shows_counts_and_sides_and_writes_nothing(world):
    response = post(
        client_for(world.people.admin),
        {"name": "first", "lab": world.people.lab.code, "preview": True, "val_fraction": 0.34},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    # the default choice: the two slides with tumour outlines and the negative node's slide
    assert sorted(body["slides"]) == sorted(world.ids("a", "b", "n"))
    assert body["patch_px"] == 40 and body["target_mpp"] == 1.0
    train = {c["accession"] for c in body["split"]["train"]["cases"]}
    val = {c["accession"] for c in body["split"]["val"]["cases"]}
    assert train and val and not train & val
    assert train | val == {"S26-A", "S26-B", "S26-C"}
    for side in ("train", "val"):
        assert all(v > 0 for v in body["split"][side]["training_counts"].values())
    assert body["total_patches"] == sum(body["class_counts"].values())
    assert not Dataset.objects.exists()


def test_create_queues_extraction_and_lists_it(
    world, eager_tasks, django_capture_on_commit_callbacks
):
    client = client_for(world.people.admin)
    with django_capture_on_commit_callbacks(execute=True):
        created = post(client, {"name": "first", "val_fraction": 0.34})
    assert created.status_code == 201, created.content
    dataset = Dataset.objects.get(pk=created.json()["id"])
    assert dataset.created_by == world.people.admin
    dataset.refresh_from_db()
    assert dataset.status == Dataset.Status.READY  # extracted by the (eager) task
    listed = client.get(URL).json()["results"]
    assert [d["name"] for d in listed] == ["first"]
    assert listed[0]["content_hash"] == dataset.content_hash and listed[0]["models"] == []
    detail = client_for(world.people.lab_lead).get(f"{URL}{dataset.pk}/")
    assert detail.status_code == 200 and detail.json()["created_by"] == "admin"
    page = client.get("/datasets/")
    assert page.status_code == 200 and b"first" in page.content


def test_a_side_without_a_class_is_refused_with_the_reason(world):
    # Only case A (tumour slide with tissue around it) and a tiny validation share
    response = post(
        client_for(world.people.admin),
        {"name": "one-case", "cases": [world.slides["a"].node.case_id], "preview": True},
    )
    assert response.status_code == 400
    assert "split by case needs at least two cases" in response.json()["detail"]
    assert not Dataset.objects.exists()


def test_bad_fields_are_named(world):
    client = client_for(world.people.admin)
    response = post(client, {"name": "", "val_fraction": 2, "lab": "nope"})
    assert response.status_code == 400
    assert {"name", "val_fraction"} <= set(response.json())
    other = post(client, {"name": "x", "lab": world.people.other_lab.code})
    assert other.status_code == 400 and "not a member" in other.json()["lab"][0]
    foreign = post(client, {"name": "x", "slides": [999999]})
    assert foreign.status_code == 400 and "slides" in foreign.json()


@pytest.mark.parametrize("role", ["pathologist", "lab_lead"])
def test_only_admins_create(world, role):
    response = post(client_for(getattr(world.people, role)), {"name": "x", "preview": True})
    assert response.status_code == 403


def test_snapshots_are_lab_scoped(world, eager_tasks):
    created = post(client_for(world.people.admin), {"name": "mine"})
    assert created.status_code == 201
    from slides.models import Role
    from tests.factories import make_user

    other_admin = make_user("other-admin", role=Role.ADMIN, lab=world.people.other_lab)
    client = client_for(other_admin)
    assert client.get(URL).json()["results"] == []
    assert client.get(f"{URL}{created.json()['id']}/").status_code == 404
    assert client_for(world.people.pathologist).get(URL).status_code == 403


def test_a_primary_launched_on_a_snapshot_is_built_scannable(
    world, eager_tasks, django_capture_on_commit_callbacks
):
    client = client_for(world.people.admin)
    with django_capture_on_commit_callbacks(execute=True):
        created = post(client, {"name": "for-training", "val_fraction": 0.34})
    source = {"kind": "snapshot", "id": created.json()["id"]}
    # the form's errors name their field
    bad = client.post(
        "/api/training-runs/",
        {"dataset_source": source, "recipe": {"max_epochs": 1000}},
        content_type="application/json",
    )
    assert bad.status_code == 400
    assert bad.json()["field"] == "recipe.max_epochs" and "max_epochs" in bad.json()["detail"]
    missing = client.post(
        "/api/training-runs/",
        {"dataset_source": {"kind": "snapshot", "id": 999999}},
        content_type="application/json",
    )
    assert missing.status_code == 400 and missing.json()["field"] == "dataset_source"
    from inference.records import TrainingRun

    launched = client.post(
        "/api/training-runs/",
        {"dataset_source": source, "recipe": {"max_epochs": 1}},
        content_type="application/json",
    )
    assert launched.status_code == 201, launched.content
    run = TrainingRun.objects.get(pk=launched.json()["id"])
    assert run.recipe["model_kwargs"]["padding"] == "valid"
