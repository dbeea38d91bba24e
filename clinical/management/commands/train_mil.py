"""`manage.py train_mil`: launch an attention-MIL node-status run (seed 001) on the `gpu` queue,
or here with --here. The cases are those with a node status in their clinical data."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from inference.jobs import TrainingRequestError, execute_training_run, launch_training
from inference.mil import MIL_ARCHITECTURE, MIL_DATASET_KIND


class Command(BaseCommand):
    help = (
        "Train a gated-attention MIL model of the node status (N0 / N+) from outlined cancer areas."
    )

    def add_arguments(self, parser):
        parser.add_argument("--task", default="binary", choices=["binary", "three-class"])
        parser.add_argument(
            "--clinical",
            default="",
            help="'all', or comma-separated clinical variable keys (DL-CNB+C); empty: image only",
        )
        parser.add_argument("--extractor-version", type=int, help="patch ModelVersion backbone")
        parser.add_argument(
            "--cases", help="comma-separated case ids (default: every labelled case)"
        )
        parser.add_argument("--max-instances", type=int, default=512)
        parser.add_argument(
            "--recipe", default="{}", help='JSON overrides, e.g. {"max_epochs": 20}'
        )
        parser.add_argument("--here", action="store_true", help="train in this process")

    def handle(self, *args, **o):
        clinical: bool | list[str] = False
        if o["clinical"] == "all":
            clinical = True
        elif o["clinical"]:
            clinical = [k.strip() for k in o["clinical"].split(",") if k.strip()]
        source = {
            "kind": MIL_DATASET_KIND,
            "task": o["task"],
            "clinical": clinical,
            "max_instances": o["max_instances"],
            "extractor": (
                {"model_version": o["extractor_version"]}
                if o["extractor_version"]
                else {"architecture": "resnet-small", "seed": 0}
            ),
        }
        try:
            if o["cases"]:
                source["cases"] = [int(c) for c in o["cases"].split(",")]
            run = launch_training(
                dataset_source=source,
                architecture=MIL_ARCHITECTURE,
                recipe=json.loads(o["recipe"]),
                enqueue=not o["here"],
            )
        except (TrainingRequestError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"MIL training run {run.pk} {'running here' if o['here'] else 'queued'}")
        if o["here"]:
            execute_training_run(run_id=run.pk, worker="manage.py")
            run.refresh_from_db()
            self.stdout.write(f"run {run.pk}: {run.status} {run.status_reason}")
