"""`manage.py train_images`: train several whole-image classifiers on one node-image dataset.

Every architecture gets its own TrainingRun on the same ``node-images`` source (same images, same
split by patient, same size), so their ModelVersions share a dataset hash and line up on the
comparison page (``/models/<id>/comparison/``), as seed 003 compared eight networks on one set.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from inference.image_classifier import (
    DATASET_KIND,
    IMAGE_ARCHITECTURES,
    NodeImageError,
    check_image_request,
)
from inference.jobs import TrainingRequestError, execute_training_run, launch_training
from inference.records import TrainingRun

DEFAULT_ARCHITECTURES = "resnet50,inception-v3,resnet18,mobilenetv2"


class Command(BaseCommand):
    help = (
        "Train whole-image classifiers (metastatic vs benign) on CT or ultrasound node images, "
        "one training run per architecture on the same dataset and split."
    )

    def add_arguments(self, parser):
        parser.add_argument("--modality", required=True, choices=["ct", "ultrasound"])
        parser.add_argument(
            "--architectures",
            default=DEFAULT_ARCHITECTURES,
            help=f"comma-separated, from {', '.join(IMAGE_ARCHITECTURES)} "
            f"(default {DEFAULT_ARCHITECTURES})",
        )
        parser.add_argument("--size", type=int, default=224, help="image size in px (all nets)")
        parser.add_argument("--val-fraction", type=float, default=0.3)
        parser.add_argument("--seed", type=int, default=0, help="split and training seed")
        parser.add_argument("--epochs", type=int, help="max_epochs (default: the recipe's 30)")
        parser.add_argument("--batch-size", type=int, help="default 32")
        parser.add_argument(
            "--width-mult", type=float, help="narrow every net (e.g. 0.25 for a quick look)"
        )
        parser.add_argument(
            "--recipe", default="{}", help='more JSON overrides, e.g. {"learning_rate": 3e-4}'
        )
        parser.add_argument(
            "--here", action="store_true", help="train one after another in this process"
        )

    def handle(self, *args, **options):
        names = [a.strip() for a in options["architectures"].split(",") if a.strip()]
        if not names:
            raise CommandError("name at least one architecture")
        if len(set(names)) != len(names):
            raise CommandError("an architecture is named twice")
        try:
            recipe = json.loads(options["recipe"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--recipe is not JSON: {exc}") from exc
        if not isinstance(recipe, dict):
            raise CommandError("--recipe must be a JSON object")
        recipe.setdefault("seed", options["seed"])
        if options["epochs"] is not None:
            recipe["max_epochs"] = options["epochs"]
        if options["batch_size"] is not None:
            recipe["batch_size"] = options["batch_size"]
        if options["width_mult"] is not None:
            recipe["model_kwargs"] = {
                **recipe.get("model_kwargs", {}),
                "width_mult": options["width_mult"],
            }
        source = {
            "kind": DATASET_KIND,
            "modality": options["modality"],
            "size": options["size"],
            "val_fraction": options["val_fraction"],
            "seed": options["seed"],
        }
        here = options["here"]
        runs: list[TrainingRun] = []
        try:  # every architecture is checked before any run is queued or trained
            for name in names:
                check_image_request(dataset_source=source, architecture=name, recipe=recipe)
        except NodeImageError as exc:
            raise CommandError(str(exc)) from exc
        try:
            for name in names:
                runs.append(
                    launch_training(
                        dataset_source=source, architecture=name, recipe=recipe, enqueue=not here
                    )
                )
        except TrainingRequestError as exc:
            raise CommandError(str(exc)) from exc
        for run in runs:
            self.stdout.write(
                f"training run {run.pk} ({run.architecture}) "
                f"{'running here' if here else 'queued on the gpu queue'}"
            )
        if not here:
            return
        for run in runs:
            status = execute_training_run(run_id=run.pk, worker="manage.py")
            run.refresh_from_db()
            version = getattr(run, "model_version", None)
            line = f"{run.architecture}: {status}"
            if version is not None:
                auroc = (version.threshold_metrics or {}).get("auroc") or {}
                ci = auroc.get("ci") or [None, None]
                line += f", AUROC {version.val_auc:.3f}"
                if None not in ci:
                    line += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
                line += f" (model version {version.pk})"
            else:
                line += f" ({run.status_reason})"
            self.stdout.write(line)
