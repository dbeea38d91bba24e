"""Issue 16, item 6: the live model is platform-wide, training is bounded by the launcher's labs.

Promoting, rolling back and choosing an operating point change what every lab screens with, so
they are for platform operators (superusers, the platform admin role: slides.access.
may_promote_models), not a lab's admin. A lab admin still trains, but a run reads only their labs'
node images and cases, and files under the import roots; a path outside the roots, a missing
path and a ``..`` or symlink escape get one refusal that never says whether the path exists.
"""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from inference.jobs import TrainingRequestError, execute_training_run, launch_training
from inference.records import ModelVersion, TrainingRun
from inference.scope import FOLDER_REFUSAL
from inference.synthetic_images import write_node_image_set
from slides.access import grant_role, may_promote_models
from slides.ingest import import_manifest
from slides.models import Role
from tests.factories import make_user
from tests.inference.test_jobs import FAST, write_blob_folder
from tests.review.factories import make_model_version


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def roots(tmp_path, settings):
    root = tmp_path / "imports"
    root.mkdir()
    settings.SLIDE_IMPORT_ROOTS = [root]
    return root


@pytest.fixture
def platform_admin(people):
    user = make_user("platform", role=Role.ADMIN, lab=people.other_lab)
    grant_role(user, Role.PLATFORM_ADMIN)
    return user


# ---- who puts a model live --------------------------------------------------------------------


def test_the_rule_lives_in_one_function(people, platform_admin):
    root = get_user_model().objects.create_superuser("root", password=None)
    assert may_promote_models(platform_admin) and may_promote_models(root)
    for user in (people.admin, people.lab_lead, people.pathologist, people.outsider):
        assert not may_promote_models(user)
    platform_admin.is_active = False
    assert not may_promote_models(platform_admin)


def test_a_lab_admin_neither_promotes_nor_rolls_back(people, platform_admin):
    first = make_model_version("first", live=False)
    second = make_model_version("second", live=False)
    admin = _client(people.admin)
    refused = admin.post(f"/api/model-versions/{first.pk}/promote/")
    assert refused.status_code == 403
    assert "same for every lab" in refused.json()["detail"]
    refused = admin.post(
        "/api/model-versions/rollback/", {"stage": "primary"}, content_type="application/json"
    )
    assert refused.status_code == 403 and "platform" in refused.json()["detail"]
    assert not ModelVersion.objects.filter(is_live=True).exists()

    operator = _client(platform_admin)
    for version in (first, second):
        promoted = operator.post(f"/api/model-versions/{version.pk}/promote/")
        assert promoted.status_code == 200 and promoted.json()["is_live"] is True
    back = operator.post(
        "/api/model-versions/rollback/", {"stage": "primary"}, content_type="application/json"
    )
    assert back.status_code == 200 and back.json()["id"] == first.pk
    root = get_user_model().objects.create_superuser("root", password=None)
    assert _client(root).post(f"/api/model-versions/{second.pk}/promote/").status_code == 200


def test_the_models_page_shows_promote_and_roll_back_only_to_those_who_may(people, platform_admin):
    live = make_model_version("live-one", live=False)
    make_model_version("candidate", live=False)
    from inference.jobs import promote

    promote(version=live, user=platform_admin, rescore=False)
    page = _client(people.admin).get("/models/").content.decode()
    assert 'class="btn btn-link promote"' not in page and "rollback" not in page
    assert "Only platform operators" in page
    page = _client(platform_admin).get("/models/").content.decode()
    assert 'class="btn btn-link promote"' in page and 'class="btn btn-link rollback"' in page
    assert "Only platform operators" not in page
    # the model version page: the Promote button only for those who may
    candidate = ModelVersion.objects.get(name="candidate")
    page = _client(people.admin).get(f"/models/{candidate.pk}/").content.decode()
    assert 'id="promote"' not in page and "only platform operators" in page
    page = _client(platform_admin).get(f"/models/{candidate.pk}/").content.decode()
    assert 'id="promote"' in page


def test_a_lab_admin_cancels_their_own_runs_only(people, roots, platform_admin):
    folder = write_blob_folder(roots / "blobs", n=16)
    source = {"kind": "image-folder", "path": str(folder)}
    other_admin = make_user("other-admin", role=Role.ADMIN, lab=people.other_lab)
    own = launch_training(dataset_source=source, recipe=FAST, enqueue=False, user=people.admin)
    theirs = launch_training(dataset_source=source, recipe=FAST, enqueue=False, user=other_admin)
    admin = _client(people.admin)
    assert admin.post(f"/api/training-runs/{theirs.pk}/cancel/").status_code == 403
    assert admin.post(f"/api/training-runs/{own.pk}/cancel/").status_code == 200
    assert (
        _client(platform_admin).post(f"/api/training-runs/{theirs.pk}/cancel/").status_code == 200
    )


# ---- what a run reads: the launcher's labs ---------------------------------------------------------


def _import_images(tmp_path, lab, *, seed: int):
    manifest = write_node_image_set(
        tmp_path / f"ct-{lab.code}",
        modality="ct",
        n_patients=4,
        images_per_patient=2,
        seed=seed,
        size=64,
    )
    report = import_manifest(manifest=manifest, lab=lab, create_missing=True)
    assert report.ok, report.failed
    return report.imported


def test_a_lab_admins_node_image_run_reads_only_their_labs_images(tmp_path, settings, people):
    settings.SLIDE_IMPORT_ROOTS = []
    ours = _import_images(tmp_path, people.lab, seed=7)
    theirs = _import_images(tmp_path, people.other_lab, seed=8)
    assert len(ours) == len(theirs) == 8
    source = {"kind": "node-images", "modality": "ct", "size": 32, "val_fraction": 0.5}
    recipe = {"max_epochs": 1, "batch_size": 4, "model_kwargs": {"width_mult": 0.125}}
    run = launch_training(
        dataset_source=source,
        architecture="resnet-small",
        recipe=recipe,
        user=people.admin,
        enqueue=False,
    )
    assert not run.server_side and run.created_by == people.admin
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.SUCCEEDED, (
        TrainingRun.objects.get(pk=run.pk).status_reason
    )
    summary = ModelVersion.objects.get(training_run=run).dataset_summary
    assert sum(summary["counts"].values()) == 8  # lab A's 8 images, not lab B's
    assert summary["train"] + summary["val"] == 8
    assert summary["labs"] == [people.lab.code]
    # a superuser's (or a server-side) run reads every lab
    from inference.image_classifier import check_node_images
    from inference.scope import UNRESTRICTED, TrainingScope

    assert sum(check_node_images(source, scope=UNRESTRICTED).values()) == 16
    root = get_user_model().objects.create_superuser("root", password=None)
    assert sum(check_node_images(source, scope=TrainingScope.of_user(root)).values()) == 16


def test_the_worker_bounds_the_run_by_its_launcher_as_they_are_now(tmp_path, settings, people):
    """Narrowed at run time too: a launcher who lost the admin role (or whose account is gone)
    gets no run, and one whose labs changed reads their labs as they are now."""
    settings.SLIDE_IMPORT_ROOTS = []
    _import_images(tmp_path, people.lab, seed=7)
    source = {"kind": "node-images", "modality": "ct", "size": 32}
    run = launch_training(
        dataset_source=source, architecture="resnet-small", user=people.admin, enqueue=False
    )
    people.lab.members.remove(people.admin)
    assert execute_training_run(run_id=run.pk) == TrainingRun.Status.FAILED
    run.refresh_from_db()
    assert "no ct images" in run.status_reason
    people.lab.members.add(people.admin)
    again = launch_training(
        dataset_source=source, architecture="resnet-small", user=people.admin, enqueue=False
    )
    people.admin.delete()
    assert execute_training_run(run_id=again.pk) == TrainingRun.Status.FAILED
    again.refresh_from_db()
    assert "no longer" in again.status_reason


def test_a_lab_admin_cannot_name_another_labs_cases_or_slides(people, tmp_path, settings):
    from inference.mining import negative_slides
    from inference.scope import TrainingScope
    from tests.factories import make_case

    settings.SLIDE_IMPORT_ROOTS = []
    _import_images(tmp_path, people.other_lab, seed=8)
    from slides.models import Slide

    other_slide = Slide.objects.filter(node__case__lab=people.other_lab).first()
    from inference.mining import MiningError

    with pytest.raises(MiningError, match=f"no slides with ids \\[{other_slide.pk}\\]"):
        negative_slides([other_slide.pk], TrainingScope.of_user(people.admin))
    make_case(people.other_lab, "B-1", nodes=("node",))
    from inference.mil_jobs import _cases

    assert _cases({}, TrainingScope.of_user(people.admin)) == []


# ---- what a run reads: the import roots --------------------------------------------------------


def _launch(user, path, **extra):
    return _client(user).post(
        "/api/training-runs/",
        json.dumps(
            {"dataset_source": {"kind": "image-folder", "path": path, **extra}, "recipe": FAST}
        ),
        content_type="application/json",
    )


def test_paths_outside_the_roots_missing_or_escaping_get_one_refusal(people, roots, tmp_path):
    outside = write_blob_folder(tmp_path / "outside", n=16)  # real labelled images, not under roots
    (roots / "link").symlink_to(outside, target_is_directory=True)
    (roots / "empty").mkdir()
    tries = [
        str(outside),  # exists, outside
        str(tmp_path / "nowhere"),  # does not exist, outside
        str(roots / "missing"),  # does not exist, under the roots
        str(roots / ".." / "outside"),  # a '..' escape to a folder that exists
        str(roots / ".." / "nowhere"),  # a '..' escape to nothing
        str(roots / "link"),  # a symlink out of the roots
        "/etc",
        "/",
        "relative/path",
        "",
        str(roots / "blobs" / "none.png"),
    ]
    answers = set()
    for path in tries:
        response = _launch(people.admin, path)
        assert response.status_code == 400, (path, response.content)
        answers.add(response.json()["detail"])
    assert answers == {FOLDER_REFUSAL}
    root_user = get_user_model().objects.create_superuser("root", password=None)
    assert _launch(root_user, str(outside)).json()["detail"] == FOLDER_REFUSAL
    # a CSV out of the roots, or naming files out of them, is refused the same way whether the
    # files exist or not
    inside = write_blob_folder(roots / "blobs", n=16)
    response = _launch(people.admin, str(inside), csv=str(tmp_path / "labels.csv"))
    assert response.status_code == 400 and "under the import roots" in response.json()["detail"]
    real = sorted((outside / "tumour").iterdir())[0].name  # exists, two folders up
    (roots / "escape.csv").write_text(
        f"file,label\n../../outside/tumour/{real},tumour\n../../nothing/0.png,normal\n"
    )
    response = _launch(people.admin, str(inside), csv=str(roots / "escape.csv"))
    assert response.status_code == 400 and "2 files listed" in response.json()["detail"]
    assert not TrainingRun.objects.exists()

    # under the roots and empty: now (and only now) the answer says there are no images
    response = _launch(people.admin, str(roots / "empty"))
    assert response.status_code == 400
    assert response.json()["detail"] == "no labelled images in that folder"
    assert _launch(people.admin, str(inside)).status_code == 201


def test_arrays_and_pretrained_weights_are_confined_too(people, roots, tmp_path):
    import numpy as np

    np.savez(tmp_path / "patches.npz", images=np.zeros((4, 8, 8, 3), np.uint8), labels=[0, 1] * 2)
    for path in (str(tmp_path / "patches.npz"), str(tmp_path / "missing.npz")):
        with pytest.raises(TrainingRequestError, match="patch arrays must be a file or folder"):
            launch_training(
                dataset_source={"kind": "arrays", "path": path}, user=people.admin, enqueue=False
            )
    folder = write_blob_folder(roots / "blobs", n=16)
    for weights in (str(tmp_path / "w.pt"), "/etc/passwd"):
        with pytest.raises(TrainingRequestError, match="pretrained_weights must be a file"):
            launch_training(
                dataset_source={"kind": "image-folder", "path": str(folder)},
                recipe={**FAST, "pretrained_weights": weights},
                user=people.admin,
                enqueue=False,
            )


def test_runs_launched_on_the_server_are_unrestricted(people, tmp_path):
    folder = write_blob_folder(tmp_path / "blobs", n=16)  # no import roots at all
    run = launch_training(
        dataset_source={"kind": "image-folder", "path": str(folder)}, recipe=FAST, enqueue=False
    )
    assert run.server_side and run.created_by is None
