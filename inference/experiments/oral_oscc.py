"""Train the default recipe on the real oral OSCC images: a check that training learns real
tumour morphology from H&E pixels (not a clinical accuracy claim).

    python -m inference.experiments.oral_oscc [--quick] [--epochs N] [--size 96]

Data: ``../shared/data/oral-oscc-images`` (1,192 H&E fields, OSCC vs normal oral mucosa, 224 px;
Rahman et al. 2020, CC BY 4.0). The set has no patient ids, so the split is random per image and
views of one patient fall on both sides: the validation AUC is optimistic. Nothing is written
except a temporary checkpoint folder that is removed afterwards. The last output line is one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from inference.datasets import ImageFolderPatchDataset, PatchSubset, split_indices
from inference.training import TrainingProgress, TrainingRecipe, train

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "oral-oscc-images"
CLASSES = ["Normal", "OSCC"]  # OSCC is the positive class (label 1)

#: Settings found to reach validation AUC >= 0.90 in a few CPU minutes (see the module report).
FULL = {
    "size": 96,
    "epochs": 40,
    "width_mult": 0.5,
    "output_stride": 32,
    "batch_size": 32,
    "dropout": 0.0,
}
QUICK = {**FULL, "size": 64, "epochs": 4, "output_stride": 16}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="oral-oscc-images folder")
    p.add_argument("--quick", action="store_true", help="small images, few epochs (a smoke test)")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--size", type=int, help="patch size in pixels (images are downscaled)")
    p.add_argument("--width", type=float, dest="width_mult", help="MobileNetV2 width multiplier")
    p.add_argument("--output-stride", type=int, help="total stride of the network")
    p.add_argument("--batch", type=int, dest="batch_size", help="mini-batch size")
    p.add_argument("--lr-step", type=int, help="epochs between learning-rate drops")
    p.add_argument(
        "--colour", type=float, help="scale of the recipe's colour jitter (0 turns it off)"
    )
    p.add_argument("--model", default="mobilenetv2")
    p.add_argument("--limit", type=int, help="use only this many images (stratified, seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.3)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine, OpenMP threads waiting "
        "for a busy core make steps several times slower)",
    )
    p.add_argument("--dropout", type=float, help="dropout before the classifier")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for key in ("epochs", "size", "width_mult", "output_stride", "batch_size", "dropout"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    torch.set_num_threads(args.threads)
    labels_csv = args.data / "labels.csv"
    if not labels_csv.is_file():
        print(f"no data: {labels_csv} is missing", file=sys.stderr)
        raise SystemExit(2)

    t0 = time.perf_counter()
    folder = ImageFolderPatchDataset(
        args.data / "images", csv_path=labels_csv, classes=CLASSES, size=settings["size"]
    )
    data = folder.to_arrays()
    load_s = time.perf_counter() - t0
    if args.limit and args.limit < len(data):
        keep = split_indices(
            labels=data.labels, val_fraction=args.limit / len(data), seed=args.seed
        ).val
        data = PatchSubset(data, keep)
    split = split_indices(labels=data.labels, val_fraction=args.val_fraction, seed=args.seed)
    train_set, val_set = split.subsets(data)
    counts = np.bincount(data.labels, minlength=2)
    print(
        f"oral OSCC: {len(data)} images ({counts[0]} normal, {counts[1]} OSCC), "
        f"{settings['size']} px, decoded in {load_s:.1f}s"
    )
    print(f"split: {split.note}")
    print(
        "NOTE: this data set has no patient ids, so the split is random per image; "
        "validation figures are optimistic"
    )

    model_kwargs = {
        "output_stride": settings["output_stride"],
        "dropout": settings["dropout"],
        "zero_init_residual": True,
    }
    if args.model == "mobilenetv2":
        model_kwargs["width_mult"] = settings["width_mult"]
    recipe = TrainingRecipe(
        max_epochs=settings["epochs"],
        batch_size=settings["batch_size"],
        model_kwargs=model_kwargs,
        seed=args.seed,
    )
    if args.lr_step:
        recipe = replace(recipe, lr_step_epochs=args.lr_step)
    if args.colour is not None:
        recipe = replace(
            recipe,
            brightness=recipe.brightness * args.colour,
            contrast=recipe.contrast * args.colour,
            saturation=recipe.saturation * args.colour,
            hue=recipe.hue * args.colour,
        )

    def report(p: TrainingProgress) -> None:
        if p.kind == "epoch":
            print(
                f"epoch {p.epoch:2d}/{p.max_epochs}: train loss {p.loss:.4f}  "
                f"val loss {p.val_loss:.4f}  val AUC {p.val_auc:.4f}  "
                f"val acc {p.val_accuracy:.4f}  lr {p.learning_rate:g}  "
                f"{p.elapsed_s:.0f}s elapsed, ~{p.eta_s or 0:.0f}s left at most",
                flush=True,
            )

    t1, cpu1 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="oral-oscc-") as tmp:
        result = train(
            model_name=args.model,
            train_set=train_set,
            val_set=val_set,
            recipe=recipe,
            progress=report,
            checkpoint_dir=tmp,
            device=args.device,
        )
    train_s, train_cpu_s = time.perf_counter() - t1, time.process_time() - cpu1
    summary = {
        "experiment": "oral_oscc",
        "model": result.model_name,
        "size": settings["size"],
        "width_mult": settings["width_mult"],
        "output_stride": result.model_config.get("output_stride"),
        "batch_size": recipe.batch_size,
        "max_epochs": recipe.max_epochs,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "n_train": len(train_set),
        "n_val": len(val_set),
        "split": "random per image (no patient ids: optimistic)",
        "val_auc": round(result.auc, 4),
        "val_accuracy": round(result.accuracy, 4),
        "load_s": round(load_s, 1),
        "train_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu_s, 1),
        "s_per_epoch": round(train_s / max(1, result.epochs_run), 1),
        "device": result.device,
        "threads": torch.get_num_threads(),
        "goal_auc_0_90": result.auc >= 0.90,
    }
    print(
        f"best epoch {result.best_epoch}: validation AUC {result.auc:.4f}, "
        f"accuracy {result.accuracy:.4f}; training {train_s:.0f}s on {result.device}"
    )
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
