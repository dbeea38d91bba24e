"""`manage.py train`: launch a training run (queued on the `gpu` queue, or run here with --here)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from inference.jobs import TrainingRequestError, execute_training_run, launch_training
from inference.records import TrainingRun


class Command(BaseCommand):
    help = "Train a patch classifier on an image folder (one subfolder per class, or --csv) or a patch array file."

    def add_arguments(self, parser):
        parser.add_argument("dataset", type=Path, help="image folder, or .npz patch arrays")
        parser.add_argument("--csv", type=Path, help="CSV of file,label[,group] inside the image folder")
        parser.add_argument("--size", type=int, help="resize patches to this many px")
        parser.add_argument("--architecture", default="mobilenetv2")
        parser.add_argument("--stage", default="primary", choices=["primary", "secondary"])
        parser.add_argument("--recipe", default="{}", help='JSON overrides, e.g. {"max_epochs": 5}')
        parser.add_argument("--here", action="store_true", help="train in this process instead of queueing")

    def handle(self, *args, dataset: Path, csv: Path | None, size: int | None, architecture: str, stage: str,
               recipe: str, here: bool, **options):
        source = {"kind": "arrays" if dataset.suffix == ".npz" else "image-folder", "path": str(dataset.resolve())}
        if csv:
            source["csv"] = str(csv.resolve())
        if size:
            source["size"] = size
        try:
            run = launch_training(
                dataset_source=source, architecture=architecture, stage=stage, recipe=json.loads(recipe), enqueue=not here
            )
        except (TrainingRequestError, json.JSONDecodeError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"training run {run.pk} {'running here' if here else 'queued on the gpu queue'}")
        if here:
            execute_training_run(run_id=run.pk, worker="manage.py")
        else:
            bar = tqdm(total=1000, unit="‰")
            while True:
                run.refresh_from_db()
                bar.n = int(1000 * (run.progress or {}).get("fraction", 0))
                bar.set_postfix({k: run.progress.get(k) for k in ("epoch", "loss", "val_auc")} if run.progress else {})
                bar.refresh()
                if run.is_finished:
                    break
                time.sleep(1)
            bar.close()
        run.refresh_from_db()
        self.stdout.write(f"run {run.pk}: {run.status} {run.status_reason}")
        if run.status == TrainingRun.Status.SUCCEEDED:
            version = run.model_version
            self.stdout.write(f"model version {version.name}: validation AUC {version.val_auc:.4f}, accuracy {version.val_accuracy:.4f}")
        elif run.status == TrainingRun.Status.FAILED:
            raise CommandError(run.status_reason)
