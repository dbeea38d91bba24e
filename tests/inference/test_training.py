"""Training loop: learning, reproducibility, cancel, checkpoints and resume, weights files."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from inference import training
from inference.datasets import split_indices
from inference.training import (
    CheckpointMismatch,
    TrainingCancelled,
    TrainingProgress,
    TrainingRecipe,
    load_trained_model,
    train,
)

from .helpers import blob_patches

MODEL = "resnet-small"
RECIPE = TrainingRecipe(
    batch_size=16, max_epochs=3, seed=7, model_kwargs={"widths": (8, 16, 32, 64)}
)


@pytest.fixture(scope="module")
def blobs():
    data = blob_patches(64, size=16, seed=0)
    split = split_indices(labels=data.labels, val_fraction=0.25, seed=0)
    return split.subsets(data)


@pytest.fixture(scope="module")
def reference(blobs, tmp_path_factory):
    """One uninterrupted 3-epoch run with checkpoints, shared by several tests."""
    events: list[TrainingProgress] = []
    folder = tmp_path_factory.mktemp("reference")
    result = train(
        model_name=MODEL,
        train_set=blobs[0],
        val_set=blobs[1],
        recipe=RECIPE,
        progress=events.append,
        checkpoint_dir=folder,
        device="cpu",
    )
    return result, events, folder


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_learns_a_simple_problem_in_a_few_epochs(reference):
    result, events, _ = reference
    assert result.auc > 0.9
    assert result.epochs_run == 3 and 1 <= result.best_epoch <= 3
    curves = result.curves
    assert set(curves) >= {"train_loss", "val_loss", "val_auc", "val_accuracy"}
    assert len(curves["val_auc"]) == 3 and curves["val_auc"][result.best_epoch - 1] == result.auc
    assert result.roc is not None and result.roc.fpr[0] == 0 and result.roc.tpr[-1] == 1
    assert result.roc.auc == pytest.approx(result.auc)
    assert result.classes == ["dark", "bright"] and result.device == "cpu"
    assert result.model_config["input_size"] == 16
    metrics = result.metrics()
    assert metrics["roc"]["thresholds"][0] is None and metrics["recipe"]["batch_size"] == 16


def test_progress_reports_every_step_and_epoch(reference):
    _, events, _ = reference
    steps = [e for e in events if e.kind == "step"]
    epochs = [e for e in events if e.kind == "epoch"]
    assert len(steps) == 3 * 3  # 48 training patches, batch 16
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert all(e.steps_per_epoch == 3 and math.isfinite(e.loss) for e in steps)
    assert all(e.val_auc is not None and e.eta_s is not None for e in epochs)
    assert epochs[-1].eta_s == pytest.approx(0.0, abs=1e-9)
    assert steps[0].elapsed_s <= steps[-1].elapsed_s
    assert steps[-1].fraction_done == 1.0


def test_same_seed_same_weights_and_metrics(blobs, reference):
    first, _, _ = reference
    second = train(
        model_name=MODEL, train_set=blobs[0], val_set=blobs[1], recipe=RECIPE, device="cpu"
    )
    assert [dataclasses.replace(r, seconds=0) for r in first.history] == [
        dataclasses.replace(r, seconds=0) for r in second.history
    ]
    assert _same_weights(first.state_dict, second.state_dict)
    other = train(
        model_name=MODEL,
        train_set=blobs[0],
        val_set=blobs[1],
        device="cpu",
        recipe=dataclasses.replace(RECIPE, seed=8, max_epochs=1),
    )
    assert other.history[0].train_loss != first.history[0].train_loss


def test_cancel_then_resume_matches_an_uninterrupted_run(blobs, reference, tmp_path):
    uninterrupted, _, _ = reference
    done_epochs: list[int] = []

    def progress(p: TrainingProgress) -> None:
        if p.kind == "epoch":
            done_epochs.append(p.epoch)

    with pytest.raises(TrainingCancelled) as info:
        train(
            model_name=MODEL,
            train_set=blobs[0],
            val_set=blobs[1],
            recipe=RECIPE,
            progress=progress,
            should_cancel=lambda: 1 in done_epochs,  # "killed" after epoch 1
            checkpoint_dir=tmp_path,
            device="cpu",
        )
    assert info.value.epoch == 2 and info.value.step == 1
    assert info.value.checkpoint == tmp_path / "checkpoint.pt"
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and {"model", "optimizer", "scheduler", "rng", "best"} <= set(ckpt)
    assert not (tmp_path / "model.pt").exists()
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files

    resumed_events: list[TrainingProgress] = []
    resumed = train(
        model_name=MODEL,
        train_set=blobs[0],
        val_set=blobs[1],
        recipe=RECIPE,
        progress=resumed_events.append,
        checkpoint_dir=tmp_path,
        resume=True,
        device="cpu",
    )
    assert resumed.resumed_from_epoch == 1
    assert resumed_events[0].epoch == 2
    assert resumed.epochs_run == 3 and len(resumed.history) == 3
    assert _same_weights(resumed.state_dict, uninterrupted.state_dict)
    assert resumed.auc == uninterrupted.auc and resumed.best_epoch == uninterrupted.best_epoch
    assert (tmp_path / "model.pt").exists()


def test_resume_false_starts_again_and_finished_runs_do_not_retrain(blobs, reference):
    result, _, folder = reference
    events: list[TrainingProgress] = []
    again = train(
        model_name=MODEL,
        train_set=blobs[0],
        val_set=blobs[1],
        recipe=RECIPE,
        progress=events.append,
        checkpoint_dir=folder,
        device="cpu",
    )
    assert again.resumed_from_epoch == 3 and not events
    assert _same_weights(again.state_dict, result.state_dict)


def test_checkpoint_of_another_recipe_is_refused(blobs, reference):
    _, _, folder = reference
    with pytest.raises(CheckpointMismatch):
        train(
            model_name=MODEL,
            train_set=blobs[0],
            val_set=blobs[1],
            checkpoint_dir=folder,
            recipe=dataclasses.replace(RECIPE, learning_rate=0.01),
            device="cpu",
        )


def test_weights_file_rebuilds_the_model(reference):
    result, _, folder = reference
    model, meta = load_trained_model(folder / "model.pt")
    assert meta["model_name"] == MODEL and meta["classes"] == ["dark", "bright"]
    assert meta["metrics"]["auc"] == pytest.approx(result.auc)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), result.build_model()(x))


def test_early_stopping_keeps_the_best_epoch(blobs, monkeypatch):
    real = training._evaluate
    aucs = iter([0.7, 0.9, 0.8, 0.85, 0.6, 0.99])

    def fake(model, dataset, **kw):
        ev = real(model, dataset, **kw)
        return dataclasses.replace(ev, auc=next(aucs))

    monkeypatch.setattr(training, "_evaluate", fake)
    recipe = dataclasses.replace(RECIPE, max_epochs=6, early_stopping_patience=2)
    result = train(
        model_name=MODEL, train_set=blobs[0], val_set=blobs[1], recipe=recipe, device="cpu"
    )
    assert result.stopped_early and result.epochs_run == 4
    assert result.best_epoch == 2 and result.auc == 0.9


def test_trains_from_an_image_folder_through_a_dataloader(tmp_path):
    from PIL import Image

    from inference.datasets import ImageFolderPatchDataset

    data = blob_patches(24, size=16, seed=1)
    for i, (pixels, label) in enumerate(zip(data.images, data.labels, strict=True)):
        folder = tmp_path / data.classes[label]
        folder.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    folder_set = ImageFolderPatchDataset(tmp_path, classes=["dark", "bright"])
    assert not hasattr(folder_set, "get_batch")  # read through a DataLoader
    train_set, val_set = split_indices(labels=folder_set.labels, val_fraction=0.25).subsets(
        folder_set
    )
    result = train(
        model_name=MODEL,
        train_set=train_set,
        val_set=val_set,
        recipe=dataclasses.replace(RECIPE, max_epochs=1, batch_size=8),
        device="cpu",
    )
    assert result.epochs_run == 1 and result.classes == ["dark", "bright"]


def test_recipe_defaults_follow_seed_002_and_round_trip():
    r = TrainingRecipe()
    assert (r.learning_rate, r.lr_step_epochs, r.lr_gamma) == (1e-3, 10, 0.1)
    assert (r.batch_size, r.max_epochs, r.weight_decay) == (128, 30, 1e-4)
    assert r.dihedral and r.early_stopping_patience > 0
    assert TrainingRecipe.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match="unknown"):
        TrainingRecipe.from_dict({"momentum": 0.9})


def test_learning_rate_steps_down(blobs):
    recipe = dataclasses.replace(RECIPE, max_epochs=3, lr_step_epochs=1)
    result = train(
        model_name=MODEL, train_set=blobs[0], val_set=blobs[1], recipe=recipe, device="cpu"
    )
    np.testing.assert_allclose(result.curves["learning_rate"], [1e-3, 1e-4, 1e-5])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mixed_precision_channels_last(blobs):
    recipe = dataclasses.replace(RECIPE, max_epochs=2)
    result = train(
        model_name=MODEL, train_set=blobs[0], val_set=blobs[1], recipe=recipe, device="cuda"
    )
    assert result.device.startswith("cuda") and math.isfinite(result.history[-1].train_loss)
    assert all(v.device.type == "cpu" for v in result.state_dict.values())
    # cuDNN autotuning was on for training only: scoring's varying tile shapes must not re-tune
    assert torch.backends.cudnn.benchmark is False
