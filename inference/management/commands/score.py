"""`manage.py score`: rescore slides with a model (the live one by default), queued on the `gpu`
queue one task per slide, or here in this process with --here; a progress bar either way."""

from __future__ import annotations

import json
import time

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from inference.records import ModelVersion, ScoringRun, SlideScoring, Stage
from inference.rescoring import ScoringRequestError, progress_of, rescore_all, score_slide_job


def _version(pk: int | None, stage: str) -> ModelVersion | None:
    if pk is None:
        return ModelVersion.objects.filter(stage=stage, is_live=True).first()
    version = ModelVersion.objects.filter(pk=pk).first()
    if version is None:
        raise CommandError(f"no model version {pk}")
    return version


class Command(BaseCommand):
    help = "Rescore slides into heat maps and node scores with a model version (default: live)."

    def create_parser(self, prog_name, subcommand, **kwargs):
        # --version names a model version here, replacing Django's "print the Django version"
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("--slides", type=int, nargs="+", help="slide ids (default: all)")
        parser.add_argument(
            "--version",
            "--model",
            dest="version",
            type=int,
            help="primary model version id (default: the live primary)",
        )
        parser.add_argument(
            "--secondary",
            default="live",
            help='secondary model version id, "live" (default) or "none"',
        )
        parser.add_argument("--here", action="store_true", help="score in this process")
        parser.add_argument("--device", help="torch device for --here (default: cuda if any)")

    def handle(self, *args, slides, version, secondary, here, device, **options):
        primary = _version(version, Stage.PRIMARY)
        if primary is None:
            raise CommandError("no live primary model: promote one or pass --version")
        if secondary == "none":
            second = None
        elif secondary == "live":
            second = _version(None, Stage.SECONDARY)
        else:
            try:
                second = _version(int(secondary), Stage.SECONDARY)
            except ValueError as exc:
                raise CommandError(f"--secondary must be an id, live or none: {exc}") from exc
        try:
            run = rescore_all(
                version=primary,
                secondary=second,
                trigger=ScoringRun.Trigger.MANUAL,
                slides=slides,
                enqueue=not here,
            )
        except ScoringRequestError as exc:
            raise CommandError(str(exc)) from exc
        cascade = primary.name + (f" + {second.name}" if second else "")
        self.stdout.write(
            f"scoring run {run.pk}: {run.slides_total} slides with {cascade}"
            f" ({'here' if here else 'queued on the gpu queue'})"
        )
        if here:
            self._score_here(run, device)
        else:
            self._follow(run)
        summary = progress_of(run)
        summary.pop("slides")
        self.stdout.write(json.dumps(summary))
        if run.status == ScoringRun.Status.FAILED:
            failed = run.slide_jobs.filter(status=SlideScoring.Status.FAILED)
            for job in failed:
                self.stderr.write(f"slide {job.slide_id}: {job.status_reason}")
            raise CommandError(f"{failed.count()} slides failed")

    def _score_here(self, run: ScoringRun, device: str | None) -> None:
        jobs = list(run.slide_jobs.order_by("slide_id"))
        with tqdm(total=len(jobs), unit="slide") as slides_bar:
            for job in jobs:
                with tqdm(total=1, unit="tile", leave=False, desc=f"slide {job.slide_id}") as bar:

                    def tick(done: int, total: int, bar=bar) -> None:
                        bar.total = total
                        bar.n = done
                        bar.refresh()

                    score_slide_job(job.pk, worker="manage.py", device=device, progress=tick)
                slides_bar.update(1)
        run.refresh_from_db()

    def _follow(self, run: ScoringRun) -> None:
        with tqdm(total=max(run.slides_total, 1), unit="slide") as bar:
            while True:
                state = progress_of(run)
                bar.n = state["slides_done"] + state["slides_failed"]
                bar.set_postfix(failed=state["slides_failed"], status=state["status"])
                bar.refresh()
                if run.status in (ScoringRun.Status.SUCCEEDED, ScoringRun.Status.FAILED):
                    break
                time.sleep(1)
