#!/usr/bin/env python
"""Training throughput: our TrainingRun path versus a bare PyTorch loop, same tensors, same model.

Both do the same work per epoch: the same MobileNetV2, Adam, batch size, dihedral + colour
augmentation and normalisation, one pass over the training patches and one over the validation
patches. The TrainingRun path adds what a real job does: progress and heartbeat writes to the
database, cancel polling, the per-epoch checkpoint and the epoch's validation metrics. A third
run feeds the same patches from extracted arrays on disk (memory-mapped .npy), as dataset
snapshots do. Figures are images/s over the second epoch (the first warms up).

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._django import setup_django  # noqa: E402


def make_patches(n: int, size: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(150, 230, size=(n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, size=n)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(4, size - 12, 2)
        images[i, y : y + 8, x : x + 8] = (70, 30, 110)
    return images, labels


def bare_loop(
    images, labels, *, train_idx, val_idx, model_kwargs, recipe, epochs: int, device
) -> list[float]:
    """The same model and work in a plain loop; returns seconds per epoch."""
    import torch

    from inference.augmentation import normalize, to_float
    from inference.models import build_model

    torch.manual_seed(0)
    model = build_model(
        "mobilenetv2", num_classes=2, input_size=images.shape[1], **model_kwargs
    ).to(device)
    optimiser = torch.optim.Adam(
        model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    augment = recipe.augmenter()
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y_all = torch.from_numpy(labels.astype("int64"))
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        order = train_idx[torch.randperm(len(train_idx)).numpy()]
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i : i + recipe.batch_size]
            x = normalize(
                augment(to_float(x_all[idx].to(device))), mean=recipe.mean, std=recipe.std
            )
            loss = loss_fn(model(x), y_all[idx].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(val_idx), recipe.eval_batch_size):
                idx = val_idx[i : i + recipe.eval_batch_size]
                model(
                    normalize(to_float(x_all[idx].to(device)), mean=recipe.mean, std=recipe.std)
                ).softmax(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--patches", type=int)
    args = parser.parse_args()
    n = args.patches or (1536 if args.quick else 12288)
    size = 40
    model_kwargs = {"width_mult": 0.5 if args.quick else 1.0}
    epochs = 2

    var = setup_django()
    import numpy as np
    import torch
    from django.conf import settings

    from inference.datasets import split_indices
    from inference.training import TrainingRecipe

    settings.RESULTS_DIR = var / "results"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images, labels = make_patches(n, size)
    recipe_overrides = {
        "max_epochs": epochs,
        "early_stopping_patience": 10,
        "model_kwargs": model_kwargs,
        "seed": 0,
    }
    recipe = TrainingRecipe.from_dict(recipe_overrides)
    split = split_indices(labels=labels, val_fraction=0.1, seed=0)
    n_epoch_images = len(split.train) + len(split.val)
    print(
        f"{n} patches of {size} px (train {len(split.train)}, val {len(split.val)}), MobileNetV2 {model_kwargs}, "
        f"batch {recipe.batch_size}, device {device}, torch threads {torch.get_num_threads()}"
    )

    bare = bare_loop(
        images,
        labels,
        train_idx=split.train,
        val_idx=split.val,
        model_kwargs=model_kwargs,
        recipe=recipe,
        epochs=epochs,
        device=device,
    )
    tmp = Path(tempfile.mkdtemp(prefix="nodescope-train-bench-"))
    np.savez(tmp / "patches.npz", images=images, labels=labels)
    memory = epoch_times_via_path(
        {"kind": "arrays", "path": str(tmp / "patches.npz"), "val_fraction": 0.1}, recipe_overrides
    )
    disk_dir = tmp / "extracted"
    disk_dir.mkdir()
    np.save(disk_dir / "images.npy", images)
    np.save(disk_dir / "labels.npy", labels)
    disk = epoch_times_via_path(
        {"kind": "arrays", "path": str(disk_dir), "val_fraction": 0.1}, recipe_overrides
    )

    def ips(times: list[float]) -> float:
        return n_epoch_images / times[-1]

    figures = {
        "device": str(device),
        "patches": n,
        "bare_images_per_s": round(ips(bare), 1),
        "run_path_images_per_s": round(ips(memory), 1),
        "run_path_from_disk_images_per_s": round(ips(disk), 1),
    }
    figures["ratio_run_path"] = round(
        figures["run_path_images_per_s"] / figures["bare_images_per_s"], 3
    )
    figures["ratio_from_disk"] = round(
        figures["run_path_from_disk_images_per_s"] / figures["bare_images_per_s"], 3
    )
    print(f"  bare PyTorch loop           {figures['bare_images_per_s']:9.1f} images/s")
    print(
        f"  TrainingRun path (memory)   {figures['run_path_images_per_s']:9.1f} images/s  ratio {figures['ratio_run_path']:.3f} (goal >= 0.9)"
    )
    print(
        f"  TrainingRun path (mmap npy) {figures['run_path_from_disk_images_per_s']:9.1f} images/s  ratio {figures['ratio_from_disk']:.3f} (goal >= 0.8)"
    )
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(var, ignore_errors=True)
    print(json.dumps(figures))


def epoch_times_via_path(source: dict, recipe: dict) -> list[float]:
    """Seconds of one warm epoch through the job path: a 2-epoch run minus a 1-epoch run. On CUDA
    a 1-epoch run goes first, untimed: the first run in a process spends tens of seconds in
    cuDNN's autotuning and kernel loading (an H100 took 36 s), which would make the difference
    negative."""
    import torch

    from inference.jobs import execute_training_run, launch_training
    from inference.records import TrainingRun

    totals = []
    warm_up = (1,) if torch.cuda.is_available() else ()
    for epochs in (*warm_up, 1, 2):
        run = launch_training(
            dataset_source=source, recipe={**recipe, "max_epochs": epochs}, enqueue=False
        )
        t0 = time.perf_counter()
        execute_training_run(run_id=run.pk)
        totals.append(time.perf_counter() - t0)
        run = TrainingRun.objects.get(pk=run.pk)
        if run.status != "succeeded":
            raise SystemExit(f"training run failed: {run.status_reason}")
    totals = totals[len(warm_up) :]
    return [totals[0], totals[1] - totals[0]]


if __name__ == "__main__":
    main()
