"""Training and model API: who may launch, cancel, promote; pages render plots."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from inference.jobs import execute_training_run, launch_training
from inference.records import ModelVersion, TrainingRun
from tests.inference.test_jobs import FAST, write_blob_folder


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def folder(tmp_path, settings):
    settings.SLIDE_IMPORT_ROOTS = [tmp_path]  # runs launched by users read under the roots only
    return write_blob_folder(tmp_path / "blobs", n=16)


def _launch_body(folder) -> str:
    return json.dumps(
        {"dataset_source": {"kind": "image-folder", "path": str(folder)}, "recipe": FAST}
    )


def test_only_admins_launch(people, folder, django_capture_on_commit_callbacks):
    for user in (people.pathologist, people.lab_lead, people.outsider):
        response = _client(user).post(
            "/api/training-runs/", _launch_body(folder), content_type="application/json"
        )
        assert response.status_code == 403, user
    assert (
        Client()
        .post("/api/training-runs/", _launch_body(folder), content_type="application/json")
        .status_code
        == 403
    )
    assert not TrainingRun.objects.exists()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _client(people.admin).post(
            "/api/training-runs/", _launch_body(folder), content_type="application/json"
        )
    assert response.status_code == 201
    assert len(callbacks) == 1  # queued after commit
    assert TrainingRun.objects.get().status == "queued"


def test_bad_launch_is_400_with_the_reason(people, tmp_path, settings):
    settings.SLIDE_IMPORT_ROOTS = [tmp_path]
    body = json.dumps(
        {"dataset_source": {"kind": "image-folder", "path": str(tmp_path / "missing")}}
    )
    response = _client(people.admin).post(
        "/api/training-runs/", body, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["detail"] == "image folder must be a folder under the import roots"
    body = json.dumps({"dataset_source": "nope"})
    assert (
        _client(people.admin)
        .post("/api/training-runs/", body, content_type="application/json")
        .status_code
        == 400
    )


def test_cancel_and_promote_need_admin_and_pages_render(people, folder):
    from slides.access import grant_role
    from slides.models import Role

    run = launch_training(
        dataset_source={"kind": "image-folder", "path": str(folder)},
        recipe=FAST,
        enqueue=False,
        user=people.admin,
    )
    assert (
        _client(people.pathologist).post(f"/api/training-runs/{run.pk}/cancel/").status_code == 403
    )
    execute_training_run(run_id=run.pk)
    version = ModelVersion.objects.get()
    assert (
        _client(people.lab_lead).post(f"/api/model-versions/{version.pk}/promote/").status_code
        == 403
    )
    assert (
        _client(people.admin).post(f"/api/training-runs/{run.pk}/cancel/").status_code == 409
    )  # finished
    # The live model is every lab's: a lab admin does not promote it, a platform admin does.
    refused = _client(people.admin).post(f"/api/model-versions/{version.pk}/promote/")
    assert refused.status_code == 403 and "platform" in refused.json()["detail"]
    grant_role(people.admin, Role.PLATFORM_ADMIN)
    # A scoring model without a locked threshold is refused, saying why.
    blocked = _client(people.admin).post(f"/api/model-versions/{version.pk}/promote/")
    assert blocked.status_code == 409 and "no locked threshold" in blocked.json()["detail"]
    assert not ModelVersion.objects.get(pk=version.pk).is_live
    ModelVersion.objects.filter(pk=version.pk).update(threshold=0.5)
    promoted = _client(people.admin).post(f"/api/model-versions/{version.pk}/promote/")
    assert promoted.status_code == 200 and promoted.json()["is_live"] is True
    # Pathologists see which version is live, and the model page draws its ROC curve.
    listing = _client(people.pathologist).get("/api/model-versions/").json()
    assert listing["results"][0]["is_live"] is True
    page = _client(people.pathologist).get(f"/models/{version.pk}/").content.decode()
    assert 'class="roc-curve"' in page and version.name in page
    models_page = _client(people.pathologist).get("/models/").content.decode()
    assert (
        "Live" in models_page
        and version.name in models_page
        and "Launch training" not in models_page
    )
    assert "Launch training" in _client(people.admin).get("/models/").content.decode()
