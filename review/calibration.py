"""Locking a patch model's threshold from the browser: calibration nodes, their scores, a preview.

The steps an admin takes on a model's page, each a function here (the API and the page call them):

It lives in `review/` because the truth it calibrates against is partly the reviewers' confirmed
decisions; it uses `inference` (model versions, scores, scoring runs), never the other way round.

1. :func:`calibration_nodes`: the nodes to calibrate on. By default the nodes of the validation
   cases of the model's dataset snapshot, else every node of the admin's labs, in both cases only
   those whose truth is known: their ground truth, or else their current confirmed review decision.
   A list of node ids narrows it (always within the admin's labs).
2. :func:`calibration_state`: each node's score by *this* model version (its newest NodeScore of
   any scoring run), and the nodes still missing one.
3. :func:`score_calibration_nodes`: a scoring run of this version over the missing nodes' slides
   (the usual per-slide jobs, with live progress); a model need not be live to be scored.
4. :func:`preview` and :func:`lock`: seed 002's rule (the highest threshold keeping 100%
   sensitivity, or a target sensitivity) with sensitivity, specificity and accuracy and their
   intervals (:mod:`inference.thresholds`), shown before it is locked; a set that cannot calibrate
   (no node, missing scores, one class only) is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet

from inference.records import ModelVersion, NodeScore, ScoringRun, Stage
from inference.thresholds import OperatingPoint, ThresholdError, choose_threshold, lock_threshold
from slides.models import Node, Slide

from .models import ReviewDecision, ReviewStatus

__all__ = [
    "CalibrationError",
    "CalibrationState",
    "calibration_nodes",
    "calibration_state",
    "lock",
    "preview",
    "score_calibration_nodes",
]


class CalibrationError(ValueError):
    """A calibration that cannot go ahead; the message says why (and what to do)."""


@dataclass
class CalibrationNode:
    node: Node
    truth: bool  # True: positive
    truth_source: str  # "ground truth" or "confirmed decision"
    score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node.pk,
            "label": self.node.label,
            "case": self.node.case.accession_number,
            "truth": "positive" if self.truth else "negative",
            "truth_source": self.truth_source,
            "score": self.score,
        }


@dataclass
class CalibrationState:
    version: ModelVersion
    nodes: list[CalibrationNode]
    source: str  # how the nodes were chosen, in words
    running: ScoringRun | None = None  # an unfinished scoring run of this version
    missing: list[CalibrationNode] = field(default_factory=list)

    @property
    def positives(self) -> int:
        return sum(n.truth for n in self.nodes)

    @property
    def negatives(self) -> int:
        return len(self.nodes) - self.positives

    def as_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.version.pk,
            "source": self.source,
            "nodes": [n.as_dict() for n in self.nodes],
            "positives": self.positives,
            "negatives": self.negatives,
            "missing_scores": [n.node.pk for n in self.missing],
            "missing_slides": Slide.objects.filter(
                node__in=[n.node for n in self.missing], modality=Slide.Modality.SLIDE
            ).count(),
            "scoring_run": self.running.pk if self.running else None,
            "locked": self.version.threshold,
        }


def _check_version(version: ModelVersion) -> None:
    if version.stage != Stage.PRIMARY:
        raise CalibrationError(
            f"{version.name} is a {version.stage} model: node thresholds belong to the primary "
            "(patch) model that scores the nodes"
        )
    if (version.dataset_summary or {}).get("kind") == "node-images":
        raise CalibrationError(
            f"{version.name} classifies node images; its operating point is set on its own page"
        )


def _truths(nodes: QuerySet[Node]) -> dict[int, tuple[bool, str]]:
    """{node id: (positive?, where the truth comes from)} for nodes whose truth is known."""
    out: dict[int, tuple[bool, str]] = {}
    for pk, truth in nodes.exclude(ground_truth=Node.GroundTruth.UNKNOWN).values_list(
        "pk", "ground_truth"
    ):
        out[pk] = (truth == Node.GroundTruth.POSITIVE, "ground truth")
    latest: dict[int, str] = {}
    for node_id, status in (
        ReviewDecision.objects.filter(node__in=nodes)
        .order_by("node_id", "id")
        .values_list("node_id", "status")
    ):
        latest[node_id] = status  # ordered by id: the last one wins
    for node_id, status in latest.items():
        if node_id in out:
            continue
        if status == ReviewStatus.CONFIRMED_POSITIVE:
            out[node_id] = (True, "confirmed decision")
        elif status == ReviewStatus.CONFIRMED_NEGATIVE:
            out[node_id] = (False, "confirmed decision")
    return out


def _validation_case_ids(version: ModelVersion) -> list[int] | None:
    """The validation cases of the model's dataset snapshot (None when it was not trained on one)."""
    from annotations.models import Dataset

    source = version.training_run.dataset_source or {}
    if source.get("kind") != "snapshot":
        return None
    snapshot = Dataset.objects.filter(pk=source.get("id")).first()
    if snapshot is None:
        return None
    return [c["id"] for c in snapshot.split_cases("val")]


def calibration_nodes(
    *, version: ModelVersion, visible: QuerySet[Node], node_ids: Iterable[int] | None = None
) -> tuple[list[CalibrationNode], str]:
    """The calibration nodes among ``visible`` (the user's nodes) and how they were chosen."""
    _check_version(version)
    nodes = visible.select_related("case")
    if node_ids is not None:
        wanted = sorted({int(pk) for pk in node_ids})
        nodes = nodes.filter(pk__in=wanted)
        unknown = set(wanted) - set(nodes.values_list("pk", flat=True))
        if unknown:
            raise CalibrationError(f"no nodes with ids {sorted(unknown)} in your labs")
        source = f"{len(wanted)} chosen nodes"
    else:
        val_cases = _validation_case_ids(version)
        if val_cases:
            nodes = nodes.filter(case_id__in=val_cases)
            source = "the validation cases of the model's dataset snapshot"
        else:
            source = "every node of your labs (the model was not trained on a snapshot)"
    truths = _truths(nodes)
    chosen = [
        CalibrationNode(node=n, truth=truths[n.pk][0], truth_source=truths[n.pk][1])
        for n in nodes.filter(pk__in=list(truths)).order_by("case__accession_number", "label")
    ]
    if node_ids is not None and len(chosen) < len(set(node_ids)):
        no_truth = sorted(set(node_ids) - {c.node.pk for c in chosen})
        raise CalibrationError(
            f"nodes {no_truth} have neither a ground truth nor a confirmed decision; "
            "a threshold is calibrated on nodes whose truth is known"
        )
    return chosen, source


def calibration_state(
    *, version: ModelVersion, visible: QuerySet[Node], node_ids: Iterable[int] | None = None
) -> CalibrationState:
    """The calibration nodes with this version's newest score of each."""
    chosen, source = calibration_nodes(version=version, visible=visible, node_ids=node_ids)
    newest: dict[int, float] = {}
    for node_id, score in (
        NodeScore.objects.filter(model_version=version, node__in=[c.node for c in chosen])
        .order_by("node_id", "created_at", "id")
        .values_list("node_id", "score")
    ):
        newest[node_id] = score
    for c in chosen:
        c.score = newest.get(c.node.pk)
    running = (
        ScoringRun.objects.filter(
            model_version=version,
            status__in=(ScoringRun.Status.QUEUED, ScoringRun.Status.RUNNING),
        )
        .order_by("-created_at", "-id")
        .first()
    )
    return CalibrationState(
        version=version,
        nodes=chosen,
        source=source,
        running=running,
        missing=[c for c in chosen if c.score is None],
    )


def score_calibration_nodes(*, state: CalibrationState, user) -> ScoringRun:
    """Score the calibration nodes that have no score of this version yet (a scoring run over
    their slides); an unfinished run of this version is returned instead of a second one."""
    from inference.rescoring import ScoringRequestError, rescore_all

    if state.running is not None:
        return state.running
    if not state.missing:
        raise CalibrationError("every calibration node already has a score of this model")
    slides = list(
        Slide.objects.filter(
            node__in=[c.node for c in state.missing], modality=Slide.Modality.SLIDE
        ).values_list("pk", flat=True)
    )
    if not slides:
        raise CalibrationError("the calibration nodes without a score have no whole slides to scan")
    try:
        return rescore_all(
            version=state.version, trigger=ScoringRun.Trigger.MANUAL, user=user, slides=slides
        )
    except ScoringRequestError as exc:
        raise CalibrationError(str(exc)) from exc


def _scores_and_truths(state: CalibrationState) -> tuple[dict[int, float], dict[int, bool]]:
    if not state.nodes:
        raise CalibrationError(
            f"no calibration nodes: {state.source} hold no node with a ground truth or a "
            "confirmed decision; record the truth of some nodes (or confirm them in review) first"
        )
    if state.missing:
        raise CalibrationError(
            f"{len(state.missing)} of {len(state.nodes)} calibration nodes have no score of "
            f"{state.version.name} yet; score them first"
        )
    if not state.positives or not state.negatives:
        have = "positive" if state.positives else "negative"
        lack = "negative" if state.positives else "positive"
        raise CalibrationError(
            f"all {len(state.nodes)} calibration nodes are {have}: a threshold needs both "
            f"positive and negative nodes; add {lack} nodes"
        )
    scores = {c.node.pk: float(c.score) for c in state.nodes}
    truths = {c.node.pk: c.truth for c in state.nodes}
    return scores, truths


def preview(*, state: CalibrationState, target_sensitivity: float = 1.0) -> OperatingPoint:
    """The threshold seed 002's rule would lock, with its figures and intervals; nothing saved."""
    scores, truths = _scores_and_truths(state)
    try:
        return choose_threshold(scores, truths, target_sensitivity=target_sensitivity)
    except ThresholdError as exc:
        raise CalibrationError(str(exc)) from exc


def lock(
    *,
    state: CalibrationState,
    user,
    target_sensitivity: float = 1.0,
    replace: bool = False,
) -> OperatingPoint:
    """Lock the previewed threshold on the model version (audited as "threshold locked")."""
    scores, truths = _scores_and_truths(state)
    try:
        return lock_threshold(
            version=state.version,
            node_scores=scores,
            truths=truths,
            target_sensitivity=target_sensitivity,
            user=user,
            replace=replace,
            source={
                "chosen": state.source,
                "nodes": sorted(scores),
                "truth_sources": sorted({c.truth_source for c in state.nodes}),
            },
        )
    except ThresholdError as exc:
        raise CalibrationError(str(exc)) from exc
