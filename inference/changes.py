"""What changed between two scoring runs: the nodes whose screening result flips.

A scoring run (for example the rescoring that promoting a model triggers) is compared with an
earlier run - by default the latest *completed* (succeeded) run created before it that scored any
of the same nodes, or a run the user picks. Every node scored by both runs is compared, each side
at the threshold stamped on its own NodeScore (the model version's locked threshold at the time),
or both at one threshold the user gives. A node flips when it was screened negative and is now
positive, or the other way round; a node without a threshold on either side cannot flip and is
counted apart.

Only the nodes the caller passes (``nodes``: the user's labs, through
:func:`slides.access.nodes_for`) are looked at, so the counts never reveal another lab's nodes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from django.db.models import Q, QuerySet

from slides.models import Node

from .heatmaps import screened_positive
from .records import NodeScore, ScoringRun

Direction = Literal["now-positive", "now-negative"]
DIRECTIONS: tuple[str, ...] = ("now-positive", "now-negative")


class ComparisonError(ValueError):
    """Two runs that cannot be compared (the same run twice), with the reason."""


@dataclass(frozen=True)
class NodeChange:
    """One node whose screening result differs between the earlier run and this one."""

    node_id: int
    node: str
    case_id: int
    case: str
    old_score: float
    new_score: float
    old_threshold: float | None
    new_threshold: float | None
    old_model_version: str
    new_model_version: str
    old_model_version_id: int
    new_model_version_id: int
    old_positive: bool
    new_positive: bool
    slide_id: int | None = None
    max_x: float | None = None
    max_y: float | None = None

    @property
    def direction(self) -> Direction:
        return "now-positive" if self.new_positive else "now-negative"

    @property
    def direction_label(self) -> str:
        return "negative → positive" if self.new_positive else "positive → negative"

    @property
    def queue_url(self) -> str:
        """The case's queue page, scrolled to the node."""
        from review.views import queue_page_url

        return f"{queue_page_url(self.case_id)}#node-{self.node_id}"

    @property
    def viewer_url(self) -> str | None:
        """The viewer at the node's highest-scoring region of the newer run (None without a
        slide)."""
        from review.queues import viewer_url

        return viewer_url(self.slide_id, x=self.max_x, y=self.max_y, node_id=self.node_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "direction": self.direction,
            "queue_url": self.queue_url,
            "viewer_url": self.viewer_url,
        }


@dataclass
class RunComparison:
    """The outcome of comparing ``run`` with the earlier run ``against`` over some nodes."""

    run: ScoringRun
    against: ScoringRun | None
    threshold: float | None = None  # one threshold for both sides, or None: each its own
    compared: int = 0  # nodes scored in both runs
    now_positive: int = 0
    now_negative: int = 0
    unchanged: int = 0
    without_threshold: int = 0  # scored in both, but a side has no threshold: cannot flip
    only_in_run: int = 0  # scored in this run, not in the earlier one
    changes: list[NodeChange] = field(default_factory=list)

    @property
    def flipped(self) -> int:
        return self.now_positive + self.now_negative

    def counts(self) -> dict[str, int]:
        return {
            "compared": self.compared,
            "flipped": self.flipped,
            "now_positive": self.now_positive,
            "now_negative": self.now_negative,
            "unchanged": self.unchanged,
            "without_threshold": self.without_threshold,
            "only_in_run": self.only_in_run,
        }


def earlier_runs(run: ScoringRun) -> QuerySet[ScoringRun]:
    """Runs created before ``run`` (ties broken by id), latest first."""
    before = Q(created_at__lt=run.created_at) | Q(created_at=run.created_at, pk__lt=run.pk)
    return (
        ScoringRun.objects.filter(before)
        .exclude(pk=run.pk)
        .select_related("model_version", "secondary_version")
        .order_by("-created_at", "-id")
    )


def previous_completed_run(run: ScoringRun) -> ScoringRun | None:
    """The latest succeeded run created before ``run`` that scored any node ``run`` scored."""
    scored = NodeScore.objects.filter(scoring_run=run).values("node_id")
    candidates = earlier_runs(run).filter(status=ScoringRun.Status.SUCCEEDED)
    for candidate in candidates.filter(node_scores__node_id__in=scored).distinct()[:1]:
        return candidate
    return None


def _latest_scores(run: ScoringRun, nodes: QuerySet[Node]) -> dict[int, NodeScore]:
    """The run's score of each node in ``nodes`` (its latest, should a node have two)."""
    latest: dict[int, NodeScore] = {}
    rows = (
        NodeScore.objects.filter(scoring_run=run, node__in=nodes)
        .select_related("node__case", "model_version", "max_heatmap")
        .order_by("created_at", "id")
    )
    for score in rows:
        latest[score.node_id] = score
    return latest


def compare_runs(
    *,
    run: ScoringRun,
    against: ScoringRun | None,
    nodes: QuerySet[Node],
    threshold: float | None = None,
    direction: Direction | None = None,
) -> RunComparison:
    """Compare ``run`` with the earlier run ``against`` over ``nodes`` (the user's visible nodes).
    ``threshold``: one threshold for both runs instead of each score's own. ``direction`` keeps
    only the changes of one direction in ``changes`` (the counts always cover both). Changes are
    listed by case accession, then node label."""
    if against is not None and against.pk == run.pk:
        raise ComparisonError(f"scoring run {run.pk} cannot be compared with itself")
    if direction is not None and direction not in DIRECTIONS:
        raise ComparisonError(f"direction must be one of {', '.join(DIRECTIONS)}")
    out = RunComparison(run=run, against=against, threshold=threshold)
    new = _latest_scores(run, nodes)
    if against is None:
        out.only_in_run = len(new)
        return out
    old = _latest_scores(against, nodes)
    out.only_in_run = len(new.keys() - old.keys())
    for node_id in new.keys() & old.keys():
        a, b = old[node_id], new[node_id]
        old_threshold = a.threshold if threshold is None else threshold
        new_threshold = b.threshold if threshold is None else threshold
        was, now = (
            screened_positive(a.score, old_threshold),
            screened_positive(b.score, new_threshold),
        )
        out.compared += 1
        if was is None or now is None:
            out.without_threshold += 1
            continue
        if was == now:
            out.unchanged += 1
            continue
        if now:
            out.now_positive += 1
        else:
            out.now_negative += 1
        change = NodeChange(
            node_id=node_id,
            node=b.node.label,
            case_id=b.node.case_id,
            case=b.node.case.accession_number,
            old_score=a.score,
            new_score=b.score,
            old_threshold=old_threshold,
            new_threshold=new_threshold,
            old_model_version=a.model_version.name,
            new_model_version=b.model_version.name,
            old_model_version_id=a.model_version_id,
            new_model_version_id=b.model_version_id,
            old_positive=was,
            new_positive=now,
            slide_id=b.max_heatmap.slide_id if b.max_heatmap_id else None,
            max_x=b.max_x,
            max_y=b.max_y,
        )
        if direction is None or change.direction == direction:
            out.changes.append(change)
    out.changes.sort(key=lambda c: (c.case, c.node, c.node_id))
    return out
