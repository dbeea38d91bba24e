#!/usr/bin/env python
"""Seed 002's primary on real lymph-node tissue: the PatchCamelyon sample (pcam-sample).

1. Train the primary (scannable MobileNetV2, ``DENSE_MOBILENET``, valid padding) through the
   platform's own path: ``launch_training`` with a ``patch-folder`` source, then
   ``execute_training_run`` (a TrainingRun, a ModelVersion). It trains on ``--train-dir``
   (default pcam-sample/train: 0/ and 1/, deduplicated, a seeded 10% held aside for early
   stopping) at the centre 40 px of each 96 px patch (``--crop``), the window scoring uses.
2. Evaluate on ``--test-dir`` (default pcam-sample/valid; any folder with 0/ and 1/ in PCam's
   layout, such as PCam's own held-back test patches), which nothing was tuned on: patch AUC with
   its 95% bootstrap interval, sensitivity and specificity at 0.5, without and with test-time
   dihedral averaging (the 8 rotations and flips).
3. Full mode also trains the variants (baseline seed-002 recipe; + HED stain jitter) and prints
   a table. ``--model PATH`` skips training and evaluates that weights file.

``--quick`` (the suite runs it): a few hundred patches, one epoch, about a minute on 2 CPU cores.
The last line is one JSON object with at least ``patch_auc``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._django import setup_django  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PCAM = ROOT.parent / "shared" / "data" / "pcam-sample"
MPP = 0.972

#: the recipe of each variant, over seed 002's defaults (what a variant adds is all it changes)
VARIANTS = {
    "baseline": {},
    "stain": {"hed_jitter": 0.1, "hed_bias": 0.02},
}


def subset_folder(source: Path, out: Path, per_class: int, *, seed: int) -> Path:
    """Copy ``per_class`` seeded random files of each of ``source``'s 0/ and 1/ into ``out``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for label in ("0", "1"):
        files = sorted((source / label).iterdir())
        (out / label).mkdir(parents=True, exist_ok=True)
        for i in sorted(rng.choice(len(files), size=min(per_class, len(files)), replace=False)):
            shutil.copyfile(files[i], out / label / files[i].name)
    return out


def recipe(args, extra: dict) -> dict:
    return {
        "max_epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr_step_epochs": max(1, args.epochs * 2 // 3),
        "early_stopping_patience": args.epochs,
        "seed": args.seed,
        "model_kwargs": {"width_mult": args.width_mult},  # merged into DENSE_MOBILENET
        **extra,
    }


def train_variant(args, train_dir: Path, name: str, extra: dict) -> dict:
    from inference.jobs import execute_training_run, launch_training
    from inference.records import TrainingRun

    source = {
        "kind": "patch-folder",
        "path": str(train_dir),
        "mpp": MPP,
        "label_rule": "centre-32",
        "crop": args.crop,
        "val_fraction": 0.1,
        "seed": args.seed,
    }
    run = launch_training(dataset_source=source, recipe=recipe(args, extra), enqueue=False)
    started = time.perf_counter()
    state = execute_training_run(run_id=run.pk, worker="pcam-benchmark")
    wall = time.perf_counter() - started
    run.refresh_from_db()
    if state != TrainingRun.Status.SUCCEEDED:
        raise SystemExit(f"training run {run.pk} {state}: {run.status_reason}")
    version = run.model_version
    summary = version.dataset_summary
    epochs = len(version.curves.get("epoch") or [])
    print(
        f"[{name}] {summary['train']} training patches x {epochs} epochs in "
        f"{version.training_seconds:.0f} s; held-aside val AUC {version.val_auc:.4f}",
        flush=True,
    )
    return {
        "weights": version.weights_path,
        "model_version": version.name,
        "train_patches": summary["train"],
        "split_val_patches": summary["val"],
        "split_val_auc": version.val_auc,
        "epochs": epochs,
        "best_epoch": version.curves["val_auc"].index(max(version.curves["val_auc"])) + 1,
        "training_seconds": round(version.training_seconds, 1),
        "wall_seconds_with_loading": round(wall, 1),
        "train_images_per_s": round(summary["train"] * epochs / version.training_seconds, 1),
        "deduplication": summary["deduplication"],
        "grid": summary["grid"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--train-dir", type=Path, default=PCAM / "train")
    parser.add_argument("--test-dir", type=Path, default=PCAM / "valid")
    parser.add_argument("--model", type=Path, help="evaluate these weights instead of training")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--crop", type=int, default=40, help="centre crop px (96: full patch)")
    parser.add_argument(
        "--width-mult", type=float, default=0.5, help="MobileNetV2 width (seed002.py uses 0.5)"
    )
    parser.add_argument("--per-class", type=int, help="train on this many patches per class")
    parser.add_argument("--test-per-class", type=int, help="evaluate this many per class")
    parser.add_argument("--variants", default=None, help="comma-separated: baseline,stain")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.epochs = args.epochs or 1
        args.per_class = args.per_class or 200
        args.test_per_class = args.test_per_class or 150
        args.batch_size = min(args.batch_size, 32)
    args.epochs = args.epochs or 4
    variants = (args.variants or ("baseline" if args.quick else "baseline,stain")).split(",")
    for folder in (args.test_dir, *(() if args.model else (args.train_dir,))):
        if not folder.is_dir():
            raise SystemExit(f"{folder} does not exist (pcam-sample lives in ../shared/data)")

    var = setup_django()
    from inference.patch_folder import evaluate_on_folder, read_patch_folder

    work = Path(tempfile.mkdtemp(prefix="pcam-bench-", dir=var))
    train_dir, test_dir = args.train_dir, args.test_dir
    if args.per_class:
        train_dir = subset_folder(args.train_dir, work / "train", args.per_class, seed=args.seed)
    if args.test_per_class:
        test_dir = subset_folder(args.test_dir, work / "test", args.test_per_class, seed=1)
    started = time.perf_counter()
    test_arrays = read_patch_folder(test_dir)
    print(
        f"[test] {test_arrays.labels.size} distinct patches of {test_dir} "
        f"({test_arrays.dedup['duplicates_dropped']} duplicates dropped) in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    results: dict[str, dict] = {}
    trained = (
        {"given": {"weights": str(args.model)}}
        if args.model
        else {name: train_variant(args, train_dir, name, VARIANTS[name]) for name in variants}
    )
    for name, info in trained.items():
        for tta in (False, True):
            figures = evaluate_on_folder(
                info["weights"],
                test_dir,
                crop=args.crop,
                tta=tta,
                n_boot=args.bootstrap,
                seed=args.seed,
                arrays=test_arrays,
            )
            key = name + (" + TTA" if tta else "")
            results[key] = {**info, **figures}
            ci = figures["auc_ci95"]
            print(
                f"{key:18s} AUC {figures['auc']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]  "
                f"sens {figures['sensitivity']:.3f}  spec {figures['specificity']:.3f}",
                flush=True,
            )
    first = next(iter(results.values()))
    print(
        json.dumps(
            {
                "test_dir": str(args.test_dir),
                "quick": args.quick,
                "crop": args.crop,
                "patch_auc": first["auc"],
                "patch_auc_ci95": first["auc_ci95"],
                "sensitivity": first["sensitivity"],
                "specificity": first["specificity"],
                "train_images_per_s": first.get("train_images_per_s"),
                "test_patches": first["patches"],
                "variants": {
                    k: {
                        f: v.get(f)
                        for f in (
                            "auc",
                            "auc_ci95",
                            "sensitivity",
                            "specificity",
                            "split_val_auc",
                            "epochs",
                            "train_patches",
                            "training_seconds",
                            "train_images_per_s",
                            "images_per_s",
                        )
                    }
                    for k, v in results.items()
                },
                "deduplication": first.get("deduplication"),
                "grid": first.get("grid"),
            }
        )
    )


if __name__ == "__main__":
    main()
