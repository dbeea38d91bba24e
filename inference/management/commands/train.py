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
        parser.add_argument(
            "dataset",
            type=Path,
            nargs="?",
            help="image folder, .npz patch arrays, or a folder of .npy arrays",
        )
        parser.add_argument(
            "--snapshot", type=int, help="train on this dataset snapshot (id) instead of a path"
        )
        parser.add_argument(
            "--secondary-from",
            type=int,
            metavar="VERSION",
            help="mine hard negatives with this primary model version on the negative nodes and "
            "train a secondary on them (seed 002's chain)",
        )
        parser.add_argument(
            "--negative-slides",
            help="comma-separated slide ids to mine (default: every negative node)",
        )
        parser.add_argument(
            "--csv", type=Path, help="CSV of file,label[,group] inside the image folder"
        )
        parser.add_argument("--size", type=int, help="resize patches to this many px")
        parser.add_argument(
            "--mpp",
            type=float,
            help="µm per pixel of a labelled patch folder (PCam's layout: train/ and valid/ with "
            "0/ and 1/, or 0/ and 1/); naming it trains on the folder as a patch-folder dataset",
        )
        parser.add_argument(
            "--label-rule", default="centre-32", help="patch folder: centre-N or whole"
        )
        parser.add_argument(
            "--crop",
            type=int,
            default=40,
            help="patch folder: train on the centre CROP px (0: the full patch)",
        )
        parser.add_argument("--architecture", default="mobilenetv2")
        parser.add_argument("--stage", default="primary", choices=["primary", "secondary"])
        parser.add_argument("--recipe", default="{}", help='JSON overrides, e.g. {"max_epochs": 5}')
        parser.add_argument(
            "--here", action="store_true", help="train in this process instead of queueing"
        )

    def handle(
        self,
        *args,
        dataset: Path | None,
        csv: Path | None,
        size: int | None,
        architecture: str,
        stage: str,
        recipe: str,
        here: bool,
        **options,
    ):
        try:
            if options.get("secondary_from"):
                run = self._launch_secondary(options, recipe=json.loads(recipe), enqueue=not here)
            else:
                source = (
                    self._patch_folder(dataset, options)
                    if options.get("mpp")
                    else self._source(dataset, csv, size, options.get("snapshot"))
                )
                run = launch_training(
                    dataset_source=source,
                    architecture=architecture,
                    stage=stage,
                    recipe=json.loads(recipe),
                    enqueue=not here,
                )
        except (TrainingRequestError, json.JSONDecodeError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"training run {run.pk} {'running here' if here else 'queued on the gpu queue'}"
        )
        if here:
            execute_training_run(run_id=run.pk, worker="manage.py")
        else:
            bar = tqdm(total=1000, unit="‰")
            while True:
                run.refresh_from_db()
                bar.n = int(1000 * (run.progress or {}).get("fraction", 0))
                bar.set_postfix(
                    {k: run.progress.get(k) for k in ("epoch", "loss", "val_auc")}
                    if run.progress
                    else {}
                )
                bar.refresh()
                if run.is_finished:
                    break
                time.sleep(1)
            bar.close()
        run.refresh_from_db()
        self.stdout.write(f"run {run.pk}: {run.status} {run.status_reason}")
        if run.status == TrainingRun.Status.SUCCEEDED:
            version = run.model_version
            self.stdout.write(
                f"model version {version.name}: validation AUC {version.val_auc:.4f}, accuracy {version.val_accuracy:.4f}"
            )
            summary = version.dataset_summary or {}
            if summary.get("kind") == "patch-folder":
                dedup, grid = summary["deduplication"], summary["grid"]
                self.stdout.write(
                    f"patches: {summary['train']} training, {summary['val']} validation "
                    f"({dedup['duplicates_dropped']} duplicates of {dedup['files']} files dropped); "
                    f"window {grid['patch_px']} px at {grid['target_mpp']} µm/px "
                    f"({grid['crop']} of {grid['source_patch_px']} px), labels: {grid['label_rule']}; "
                    f"{version.training_seconds:.0f} s, "
                    f"{summary['train'] * len(version.curves.get('epoch') or []) / version.training_seconds:.0f} "
                    "training images/s"
                )
        elif run.status == TrainingRun.Status.FAILED:
            raise CommandError(run.status_reason)

    @staticmethod
    def _patch_folder(dataset: Path | None, options: dict) -> dict:
        if dataset is None:
            raise CommandError("name the patch folder")
        return {
            "kind": "patch-folder",
            "path": str(dataset.resolve()),
            "mpp": options["mpp"],
            "label_rule": options["label_rule"],
            "crop": options["crop"] or None,
        }

    @staticmethod
    def _source(
        dataset: Path | None, csv: Path | None, size: int | None, snapshot: int | None
    ) -> dict:
        if snapshot:
            return {"kind": "snapshot", "id": snapshot}
        if dataset is None:
            raise CommandError("name a dataset path, --snapshot ID or --secondary-from VERSION")
        kind = (
            "arrays"
            if dataset.suffix == ".npz" or (dataset / "images.npy").is_file()
            else "image-folder"
        )
        source = {"kind": kind, "path": str(dataset.resolve())}
        if csv:
            source["csv"] = str(csv.resolve())
        if size:
            source["size"] = size
        return source

    @staticmethod
    def _launch_secondary(options: dict, *, recipe: dict, enqueue: bool) -> TrainingRun:
        from inference.mining import launch_secondary_training
        from inference.records import ModelVersion

        try:
            primary = ModelVersion.objects.get(pk=options["secondary_from"])
        except ModelVersion.DoesNotExist as exc:
            raise CommandError(f"no model version {options['secondary_from']}") from exc
        slides = options.get("negative_slides")
        return launch_secondary_training(
            primary=primary,
            negative_slides=[int(s) for s in slides.split(",")] if slides else None,
            recipe=recipe,
            enqueue=enqueue,
        )
