"""Rescoring: one ScoringRun fans out into one SlideScoring job (one Celery task on the `gpu`
queue) per slide; each job scans its slide, writes the heat map atomically, and when the last
slide of a node is done the node's score is recorded. Older scores are kept: every HeatMap and
NodeScore names the model version and the run that made it, and :func:`screening_changes`
lists the nodes whose screening result differs between two runs.

A SlideScoring job is claimed with a conditional update (queued, or running with a stale
heartbeat -> running, attempts + 1), sends a heartbeat with its progress while it scans, and
finishes with another conditional update that only the attempt holding the claim can make, in the
same transaction as its HeatMap row and the run's counters. A worker killed mid-slide therefore
leaves the job `running` with no heat map row (and no file under the final name); Celery
redelivers the task (late acknowledgement) or :func:`recover_stale_slide_jobs` queues it again
when a worker starts, and the slide is scanned afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from audit.log import record
from slides.models import Node, Slide

from .records import (
    HeatMap,
    ModelVersion,
    NodeScore,
    ScoringRun,
    SlideScoring,
    Stage,
    lost_job_ids,
    stale_before,
)

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
JOB_FINISHED = (SlideScoring.Status.SUCCEEDED, SlideScoring.Status.FAILED)


class ScoringRequestError(ValueError):
    """A rescoring request that cannot run (wrong stage, a model that cannot scan densely)."""


# ---- launching -----------------------------------------------------------------------------


def _check_scannable(version: ModelVersion, *, role: str) -> None:
    """Cheap check (no torch) that a model was trained with valid padding, from its recipe."""
    kwargs = (version.hyperparameters or {}).get("model_kwargs") or {}
    padding = kwargs.get("padding", "same")
    if role == "primary" and padding != "valid":
        raise ScoringRequestError(
            f"model {version.name} was trained with padding={padding!r}; dense scanning needs"
            ' padding="valid" (train with recipe model_kwargs {"padding": "valid", ...})'
        )


def rescore_all(
    *,
    version: ModelVersion,
    secondary: ModelVersion | None = None,
    trigger: str = ScoringRun.Trigger.MANUAL,
    user=None,
    slides: Iterable[int] | None = None,
    enqueue: bool = True,
) -> ScoringRun:
    """Create a ScoringRun of ``version`` (with ``secondary`` in the cascade, if given) over every
    slide (or the ids in ``slides``), one SlideScoring per slide, and queue one task per slide on
    ``settings.TRAINING_QUEUE`` once the transaction commits."""
    if version.stage != Stage.PRIMARY:
        raise ScoringRequestError(
            f"{version.name} is a {version.stage} model; score with a primary model and pass the"
            " secondary as secondary="
        )
    if secondary is not None and secondary.stage != Stage.SECONDARY:
        raise ScoringRequestError(f"{secondary.name} is not a secondary model")
    _check_scannable(version, role="primary")
    if secondary is not None:
        _check_scannable(secondary, role="secondary")
    # patch models score whole slides; CT, ultrasound and other node images are not scanned
    queryset = Slide.objects.filter(modality=Slide.Modality.SLIDE).order_by("pk")
    if slides is not None:
        wanted = sorted({int(pk) for pk in slides})
        queryset = queryset.filter(pk__in=wanted)
        missing = set(wanted) - set(queryset.values_list("pk", flat=True))
        images = Slide.objects.filter(pk__in=missing).exclude(modality=Slide.Modality.SLIDE)
        if images.exists():
            raise ScoringRequestError(
                f"slides {sorted(images.values_list('pk', flat=True))} are node images (CT,"
                " ultrasound or other), not whole slides: patch models score whole slides only"
            )
        if missing:
            raise ScoringRequestError(f"no slides with ids {sorted(missing)}")
    slide_ids = list(queryset.values_list("pk", flat=True))
    actor = user if user is not None and getattr(user, "is_authenticated", False) else None
    with transaction.atomic():
        run = ScoringRun.objects.create(
            model_version=version,
            secondary_version=secondary,
            threshold=version.threshold,
            trigger=trigger,
            slides_total=len(slide_ids),
            created_by=actor,
        )
        SlideScoring.objects.bulk_create(
            [SlideScoring(scoring_run=run, slide_id=pk) for pk in slide_ids]
        )
        if not slide_ids:
            ScoringRun.objects.filter(pk=run.pk).update(
                status=ScoringRun.Status.SUCCEEDED, finished_at=timezone.now()
            )
        record(
            actor=user,
            action="rescoring queued",
            obj=run,
            model_version=version.pk,
            secondary_version=getattr(secondary, "pk", None),
            trigger=trigger,
            slides=len(slide_ids),
        )
        if enqueue and slide_ids:
            transaction.on_commit(lambda: enqueue_run(run.pk))
    run.refresh_from_db()
    return run


def enqueue_run(run_id: int) -> int:
    """Queue a task for every still-queued slide job of a run; returns how many were sent. If the
    job queue cannot be reached, the slide jobs not sent are failed with that reason (rather than
    left `queued` with no message behind them) and the run finishes failed."""
    from config.queueing import QueueUnavailable, send

    from .tasks import score_slide

    jobs = list(
        SlideScoring.objects.filter(
            scoring_run_id=run_id, status=SlideScoring.Status.QUEUED
        ).values_list("pk", flat=True)
    )
    for sent, pk in enumerate(jobs):
        try:
            send(score_slide, [pk], queue=settings.TRAINING_QUEUE, what=f"slide scoring job {pk}")
        except QueueUnavailable as exc:
            log.error("scoring run %s: %s", run_id, exc)
            with transaction.atomic():
                failed = SlideScoring.objects.filter(
                    pk__in=jobs[sent:], status=SlideScoring.Status.QUEUED
                ).update(status=SlideScoring.Status.FAILED, status_reason=str(exc)[:5000])
                ScoringRun.objects.filter(pk=run_id).update(
                    slides_failed=models.F("slides_failed") + failed
                )
                finish_run_if_complete(ScoringRun.objects.get(pk=run_id))
            return sent
    return len(jobs)


def _live_cascade(
    promoted: ModelVersion | None = None,
) -> tuple[ModelVersion | None, ModelVersion | None]:
    """(primary, secondary) to score with: the live ones, with ``promoted`` in its stage's place."""
    from .jobs import live_model

    primary, secondary = live_model(Stage.PRIMARY), live_model(Stage.SECONDARY)
    if promoted is not None:
        if promoted.stage == Stage.PRIMARY:
            primary = promoted
        else:
            secondary = promoted
    return primary, secondary


def rescore_after_promotion(*, version: ModelVersion, user=None) -> ScoringRun | None:
    """What promotion triggers: rescore every slide with the live cascade. Promoting a primary
    scores with it and the live secondary; promoting a secondary scores the live primary with it.
    Idempotent: an unfinished promotion run of the same cascade is returned instead of a second.
    None (with a warning in the log) when there is no live primary, or it cannot scan densely:
    promotion itself must not fail because of scoring."""
    primary, secondary = _live_cascade(version)
    if primary is None:
        return None
    existing = (
        ScoringRun.objects.filter(
            model_version=primary,
            secondary_version=secondary,
            trigger=ScoringRun.Trigger.PROMOTION,
            status__in=(ScoringRun.Status.QUEUED, ScoringRun.Status.RUNNING),
        )
        .order_by("-created_at", "-id")
        .first()
    )
    if existing is not None:
        return existing
    try:
        return rescore_all(
            version=primary, secondary=secondary, trigger=ScoringRun.Trigger.PROMOTION, user=user
        )
    except ScoringRequestError as exc:
        log.warning("promotion of %s: slides not rescored: %s", version.name, exc)
        return None


def score_imported_slides(*, slides: Iterable[int], user=None) -> ScoringRun | None:
    """What slide import triggers: score the new slides with the live cascade (None, with a
    warning in the log, when there is no live primary or it cannot scan densely)."""
    primary, secondary = _live_cascade()
    if primary is None:
        return None
    try:
        return rescore_all(
            version=primary,
            secondary=secondary,
            trigger=ScoringRun.Trigger.IMPORT,
            user=user,
            slides=slides,
        )
    except ScoringRequestError as exc:
        log.warning("imported slides not scored: %s", exc)
        return None


# ---- one slide -----------------------------------------------------------------------------


def claim_slide_job(job: SlideScoring) -> bool:
    """queued, or running with a stale heartbeat (its worker died) -> running. Exactly one of two
    workers handed the same job wins."""
    now = timezone.now()
    claimable = models.Q(status=SlideScoring.Status.QUEUED) | models.Q(
        status=SlideScoring.Status.RUNNING, heartbeat_at__lt=stale_before()
    )
    won = SlideScoring.objects.filter(claimable, pk=job.pk).update(
        status=SlideScoring.Status.RUNNING,
        status_reason="",
        heartbeat_at=now,
        progress=0.0,
        attempts=models.F("attempts") + 1,
    )
    if won:
        job.refresh_from_db()
    return won == 1


def score_slide_job(
    slide_scoring_id: int,
    *,
    worker: str = "local",
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Score one slide of a run to a final state (the body of the Celery task); returns the job's
    status. Safe to call twice: a finished or freshly claimed job is left alone."""
    from .heatmaps import create_heatmap_row, write_heatmap_file
    from .scoring import Classifier, geometry_for, scan_slide

    job = (
        SlideScoring.objects.select_related(
            "slide", "scoring_run__model_version", "scoring_run__secondary_version"
        )
        .filter(pk=slide_scoring_id)
        .first()
    )
    if job is None:  # the slide (or the run) was deleted after the task was queued
        log.warning("slide scoring job %s no longer exists", slide_scoring_id)
        return "gone"
    if job.status in JOB_FINISHED:
        return job.status
    if not claim_slide_job(job):
        return SlideScoring.objects.get(pk=job.pk).status
    attempt = job.attempts
    run = job.scoring_run
    ScoringRun.objects.filter(pk=run.pk, status=ScoringRun.Status.QUEUED).update(
        status=ScoringRun.Status.RUNNING
    )
    started = time.perf_counter()
    last = [0.0]

    def on_progress(done: int, total: int) -> None:
        now = time.monotonic()
        if progress is not None:
            progress(done, total)
        if now - last[0] < PROGRESS_EVERY_S and done < total:
            return
        last[0] = now
        SlideScoring.objects.filter(
            pk=job.pk, status=SlideScoring.Status.RUNNING, attempts=attempt
        ).update(progress=round(done / max(total, 1), 4), heartbeat_at=timezone.now())

    try:
        primary = Classifier.from_version(run.model_version).to(device)
        secondary = None
        if run.secondary_version is not None:
            secondary = Classifier.from_version(run.secondary_version).to(primary.device)
        geometry = geometry_for(run.model_version)
        result = scan_slide(
            job.slide, primary=primary, secondary=secondary, geometry=geometry, progress=on_progress
        )
        path = write_heatmap_file(
            slide=job.slide,
            scan=result,
            model_version=run.model_version,
            secondary_version=run.secondary_version,
            scoring_run=run,
        )
    except Exception as exc:  # noqa: BLE001 - any failure ends this slide's job with its reason
        log.exception("scoring slide %s in run %s failed", job.slide_id, run.pk)
        _finish_failed(job, attempt=attempt, reason=f"{type(exc).__name__}: {exc}")
        return SlideScoring.objects.get(pk=job.pk).status
    with transaction.atomic():
        won = SlideScoring.objects.filter(
            pk=job.pk, status=SlideScoring.Status.RUNNING, attempts=attempt
        ).update(
            status=SlideScoring.Status.SUCCEEDED,
            progress=1.0,
            heartbeat_at=timezone.now(),
            seconds=time.perf_counter() - started,
            status_reason=f"{worker}: max score {result.max_score:.4f} in {result.seconds:.1f} s",
        )
        if won:
            create_heatmap_row(
                slide=job.slide,
                scan=result,
                path=path,
                model_version=run.model_version,
                secondary_version=run.secondary_version,
                scoring_run=run,
            )
            ScoringRun.objects.filter(pk=run.pk).update(slides_done=models.F("slides_done") + 1)
            score_node_if_complete(run=run, node=job.slide.node)
            finish_run_if_complete(run)
    return SlideScoring.objects.get(pk=job.pk).status


def _finish_failed(job: SlideScoring, *, attempt: int, reason: str) -> None:
    with transaction.atomic():
        won = SlideScoring.objects.filter(
            pk=job.pk, status=SlideScoring.Status.RUNNING, attempts=attempt
        ).update(status=SlideScoring.Status.FAILED, status_reason=reason[:5000])
        if won:
            ScoringRun.objects.filter(pk=job.scoring_run_id).update(
                slides_failed=models.F("slides_failed") + 1
            )
            score_node_if_complete(run=job.scoring_run, node=job.slide.node)
            finish_run_if_complete(job.scoring_run)


def score_node_if_complete(*, run: ScoringRun, node: Node) -> NodeScore | None:
    """Record the node's score once every slide job of the node in this run has finished: the
    maximum over its slides, each slide's heat map from this run or, where this run has none (not
    in the run, or failed), its latest heat map from the same cascade. A node with a slide that
    has no heat map from this cascade stays unscored by it."""
    from .heatmaps import record_node_score

    jobs = SlideScoring.objects.filter(scoring_run=run, slide__node=node)
    if jobs.exclude(status__in=JOB_FINISHED).exists():
        return None
    if NodeScore.objects.filter(scoring_run=run, node=node).exists():
        return None
    heatmaps = []
    whole_slides = Slide.objects.filter(node=node, modality=Slide.Modality.SLIDE)
    for slide_id in whole_slides.values_list("pk", flat=True):
        heatmap = (
            HeatMap.objects.filter(slide_id=slide_id, scoring_run=run).order_by("-id").first()
            or HeatMap.objects.filter(
                slide_id=slide_id,
                model_version=run.model_version,
                secondary_version=run.secondary_version,
            )
            .order_by("-created_at", "-id")
            .first()
        )
        if heatmap is None:
            return None
        heatmaps.append(heatmap)
    if not heatmaps:
        return None
    return record_node_score(
        node=node,
        heatmaps=heatmaps,
        model_version=run.model_version,
        scoring_run=run,
        threshold=run.threshold,
    )


def finish_run_if_complete(run: ScoringRun) -> None:
    """Mark the run succeeded (or failed, if any slide failed) once every slide is finished."""
    fresh = ScoringRun.objects.get(pk=run.pk)
    if fresh.slides_done + fresh.slides_failed < fresh.slides_total:
        return
    ScoringRun.objects.filter(
        pk=run.pk, status__in=(ScoringRun.Status.QUEUED, ScoringRun.Status.RUNNING)
    ).update(
        status=ScoringRun.Status.FAILED if fresh.slides_failed else ScoringRun.Status.SUCCEEDED,
        finished_at=timezone.now(),
    )


def recover_stale_slide_jobs() -> list[int]:
    """Queue again every slide job left `running` by a worker that stopped sending heartbeats,
    and every job still `queued` long after its run began (its message may have died with a
    broker that kept no copy). A second message is harmless: only one worker can claim a job."""
    from .tasks import score_slide

    stale = lost_job_ids(SlideScoring.objects.all(), queued_since="scoring_run__created_at")
    for pk in stale:
        log.warning("slide scoring job %s lost its worker; queueing it again", pk)
        score_slide.apply_async(args=[pk], queue=settings.TRAINING_QUEUE)
    return stale


# ---- progress and changes ------------------------------------------------------------------


def progress_of(run: ScoringRun) -> dict[str, Any]:
    """Slides done / total of a run, and each slide's state and progress."""
    run.refresh_from_db()
    slides = list(
        run.slide_jobs.order_by("slide_id").values(
            "slide_id", "status", "progress", "attempts", "seconds", "status_reason"
        )
    )
    finished = run.slides_done + run.slides_failed
    return {
        "run": run.pk,
        "status": run.status,
        "model_version": run.model_version_id,
        "secondary_version": run.secondary_version_id,
        "slides_done": run.slides_done,
        "slides_failed": run.slides_failed,
        "slides_total": run.slides_total,
        "fraction": round(
            (finished + sum(s["progress"] for s in slides if s["status"] == "running"))
            / max(run.slides_total, 1),
            4,
        ),
        "slides": slides,
    }


@dataclass(frozen=True)
class ScreeningChange:
    """A node whose screening result differs between two runs."""

    node_id: int
    node: str
    case: str
    old_score: float
    new_score: float
    old_positive: bool
    new_positive: bool

    @property
    def direction(self) -> str:
        return "now positive" if self.new_positive else "now negative"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "direction": self.direction}


def _scores_of(run: ScoringRun) -> dict[int, NodeScore]:
    latest: dict[int, NodeScore] = {}
    for score in (
        NodeScore.objects.filter(scoring_run=run)
        .select_related("node__case")
        .order_by("created_at", "id")
    ):
        latest[score.node_id] = score
    return latest


def screening_changes(
    old_run: ScoringRun, new_run: ScoringRun, *, threshold: float | None = None
) -> list[ScreeningChange]:
    """Nodes scored in both runs whose screening result flips, each run at its own threshold
    (or both at ``threshold``). Nodes without a threshold on either side cannot flip."""
    from .heatmaps import screened_positive

    old, new = _scores_of(old_run), _scores_of(new_run)
    changes = []
    for node_id in sorted(old.keys() & new.keys()):
        a, b = old[node_id], new[node_id]
        pa = screened_positive(a.score, threshold if threshold is not None else a.threshold)
        pb = screened_positive(b.score, threshold if threshold is not None else b.threshold)
        if pa is None or pb is None or pa == pb:
            continue
        changes.append(
            ScreeningChange(
                node_id=node_id,
                node=b.node.label,
                case=b.node.case.accession_number,
                old_score=a.score,
                new_score=b.score,
                old_positive=pa,
                new_positive=pb,
            )
        )
    return changes
