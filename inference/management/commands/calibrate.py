"""`manage.py calibrate`: lock a model's node threshold from a scoring run's validation nodes."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from inference.records import ScoringRun
from inference.thresholds import ThresholdError, lock_threshold, validation_scores
from slides.models import Node


class Command(BaseCommand):
    help = (
        "Choose the highest threshold keeping the target sensitivity (default 100%) on the nodes"
        " of a scoring run whose ground truth is known, and lock it on the run's model version."
    )

    def add_arguments(self, parser):
        parser.add_argument("run", type=int, help="scoring run id (its node scores are used)")
        parser.add_argument("--target-sensitivity", type=float, default=1.0)
        parser.add_argument(
            "--cases", nargs="+", help="only nodes of these case accession numbers (validation)"
        )
        parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--replace", action="store_true", help="replace a locked threshold")
        parser.add_argument("--dry-run", action="store_true", help="show, do not lock")

    def handle(
        self, *args, run, target_sensitivity, cases, bootstrap, seed, replace, dry_run, **options
    ):
        scoring_run = ScoringRun.objects.select_related("model_version").filter(pk=run).first()
        if scoring_run is None:
            raise CommandError(f"no scoring run {run}")
        nodes = Node.objects.filter(case__accession_number__in=cases) if cases else None
        scores, truths = validation_scores(run=scoring_run, nodes=nodes)
        source = {
            "scoring_run": scoring_run.pk,
            "secondary_version": scoring_run.secondary_version_id,
            "nodes": sorted(scores),
            "cases": cases or "all with known truth",
        }
        kw = {"target_sensitivity": target_sensitivity, "n_bootstrap": bootstrap, "seed": seed}
        try:
            if dry_run:
                from inference.thresholds import choose_threshold

                point = choose_threshold(scores, truths, **kw)
            else:
                point = lock_threshold(
                    version=scoring_run.model_version,
                    node_scores=scores,
                    truths=truths,
                    replace=replace,
                    source=source,
                    **kw,
                )
        except ThresholdError as exc:
            raise CommandError(str(exc)) from exc
        verb = "would lock" if dry_run else "locked"
        self.stdout.write(
            f"{verb} threshold {point.threshold:g} on {scoring_run.model_version.name}"
            f" ({point.method}): sensitivity {point.sensitivity:.3f}, specificity"
            f" {point.specificity:.3f}, accuracy {point.accuracy:.3f}"
            f" on {point.n_positive} positive and {point.n_negative} negative nodes"
        )
        self.stdout.write(json.dumps(point.to_dict()))
