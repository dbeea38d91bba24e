"""Whole-image node classifiers: generated images, architectures learning the generated focus,
the node-images dataset (split by patient, refusals), training runs to a ModelVersion with AUROC
[CI] and an operating point, the statistics against hand-computed values, the comparison of
architectures trained on one dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError

from inference import image_classifier as ic
from inference.jobs import TrainingRequestError, check_dataset, load_dataset
from inference.records import ModelVersion, TrainingRun
from inference.synthetic_images import generate_node_image, write_node_image_set
from inference.training import TrainingRecipe, train
from slides.ingest import import_manifest
from slides.models import Node, Slide
from slides.node_images import apply_window, read_node_image

# ---- generated images ----------------------------------------------------------------------


def test_generated_images_carry_the_focus_and_the_manifest_the_importer_reads(tmp_path):
    rng = np.random.default_rng(5)
    hu, focus = generate_node_image(rng, metastatic=True, modality="ct", size=128)
    assert hu.dtype == np.int16 and focus.any()
    background = hu[:8, :8].mean()
    node_ring = hu[np.roll(focus, 14, axis=0) & ~focus]
    assert -140 < background < -60  # fat
    assert hu[focus].mean() < np.median(node_ring) - 15  # hypoattenuating focus inside the node
    us, us_focus = generate_node_image(rng, metastatic=True, modality="ultrasound", size=128)
    assert us.dtype == np.uint8 and us[us_focus].mean() < 20 < us[~us_focus].mean()  # anechoic
    _benign, none = generate_node_image(rng, metastatic=False, modality="ct", size=128)
    assert not none.any()
    with pytest.raises(ValueError, match="modality"):
        generate_node_image(rng, metastatic=True, modality="mri")

    manifest = write_node_image_set(
        tmp_path / "ct", modality="ct", n_patients=5, images_per_patient=2, seed=3, size=64
    )
    lines = manifest.read_text().splitlines()
    assert lines[0] == "case,node,file,status,patient,modality"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 10 and {r[5] for r in rows} == {"ct"}
    assert sum(r[3] == "positive" for r in rows) == 4  # 2 of 5 patients, 2 images each
    assert {r[1] for r in rows} == {"node 1", "node 2"}
    values, info = read_node_image(tmp_path / "ct" / rows[0][2])
    assert info.kind == "DICOM" and (info.window_center, info.window_width) == (40.0, 400.0)
    assert info.mpp_x == pytest.approx(500.0)  # 0.5 mm pixels
    assert -200 < float(np.median(values)) < 100  # Hounsfield units after the rescale


# ---- the architectures learn the feature ----------------------------------------------------


def _generated(n: int, *, size: int, seed: int, modality: str = "ultrasound"):
    """``n`` generated images (half metastatic) rendered as the classifier sees them."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        metastatic = i % 2 == 1
        pixels, _ = generate_node_image(rng, metastatic=metastatic, modality=modality, size=128)
        if modality == "ct":
            pixels = apply_window(pixels.astype(np.float32), 40.0, 400.0)
        images.append(ic.to_model_input(pixels, size))
        labels.append(int(metastatic))
    return np.stack(images), np.asarray(labels)


@pytest.mark.parametrize(
    ("name", "modality", "size", "model_kwargs"),
    [
        ("resnet50", "ct", 96, {"width_mult": 0.125}),
        ("inception-v3", "ultrasound", 96, {"width_mult": 0.125}),
    ],
)
def test_each_architecture_learns_the_generated_focus(name, modality, size, model_kwargs):
    # narrow nets (1/8 width, full depth), 96 generated images, 8 epochs: about 10 s each
    x_train, y_train = _generated(
        96, size=round(size * ic.TRAIN_OVERSIZE), seed=1, modality=modality
    )
    x_val, y_val = _generated(40, size=size, seed=99, modality=modality)
    train_set = ic.NodeImageSet(x_train, y_train, augment=True, out_size=size)
    val_set = ic.NodeImageSet(x_val, y_val)
    recipe = TrainingRecipe(
        **{
            **ic.IMAGE_RECIPE_DEFAULTS,
            "batch_size": 16,
            "max_epochs": 8,
            "early_stopping_patience": 8,
            "model_kwargs": model_kwargs,
        }
    )
    result = train(model_name=name, train_set=train_set, val_set=val_set, recipe=recipe)
    assert result.auc >= 0.9, result.curves["val_auc"]


def test_random_resized_crop_is_seeded_and_keeps_the_range():
    batch = torch.rand(4, 3, 40, 40)
    a = ic.random_resized_crop(batch, generator=torch.Generator().manual_seed(1), out_size=32)
    b = ic.random_resized_crop(batch, generator=torch.Generator().manual_seed(1), out_size=32)
    c = ic.random_resized_crop(batch, generator=torch.Generator().manual_seed(2), out_size=32)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


# ---- the node-images dataset ----------------------------------------------------------------


def _import(tmp_path, people, *, modality: str, n_patients: int, images_per_patient: int = 2):
    manifest = write_node_image_set(
        tmp_path / modality,
        modality=modality,
        n_patients=n_patients,
        images_per_patient=images_per_patient,
        seed=7,
        size=96,
    )
    report = import_manifest(manifest=manifest, lab=people.lab, create_missing=True)
    assert report.ok, report.failed
    return report.imported


@pytest.fixture
def ct_images(tmp_path, people, settings):
    settings.SLIDE_IMPORT_ROOTS = []
    return _import(tmp_path, people, modality="ct", n_patients=10)


def test_node_images_split_by_patient_with_a_content_hash(ct_images):
    source = {"kind": "node-images", "modality": "ct", "size": 48, "val_fraction": 0.3}
    assert check_dataset(source) == {"benign": 10, "metastatic": 10}
    data = load_dataset(source)
    train_set, val_set = data.train, data.val
    assert len(train_set) + len(val_set) == 20 and len(val_set) >= 6
    assert not set(train_set.groups) & set(val_set.groups)  # no patient on both sides
    by_slide = {s.pk: s for s in ct_images}
    for subset in (train_set, val_set):
        patients = {}
        for slide_id, group in zip(subset.slide_ids, subset.groups, strict=True):
            patients.setdefault(group, set()).add(by_slide[slide_id].node.case.patient_pseudonym)
        assert all(len(p) == 1 for p in patients.values())
    x, y = train_set.get_batch(np.arange(4))
    assert x.shape == (4, 3, 48, 48) and x.dtype == torch.float32  # augmented, three channels
    xv, _ = val_set.get_batch(np.arange(2))
    assert xv.shape == (2, 3, 48, 48) and xv.dtype == torch.uint8
    assert data.summary["split"].startswith("split by group: ")
    assert f"of 10 patients in validation ({len(val_set)} of 20 images)" in data.summary["split"]
    assert data.summary["counts"] == {"benign": 10, "metastatic": 10}
    assert load_dataset(source).content_hash == data.content_hash
    assert load_dataset({**source, "seed": 1}).content_hash != data.content_hash


def test_node_images_refuse_a_missing_modality_class_or_bad_field(ct_images):
    with pytest.raises(TrainingRequestError, match="no ultrasound images"):
        check_dataset({"kind": "node-images", "modality": "ultrasound"})
    with pytest.raises(TrainingRequestError, match="modality must be one of"):
        check_dataset({"kind": "node-images", "modality": "mri"})
    with pytest.raises(TrainingRequestError, match="unknown node-images field"):
        check_dataset({"kind": "node-images", "modality": "ct", "path": "/etc"})
    with pytest.raises(TrainingRequestError, match="size must be"):
        check_dataset({"kind": "node-images", "modality": "ct", "size": 8})
    Node.objects.filter(ground_truth=Node.GroundTruth.POSITIVE).update(
        ground_truth=Node.GroundTruth.UNKNOWN
    )
    with pytest.raises(TrainingRequestError, match="no metastatic ct images"):
        check_dataset({"kind": "node-images", "modality": "ct"})
    with pytest.raises(TrainingRequestError, match="no metastatic"):
        load_dataset({"kind": "node-images", "modality": "ct"})
    assert not TrainingRun.objects.exists()


# ---- training runs, evidence, comparison ------------------------------------------------------


@pytest.fixture
def two_versions(ct_images):
    """Two architectures trained on one node-images dataset by ``manage.py train_images``."""
    call_command(
        "train_images",
        "--modality=ct",
        "--architectures=resnet-small,resnet18",
        "--size=48",
        "--epochs=2",
        "--batch-size=8",
        "--width-mult=0.125",
        "--here",
    )
    versions = list(ModelVersion.objects.order_by("pk"))
    assert [v.architecture for v in versions] == ["resnet-small", "resnet18"]
    return versions


def test_training_runs_reach_versions_with_auroc_ci_and_an_operating_point(two_versions, ct_images):
    version = two_versions[0]
    assert version.stage == ic.IMAGE_STAGE == version.training_run.stage
    assert version.training_run.status == TrainingRun.Status.SUCCEEDED
    assert version.dataset_hash == two_versions[1].dataset_hash
    assert version.dataset_summary["kind"] == "node-images"
    assert version.hyperparameters["dihedral"] is False  # the node-image recipe defaults
    metrics = version.threshold_metrics
    auroc = metrics["auroc"]
    assert auroc["auc"] == pytest.approx(version.val_auc, abs=1e-6)
    assert auroc["ci"][0] <= auroc["auc"] <= auroc["ci"][1]
    assert auroc["method"] == "percentile bootstrap over patients"
    assert auroc["n_groups"] == version.dataset_summary["val_patients"]
    assert version.threshold_method == "Youden's J on validation images"
    assert version.threshold == metrics["threshold"]
    for name in ("sensitivity", "specificity", "accuracy"):
        low, high = metrics["exact_ci"][name]
        assert low <= metrics[name] <= high
    n_val = version.dataset_summary["val"]
    assert metrics["tp"] + metrics["fn"] + metrics["tn"] + metrics["fp"] == n_val

    # predict_images scores like the validation did (same rendering, size, normalisation)
    stored = dict(
        zip(metrics["validation"]["slides"], metrics["validation"]["scores"], strict=True)
    )
    slides = list(Slide.objects.filter(pk__in=list(stored)))
    predicted = ic.predict_images(version, slides)
    assert set(predicted) == set(stored)
    for slide_id, score in predicted.items():
        assert score == pytest.approx(stored[slide_id], abs=1e-5)
    with pytest.raises(ic.NodeImageError, match="not a node-image classifier"):
        ic.predict_images(ModelVersion(name="patch", stage="primary"), slides)
    slides[0].modality = Slide.Modality.ULTRASOUND  # in memory only
    with pytest.raises(ic.NodeImageError, match="trained on ct images"):
        ic.predict_images(version, slides)

    # an admin's target sensitivity instead of Youden's J
    ic.set_operating_point(version, target_sensitivity=1.0)
    assert version.threshold_metrics["sensitivity"] == 1.0
    assert version.threshold_method.startswith("highest threshold with 100%")


def test_train_images_refuses_before_queueing_anything(ct_images):
    with pytest.raises(CommandError, match="unknown architecture 'vgg16'"):
        call_command("train_images", "--modality=ct", "--architectures=resnet18,vgg16", "--here")
    with pytest.raises(CommandError, match="no ultrasound images"):
        call_command("train_images", "--modality=ultrasound", "--here")
    assert not TrainingRun.objects.exists()


# ---- statistics against hand-computed values --------------------------------------------------

# three metastatic (0.9, 0.8, 0.4) and three benign (0.5, 0.3, 0.1) images
TRUTHS = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
SCORES = np.array([0.9, 0.8, 0.4, 0.5, 0.3, 0.1])


def test_delong_interval_by_hand():
    # psi: 0.9 and 0.8 beat every benign score, 0.4 beats two of three: AUC = 8/9.
    # placements V10 = (1, 1, 2/3), V01 = (2/3, 1, 1): both variances (ddof 1) are 1/27, so
    # var(AUC) = 1/27/3 + 1/27/3 = 2/81 and se = sqrt(2)/9
    out = ic.delong_ci(TRUTHS, SCORES)
    assert out["auc"] == pytest.approx(8 / 9)
    assert out["se"] == pytest.approx(math.sqrt(2) / 9)
    assert out["ci"][0] == pytest.approx(8 / 9 - 1.959964 * math.sqrt(2) / 9, abs=1e-6)
    assert out["ci"][1] == 1.0  # clipped


def test_youden_and_target_sensitivity_operating_points_by_hand():
    # J at 0.9: 1/3; 0.8: 2/3; 0.5: 1/3; 0.4: 2/3 (sens 1, spec 2/3): the highest of the best is 0.8
    assert ic.youden_threshold(TRUTHS, SCORES) == 0.8
    point = ic.operating_point(TRUTHS, SCORES, n_bootstrap=500)
    assert (point.tp, point.fn, point.tn, point.fp) == (2, 1, 3, 0)
    assert point.sensitivity == pytest.approx(2 / 3) and point.specificity == 1.0
    assert point.accuracy == pytest.approx(5 / 6)
    # Clopper-Pearson 2/3: [0.0943, 0.9916]; 3/3: [0.2924, 1]
    assert point.exact_ci["sensitivity"] == pytest.approx([0.0943, 0.9916], abs=1e-4)
    assert point.exact_ci["specificity"] == pytest.approx([0.2924, 1.0], abs=1e-4)
    full = ic.operating_point(TRUTHS, SCORES, target_sensitivity=1.0, n_bootstrap=0)
    assert full.threshold == 0.4 and (full.tp, full.fn, full.tn, full.fp) == (3, 0, 2, 1)
    with pytest.raises(ic.NodeImageError, match="both metastatic and benign"):
        ic.operating_point(TRUTHS[:3], SCORES[:3])


def test_patient_bootstrap_does_not_count_views_of_one_patient_twice():
    rng = np.random.default_rng(0)
    truths = np.r_[np.ones(15, bool), np.zeros(15, bool)]
    scores = np.clip(rng.normal(0.4 + 0.3 * truths, 0.2), 0, 1)
    once = ic.auroc_ci(truths, scores, groups=np.arange(30), n_bootstrap=400, seed=3)
    # every patient imaged twice, identically: same AUROC and, by patient, the same interval ...
    twice_t, twice_s = np.repeat(truths, 2), np.repeat(scores, 2)
    groups = np.repeat(np.arange(30), 2)
    by_patient = ic.auroc_ci(twice_t, twice_s, groups=groups, n_bootstrap=400, seed=3)
    assert by_patient["auc"] == pytest.approx(once["auc"])
    assert by_patient["ci"] == pytest.approx(once["ci"])
    # ... while resampling images as if independent would narrow it
    by_image = ic.auroc_ci(twice_t, twice_s, groups=None, n_bootstrap=400, seed=3)
    assert by_image["ci"][1] - by_image["ci"][0] < 0.85 * (once["ci"][1] - once["ci"][0])
    point = ic.operating_point(twice_t, twice_s, groups=groups, n_bootstrap=400, seed=3)
    point_once = ic.operating_point(truths, scores, groups=np.arange(30), n_bootstrap=400, seed=3)
    assert point.ci.keys() == point_once.ci.keys() == {"sensitivity", "specificity", "accuracy"}
    for name, interval in point_once.ci.items():
        assert point.ci[name] == pytest.approx(interval)


def test_model_page_comparison_and_operating_point_routes(two_versions, people, client):
    first, second = two_versions
    client.force_login(people.pathologist)
    page = client.get(f"/models/{first.pk}/comparison/")
    assert page.status_code == 200
    html = page.content.decode()
    for version in two_versions:
        assert f'data-version="{version.pk}"' in html and version.architecture in html
    body = client.get(f"/api/model-versions/{second.pk}/comparison/").json()
    assert {row["architecture"] for row in body["versions"]} == {"resnet-small", "resnet18"}
    best, runner_up = body["versions"]
    assert best["vs_best"] is None and runner_up["vs_best"]["against"] == best["id"]
    assert runner_up["vs_best"]["images"] == first.dataset_summary["val"]
    assert runner_up["vs_best"]["p"] is None or 0 <= runner_up["vs_best"]["p"] <= 1
    row = next(r for r in body["versions"] if r["id"] == first.pk)
    assert row["auroc"]["value"] == pytest.approx(first.val_auc, abs=1e-6)
    assert row["auroc"]["ci"] and row["sensitivity"]["ci"] and row["accuracy"]["exact_ci"]
    model_page = client.get(f"/models/{first.pk}/").content.decode()
    assert 'id="image-evidence"' in model_page and "Youden" in model_page
    assert 'id="operating-point"' not in model_page  # the form is for admins
    url = f"/api/model-versions/{first.pk}/operating-point/"
    assert (
        client.post(url, {"method": "youden"}, content_type="application/json").status_code == 403
    )

    # a live model's operating point is what every lab screens at: platform operators only
    client.force_login(people.admin)
    refused = client.post(url, {"method": "youden"}, content_type="application/json")
    assert refused.status_code == 403 and "platform" in refused.json()["detail"]
    assert 'id="operating-point"' not in client.get(f"/models/{first.pk}/").content.decode()
    from slides.access import grant_role
    from slides.models import Role

    grant_role(people.admin, Role.PLATFORM_ADMIN)
    bad = client.post(url, {"target_sensitivity": 1.5}, content_type="application/json")
    assert bad.status_code == 400 and "target_sensitivity" in bad.json()
    bad = client.post(url, {"method": "best"}, content_type="application/json")
    assert bad.status_code == 400 and "method" in bad.json()
    bad = client.post(url, {"target": 0.9}, content_type="application/json")
    assert bad.status_code == 400 and "target" in bad.json()
    before = ModelVersion.objects.get(pk=first.pk).threshold_metrics
    ok = client.post(url, {"target_sensitivity": 1.0}, content_type="application/json")
    assert ok.status_code == 200 and ok.json()["sensitivity"]["value"] == 1.0
    after = ModelVersion.objects.get(pk=first.pk)
    assert after.threshold_metrics["auroc"] == before["auroc"]
    assert after.threshold_metrics["validation"] == before["validation"]
    assert 'id="operating-point"' in client.get(f"/models/{first.pk}/").content.decode()

    patch = ModelVersion.objects.create(
        training_run=TrainingRun.objects.create(dataset_source={"kind": "arrays"}),
        name="patch-model",
        architecture="mobilenetv2",
        stage="primary",
        weights_path="x",
        weights_sha256="0",
        dataset_hash="1",
        code_version="t",
        val_accuracy=1,
        val_auc=1,
    )
    assert client.get(f"/api/model-versions/{patch.pk}/comparison/").status_code == 404
    assert client.get(f"/models/{patch.pk}/comparison/").status_code == 404
    assert (
        client.post(
            f"/api/model-versions/{patch.pk}/operating-point/", {}, content_type="application/json"
        ).status_code
        == 404
    )


def test_a_validation_set_of_one_class_gives_no_operating_point_but_says_why():
    from types import SimpleNamespace

    from inference.jobs import LoadedDataset
    from inference.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet-small", num_classes=2, input_size=32, widths=(8, 8, 8, 8))
    images, _ = _generated(4, size=32, seed=5)
    val = ic.NodeImageSet(images, [0, 0, 0, 0], groups=[0, 0, 1, 1], slide_ids=[1, 2, 3, 4])
    result = SimpleNamespace(
        build_model=lambda: model.eval(), recipe=TrainingRecipe(), classes=list(ic.CLASSES)
    )
    dataset = LoadedDataset(train=val, val=val, content_hash="h", summary={"seed": 0})
    fields = ic.evidence_fields(result, dataset)
    assert set(fields) == {"threshold_metrics"}
    assert "both metastatic and benign" in fields["threshold_metrics"]["error"]


def test_paired_delong_against_the_formula_written_out():
    rng = np.random.default_rng(1)
    truths = np.r_[np.ones(7, bool), np.zeros(9, bool)]
    a = rng.normal(truths * 1.0, 1.0)
    b = a + rng.normal(0, 0.8, size=a.size)
    pos, neg = np.flatnonzero(truths), np.flatnonzero(~truths)

    def placements(s):
        def psi(x, y):
            return 1.0 if x > y else 0.5 if x == y else 0.0

        v10 = [sum(psi(s[i], s[j]) for j in neg) / len(neg) for i in pos]
        v01 = [sum(psi(s[i], s[j]) for i in pos) / len(pos) for j in neg]
        return sum(v10) / len(v10), v10, v01

    def cov(x, y):
        mx, my = sum(x) / len(x), sum(y) / len(y)
        return sum((p - mx) * (q - my) for p, q in zip(x, y, strict=True)) / (len(x) - 1)

    auc_a, v10_a, v01_a = placements(a)
    auc_b, v10_b, v01_b = placements(b)
    var = (cov(v10_a, v10_a) + cov(v10_b, v10_b) - 2 * cov(v10_a, v10_b)) / 7 + (
        cov(v01_a, v01_a) + cov(v01_b, v01_b) - 2 * cov(v01_a, v01_b)
    ) / 9
    z = (auc_a - auc_b) / math.sqrt(var)
    out = ic.delong_paired(truths, a, b)
    assert out["difference"] == pytest.approx(auc_a - auc_b)
    assert out["se"] == pytest.approx(math.sqrt(var))
    assert out["p"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)))
    same = ic.delong_paired(truths, a, 2 * a + 1)  # same ranking
    assert same["difference"] == 0 and same["p"] == 1.0
