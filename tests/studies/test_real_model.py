"""A reader study of generated ultrasound node images compared with a really trained node-image
classifier: closing runs ``inference.image_classifier.predict_images`` (through the task) and the
results compare the readers with the model's stored answers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from slides.models import Node
from studies import statistics
from studies.models import ReaderStudy

from .conftest import create_study

image_classifier = pytest.importorskip("inference.image_classifier")

SIZE = 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
WIDTHS = (4, 8, 16, 32)


def _images(n: int, seed: int) -> tuple[list[np.ndarray], list[bool]]:
    """Alternating benign and metastatic generated ultrasound images (uint8, SIZE x SIZE)."""
    from inference.synthetic_images import generate_node_image

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        metastatic = i % 2 == 1
        pixels, _ = generate_node_image(
            rng, metastatic=metastatic, modality="ultrasound", size=SIZE
        )
        images.append(pixels)
        labels.append(metastatic)
    return images, labels


def _train() -> torch.nn.Module:
    """A narrow ResNet-18 trained (Adam, 20 epochs of 96 images) on one thread, so that it is
    quick and reproducible on a busy machine; batch-norm statistics recomputed at the end."""
    from inference.augmentation import normalize, to_float
    from inference.models import build_model
    from inference.training import recalibrate_batch_norm

    images, labels = _images(96, seed=0)
    x = torch.from_numpy(np.stack(images))[:, None].expand(-1, 3, -1, -1).contiguous()
    x = normalize(to_float(x), mean=MEAN, std=STD)
    y = torch.tensor([int(v) for v in labels])
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2, input_size=SIZE, widths=WIDTHS)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(20):
        model.train()
        for idx in torch.randperm(len(y)).split(16):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    recalibrate_batch_norm(model, [(x, None)])
    return model.eval()


def _version(model: torch.nn.Module, folder: Path):
    """A node-image ModelVersion whose weights file is the trained model (train()'s format)."""
    from inference.records import ModelVersion, TrainingRun
    from inference.training import WEIGHTS_FORMAT, TrainingRecipe, atomic_torch_save

    weights = atomic_torch_save(
        {
            "format": WEIGHTS_FORMAT,
            "model_name": model.name,
            "model_config": dict(model.config),
            "classes": ["benign", "metastatic"],
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "recipe": TrainingRecipe().to_dict(),
            "metrics": {},
        },
        folder / "us-study.pt",
    )
    run = TrainingRun.objects.create(
        dataset_source={"kind": "node-images", "modality": "ultrasound", "size": SIZE},
        architecture=model.name,
        stage=image_classifier.IMAGE_STAGE,
        status=TrainingRun.Status.SUCCEEDED,
    )
    return ModelVersion.objects.create(
        training_run=run,
        name="us-study-resnet18",
        architecture=model.name,
        stage=image_classifier.IMAGE_STAGE,
        weights_path=str(weights),
        weights_sha256=hashlib.sha256(Path(weights).read_bytes()).hexdigest(),
        dataset_hash="0" * 64,
        dataset_summary={"size": SIZE},
        hyperparameters={"mean": list(MEAN), "std": list(STD)},
        code_version="test",
        classes=["benign", "metastatic"],
        val_accuracy=1.0,
        val_auc=1.0,
        threshold=0.5,
    )


@pytest.fixture
def trained_model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _train()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.usefixtures("eager_tasks")
def test_a_trained_classifier_is_compared_with_the_readers(
    setup, trained_model, tmp_path, settings, django_capture_on_commit_callbacks
):
    from slides.node_images import register_node_image
    from tests.factories import make_case

    settings.SLIDE_IMPORT_ROOTS = []
    version = _version(trained_model, tmp_path)
    images, truth = _images(24, seed=99)
    case = make_case(setup.people.lab, "US-2026-1", nodes=())
    slides = []
    for i, (pixels, metastatic) in enumerate(zip(images, truth, strict=True)):
        path = tmp_path / f"us-{i}.png"
        Image.fromarray(pixels, "L").save(path)
        node = Node.objects.create(
            case=case, label=f"axilla {i}", ground_truth="positive" if metastatic else "negative"
        )
        slides.append(register_node_image(node=node, path=path, modality="ultrasound"))
    sid = create_study(
        setup,
        images=[s.pk for s in slides],
        readers=[setup.readers["reader2"].pk, setup.readers["reader3"].pk],
        model_version=version.pk,
    )["id"]
    assert setup.lead_client.post(f"/api/studies/{sid}/open/").status_code == 200
    # reader2 calls every image metastatic, reader3 gets every image right
    for who, call in (("reader2", lambda t: True), ("reader3", lambda t: t)):
        client = setup.client_for(setup.readers[who])
        for slide, t in zip(slides, truth, strict=True):
            image = ReaderStudy.objects.get(pk=sid).images.get(slide=slide).pk
            body = {"image": image, "label": "metastatic" if call(t) else "benign"}
            response = client.post(
                f"/api/studies/{sid}/reading/answers/", body, content_type="application/json"
            )
            assert response.status_code == 201
    with django_capture_on_commit_callbacks(execute=True):
        assert setup.lead_client.post(f"/api/studies/{sid}/close/").status_code == 200
    study = ReaderStudy.objects.get(pk=sid)
    assert study.model_status == "done", study.model_status_reason
    model_calls = {m.image.slide_id: m for m in study.model_answers.select_related("image")}
    assert set(model_calls) == {s.pk for s in slides}
    called = [model_calls[s.pk].label == "metastatic" for s in slides]
    assert all(0.0 <= model_calls[s.pk].probability <= 1.0 for s in slides)
    # the model learned the feature: at least 3 of 4 images right
    assert np.mean([c == t for c, t in zip(called, truth, strict=True)]) >= 0.75

    results = setup.lead_client.get(f"/api/studies/{sid}/results/").json()
    assert results["compared_images"] == 24
    model = next(p for p in results["parties"] if p["kind"] == "model")
    expected = statistics.diagnostic_metrics(truth, called)
    assert model["metrics"] == expected
    everything = [True] * 24
    b, c = statistics.discordant_pairs(truth, called, everything)
    mc = next(m for m in results["mcnemar"] if m["name"] == "reader2")
    assert (mc["accuracy"]["b"], mc["accuracy"]["c"]) == (b, c)
    assert b == sum(1 for c_, t in zip(called, truth, strict=True) if not t and not c_)
    assert mc["accuracy"]["p"] == pytest.approx(statistics.mcnemar_exact(b, c))
