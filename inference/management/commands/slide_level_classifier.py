"""`manage.py slide_level_classifier`: train seed 000's slide-level classifier on a model's
reconstructed heat maps and compare it with the max-score rule (shown on the model page)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from inference.records import ModelVersion, ScoringRun
from inference.slide_level import (
    BOOTSTRAP,
    FOLDS,
    IMAGE_SIZE,
    STEPS,
    SlideLevelError,
    build_slide_classifier,
)


class Command(BaseCommand):
    help = (
        "Reconstruct each scored slide's heat map into a small image, train a slide classifier on"
        " the slides whose node truth is known (cross-validated by case), and compare its AUC with"
        " the max-score rule's (bootstrap 95% CIs). Writes the result beside the model's results."
    )

    def add_arguments(self, parser):
        parser.add_argument("version", type=int, help="model version id")
        parser.add_argument("--run", type=int, help="scoring run id (default: the latest)")
        parser.add_argument("--size", type=int, default=IMAGE_SIZE, help="image side, px")
        parser.add_argument("--folds", type=int, default=FOLDS)
        parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP)
        parser.add_argument("--steps", type=int, default=STEPS, help="training steps")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, version, run, size, folds, bootstrap, steps, seed, **options):
        model = ModelVersion.objects.filter(pk=version).first()
        if model is None:
            raise CommandError(f"no model version {version}")
        scoring_run = None
        if run is not None:
            scoring_run = ScoringRun.objects.filter(pk=run, model_version=model).first()
            if scoring_run is None:
                raise CommandError(f"model version {version} has no scoring run {run}")
        if size < 8 or folds < 2 or bootstrap < 0 or steps < 1:
            raise CommandError("size >= 8, folds >= 2, bootstrap >= 0 and steps >= 1 please")
        try:
            result = build_slide_classifier(
                version=model,
                run=scoring_run,
                size=size,
                folds=folds,
                bootstrap=bootstrap,
                steps=steps,
                seed=seed,
            )
        except SlideLevelError as exc:
            raise CommandError(str(exc)) from exc

        def line(name: str, part: dict) -> str:
            ci = part["ci95"]
            ci_text = f"95% CI {ci[0]:.3f}-{ci[1]:.3f}" if ci else "no CI"
            return f"{name}: AUC {part['auc']:.3f} ({ci_text})"

        self.stdout.write(
            f"{result['slides']} slides ({result['positive']} positive) of {result['cases']}"
            f" cases, {result['folds']}-fold by case, scoring run {result['scoring_run']}"
        )
        self.stdout.write(line("slide classifier", result["slide_classifier"]))
        self.stdout.write(line("max-score rule", result["max_score"]))
        self.stdout.write(line("difference", result["difference"]))
