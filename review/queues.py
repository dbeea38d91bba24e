"""Reading the review state: live scores per node, high-scoring regions, a case's queue, triage.

Which score counts: a node's latest NodeScore of the live primary model (by creation time, then
id), so rescoring after a promotion, or mid-review, reorders a queue by the newest score. Nodes
the live model has not scored are "not scored" and come last. The threshold is the one the score
was made at, or else the model version's locked threshold.

A region is a place on a slide to open in the viewer: the node score's maximum location and the
maximum of each of the node's heat maps from the same scoring, plus whatever the functions in
`REGION_PROVIDERS` add (the heat-map region API, when it exists). A region at or above the
threshold is *required*: the safety rule wants each one opened before a negative confirmation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import (
    BigIntegerField,
    CharField,
    Count,
    F,
    FloatField,
    OuterRef,
    Prefetch,
    QuerySet,
    Subquery,
    Value,
    Window,
)
from django.db.models.functions import Coalesce, FirstValue
from django.urls import reverse

from inference.records import HeatMap, ModelVersion, NodeScore, Stage
from slides.models import Case, Node, Slide

from .models import ReviewDecision, ReviewStatus, ViewedRegion

#: Objective magnification a region opens at in the viewer; the viewer's `zoom` parameter is in
#: screen pixels per level-0 pixel, so it is this divided by the slide's level-0 magnification.
VIEWER_MAGNIFICATION = getattr(settings, "REVIEW_VIEWER_MAGNIFICATION", 20.0)
#: `zoom` for a slide whose magnification and µm per pixel are unknown (the viewer's own default).
DEFAULT_VIEWER_ZOOM = 0.5
#: Side (level-0 px) of the square a region stands for when no heat-map window gives one. A
#: region with a heat map is a square of twice its classifier window around its centre: what
#: the viewer must show for it to count as viewed, and what a "not tumour" correction saves.
DEFAULT_REGION_PX = 256.0


def region_side(window_px: float | None) -> float:
    """Side of a region's square: twice the heat map's classifier window, else the default."""
    return 2 * window_px if window_px else DEFAULT_REGION_PX


def viewer_zoom(*, magnification: float | None, mpp: float | None) -> float:
    """Screen px per level-0 px that shows a slide at VIEWER_MAGNIFICATION (10x = 1 µm/px)."""
    base = magnification or (10.0 / mpp if mpp else None)
    if not base or not math.isfinite(base) or base <= 0:
        return DEFAULT_VIEWER_ZOOM
    return round(min(max(VIEWER_MAGNIFICATION / base, 0.01), 2.0), 4)


# ---- scores -------------------------------------------------------------------------------------


def live_primary() -> ModelVersion | None:
    """The live primary model version, if one is promoted."""
    return ModelVersion.objects.filter(stage=Stage.PRIMARY, is_live=True).first()


def effective_threshold(score: NodeScore | None, version: ModelVersion | None) -> float | None:
    """The threshold a score is judged at: its own, else its model version's."""
    if score is not None and score.threshold is not None:
        return score.threshold
    return version.threshold if version is not None else None


def screening(score: float | None, threshold: float | None) -> str:
    """ "positive" (at or above the threshold), "negative", "no threshold" or "not scored"."""
    if score is None:
        return "not scored"
    if threshold is None:
        return "no threshold"
    return "positive" if score >= threshold else "negative"


def latest_score(node: Node, version: ModelVersion | None) -> NodeScore | None:
    if version is None:
        return None
    return (
        NodeScore.objects.filter(node=node, model_version=version)
        .select_related("max_heatmap")
        .order_by("-created_at", "-id")
        .first()
    )


def latest_decision(node: Node) -> ReviewDecision | None:
    return ReviewDecision.objects.filter(node=node).order_by("-id").first()


def with_review_state(nodes: QuerySet[Node], *, version: ModelVersion | None) -> QuerySet[Node]:
    """Annotate nodes with their latest score of `version` (`rv_score_id`, `rv_score`,
    `rv_threshold`) and their current decision (`rv_decision_id`, `rv_status`)."""
    if version is None:
        nodes = nodes.annotate(
            rv_score_id=Value(None, output_field=BigIntegerField()),
            rv_score=Value(None, output_field=FloatField()),
            rv_threshold=Value(None, output_field=FloatField()),
        )
    else:
        latest = NodeScore.objects.filter(node=OuterRef("pk"), model_version=version).order_by(
            "-created_at", "-id"
        )
        nodes = nodes.annotate(
            rv_score_id=Subquery(latest.values("id")[:1]),
            rv_score=Subquery(latest.values("score")[:1]),
            rv_threshold=Coalesce(
                Subquery(latest.values("threshold")[:1]),
                Value(version.threshold, output_field=FloatField()),
            ),
        )
    decisions = ReviewDecision.objects.filter(node=OuterRef("pk")).order_by("-id")
    return nodes.annotate(
        rv_decision_id=Subquery(decisions.values("id")[:1]),
        rv_status=Coalesce(
            Subquery(decisions.values("status")[:1]),
            Value(ReviewStatus.UNREVIEWED, output_field=CharField()),
        ),
    )


def queue_order(nodes: QuerySet[Node]) -> QuerySet[Node]:
    """Highest score first, unscored last, ties by node label (then id, for a total order)."""
    return nodes.order_by(F("rv_score").desc(nulls_last=True), "label", "id")


# ---- regions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """A place to open in the viewer. `required`: at or above the threshold."""

    key: str
    slide_id: int | None
    heatmap_id: int | None
    x: float | None
    y: float | None
    score: float
    required: bool
    zoom: float = DEFAULT_VIEWER_ZOOM
    size_px: float = DEFAULT_REGION_PX

    def viewer_url(self, *, node_id: int) -> str | None:
        return viewer_url(
            self.slide_id,
            x=self.x,
            y=self.y,
            zoom=self.zoom,
            node_id=node_id,
            region=self.key,
            heatmap_id=self.heatmap_id,
            review=True,
        )

    def box(self, *, width: float, height: float) -> tuple[float, float, float, float] | None:
        """The region's square (x0, y0, x1, y1) in level-0 px, clipped to a slide of this size;
        None for a region without a location (the node's slide as a whole)."""
        if self.x is None or self.y is None:
            return None
        half = self.size_px / 2
        return (
            max(0.0, self.x - half),
            max(0.0, self.y - half),
            min(float(width), self.x + half),
            min(float(height), self.y + half),
        )

    def as_dict(self) -> dict:
        return {
            "key": self.key,
            "slide": self.slide_id,
            "heatmap": self.heatmap_id,
            "x": self.x,
            "y": self.y,
            "score": self.score,
            "required": self.required,
        }


#: Extra region sources: callables (node_score, threshold) -> iterable of Region.
REGION_PROVIDERS: list[Callable[[NodeScore, float | None], Iterable[Region]]] = []


def region_key(*, heatmap_id: int | None, score_id: int, x: float | None, y: float | None) -> str:
    base = f"hm{heatmap_id}" if heatmap_id else f"ns{score_id}"
    if x is None or y is None:
        return base
    return f"{base}@{round(x)},{round(y)}"


def _at_or_above(value: float, threshold: float | None) -> bool:
    return threshold is not None and value >= threshold


def _required(value: float, threshold: float | None) -> bool:
    """Whether the safety rule wants a region of this score opened before a negative
    confirmation: at or above the threshold, and every region when there is no threshold (without
    one nothing is negative-screened, so the rule never turns itself off)."""
    return threshold is None or value >= threshold


def slide_regions(slides: Iterable[Slide]) -> list[Region]:
    """The regions of a node the live model has not scored (no live model, no score yet, or only
    scores of an older model): each of its slides as a whole, all required. Nothing then says
    where tumour would be, so the person deciding opens every slide (zoomed in) before a negative
    confirmation."""
    regions = []
    for slide in slides:
        regions.append(
            Region(
                f"sl{slide.pk}",
                slide.pk,
                None,
                None,
                None,
                0.0,
                True,
                zoom=viewer_zoom(magnification=slide.magnification, mpp=slide.mpp),
            )
        )
    return regions


def review_regions(node: Node, score: NodeScore | None, threshold: float | None) -> list[Region]:
    """The regions the safety rule asks about for `node`: its score's (:func:`regions_for`), or
    each of its slides when the live model has not scored it (:func:`slide_regions`)."""
    if score is not None:
        return regions_for(score, threshold=threshold)
    return slide_regions(node.slides.order_by("name", "id"))


def regions_for_scores(
    scores: Sequence[NodeScore], *, thresholds: dict[int, float | None]
) -> dict[int, list[Region]]:
    """Regions of each score's node ({node id: regions, highest first}); one heat-map query."""
    if not scores:
        return {}
    by_node = {s.node_id: s for s in scores}
    heatmaps = (
        HeatMap.objects.filter(slide__node_id__in=list(by_node))
        .filter(model_version_id__in={s.model_version_id for s in scores})
        .values(
            "id",
            "slide_id",
            "slide__node_id",
            "model_version_id",
            "scoring_run_id",
            "max_score",
            "max_x",
            "max_y",
            "window_px",
        )
        .order_by("-created_at", "-id")
    )
    maps: dict[int, dict[int, dict]] = {}  # node -> slide -> newest heat map of that scoring
    for hm in heatmaps:
        score = by_node[hm["slide__node_id"]]
        if hm["model_version_id"] != score.model_version_id:
            continue
        if score.scoring_run_id and hm["scoring_run_id"] != score.scoring_run_id:
            continue
        maps.setdefault(score.node_id, {}).setdefault(hm["slide_id"], hm)
    first_slides: dict[int, int] = {}
    zooms: dict[int, float] = {}
    for node_id, slide_id, magnification, mpp_x, mpp_y in (
        Slide.objects.filter(node_id__in=list(by_node))
        .order_by("node_id", "name", "id")
        .values_list("node_id", "id", "magnification", "mpp_x", "mpp_y")
    ):
        first_slides.setdefault(node_id, slide_id)
        mpp = (mpp_x + mpp_y) / 2 if mpp_x and mpp_y else (mpp_x or mpp_y)
        zooms[slide_id] = viewer_zoom(magnification=magnification, mpp=mpp)
    out: dict[int, list[Region]] = {}
    for node_id, score in by_node.items():
        threshold = thresholds.get(node_id)
        regions: dict[str, Region] = {}
        if score.max_x is not None and score.max_y is not None:
            hm_id = score.max_heatmap_id
            max_slide = score.max_heatmap.slide_id if hm_id else first_slides.get(node_id)
            key = region_key(heatmap_id=hm_id, score_id=score.pk, x=score.max_x, y=score.max_y)
            regions[key] = Region(
                key,
                max_slide,
                hm_id,
                score.max_x,
                score.max_y,
                score.score,
                _required(score.score, threshold),
                size_px=region_side(score.max_heatmap.window_px if hm_id else None),
            )
        for slide_id, hm in maps.get(node_id, {}).items():
            if hm["id"] == score.max_heatmap_id and regions:
                continue  # the node's maximum is this heat map's maximum, listed above
            key = region_key(heatmap_id=hm["id"], score_id=score.pk, x=hm["max_x"], y=hm["max_y"])
            regions.setdefault(
                key,
                Region(
                    key,
                    slide_id,
                    hm["id"],
                    hm["max_x"],
                    hm["max_y"],
                    hm["max_score"],
                    _required(hm["max_score"], threshold),
                    size_px=region_side(hm["window_px"]),
                ),
            )
        for provider in REGION_PROVIDERS:
            for region in provider(score, threshold):
                regions.setdefault(region.key, region)
        if not any(r.required for r in regions.values()) and _required(score.score, threshold):
            # Screened positive with nowhere to point at: opening the node's slide is the region.
            key = region_key(heatmap_id=None, score_id=score.pk, x=None, y=None)
            regions[key] = Region(
                key, first_slides.get(node_id), None, None, None, score.score, True
            )
        out[node_id] = sorted(
            (
                replace(r, zoom=zooms.get(r.slide_id, DEFAULT_VIEWER_ZOOM)) if r.slide_id else r
                for r in regions.values()
            ),
            key=lambda r: (-r.score, r.key),
        )
    return out


def regions_for(score: NodeScore | None, *, threshold: float | None) -> list[Region]:
    if score is None:
        return []
    return regions_for_scores([score], thresholds={score.node_id: threshold})[score.node_id]


def viewed_keys(*, node_ids: Iterable[int], user) -> dict[int, set[str]]:
    """{node id: region keys this user has opened}."""
    out: dict[int, set[str]] = {}
    rows = ViewedRegion.objects.filter(node_id__in=list(node_ids), user=user).values_list(
        "node_id", "region_key"
    )
    for node_id, key in rows:
        out.setdefault(node_id, set()).add(key)
    return out


def viewer_url(
    slide_id: int | None,
    *,
    x: float | None = None,
    y: float | None = None,
    zoom: float = DEFAULT_VIEWER_ZOOM,
    node_id: int | None = None,
    region: str | None = None,
    heatmap_id: int | None = None,
    review: bool = False,
) -> str | None:
    """The viewer at a place. With `review` (and a node): the review viewer,
    `/review/nodes/<node>/slides/<slide>/view/?x=&y=&zoom=&heatmap=&region=`, the slide viewer
    plus the review bar that reports the regions shown and saves "not tumour" corrections; else
    the slide viewer, `/slides/<slide>/view/?x=&y=&zoom=&heatmap=&node=&region=`.

    x, y: level-0 pixels of the centre; zoom: screen pixels per level-0 pixel; `heatmap`: the id
    of the heat map to overlay (without it the viewer overlays the slide's latest heat map of
    the live model). The overlay is on when the viewer opens.
    """
    if slide_id is None:
        return None
    params: dict[str, object] = {}
    if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
        params.update(x=round(x), y=round(y), zoom=zoom)
    if heatmap_id:
        params["heatmap"] = heatmap_id
    if review and node_id is not None:
        path = reverse("review-viewer", args=[node_id, slide_id])
    else:
        path = reverse("slide-viewer", args=[slide_id])
        if node_id is not None:
            params["node"] = node_id
    if region:
        params["region"] = region
    return f"{path}?{urlencode(params)}" if params else path


# ---- a case's queue -----------------------------------------------------------------------------


@dataclass
class QueueRow:
    """One node of a case's queue, with everything the page and the API show."""

    node: Node
    position: int
    score: NodeScore | None
    threshold: float | None
    decision: ReviewDecision | None
    slide: Slide | None
    regions: list[Region] = field(default_factory=list)
    viewed: set[str] = field(default_factory=set)

    @property
    def screened(self) -> str:
        return screening(self.score.score if self.score else None, self.threshold)

    @property
    def status(self) -> str:
        return self.decision.status if self.decision else ReviewStatus.UNREVIEWED

    @property
    def status_label(self) -> str:
        return ReviewStatus(self.status).label

    @property
    def required_regions(self) -> list[Region]:
        return [r for r in self.regions if r.required]

    @property
    def unviewed_required(self) -> list[Region]:
        return [r for r in self.required_regions if r.key not in self.viewed]

    @property
    def viewed_required_count(self) -> int:
        return sum(1 for r in self.required_regions if r.key in self.viewed)

    @property
    def viewer_url(self) -> str | None:
        """The viewer at the node's highest-scoring region (or its first slide)."""
        if self.regions and self.regions[0].slide_id:
            return self.regions[0].viewer_url(node_id=self.node.pk)
        return viewer_url(self.slide.pk if self.slide else None, node_id=self.node.pk, review=True)

    @property
    def score_percent(self) -> float | None:
        return None if self.score is None else round(100 * min(max(self.score.score, 0.0), 1.0), 1)

    @property
    def threshold_percent(self) -> float | None:
        return (
            None if self.threshold is None else round(100 * min(max(self.threshold, 0.0), 1.0), 1)
        )


def build_rows(
    nodes: QuerySet[Node], *, version: ModelVersion | None, user, regions: bool = True
) -> list[QueueRow]:
    """Queue rows for annotated, ordered nodes: scores, decisions and slides in a few queries."""
    nodes = list(
        nodes.prefetch_related(Prefetch("slides", queryset=Slide.objects.order_by("name", "id")))
    )
    score_ids = [n.rv_score_id for n in nodes if n.rv_score_id]
    decision_ids = [n.rv_decision_id for n in nodes if n.rv_decision_id]
    scores = NodeScore.objects.select_related("max_heatmap").in_bulk(score_ids)
    decisions = ReviewDecision.objects.select_related("model_version").in_bulk(decision_ids)
    region_map: dict[int, list[Region]] = {}
    if regions and scores:
        region_map = regions_for_scores(
            list(scores.values()), thresholds={n.pk: n.rv_threshold for n in nodes}
        )
    seen = viewed_keys(node_ids=[n.pk for n in nodes], user=user) if regions else {}
    rows = []
    for i, node in enumerate(nodes, start=1):
        slides = list(node.slides.all())
        node_regions = (
            region_map.get(node.pk, [])
            if node.rv_score_id
            else (slide_regions(slides) if regions else [])
        )
        slide = next((s for s in slides if node_regions and s.pk == node_regions[0].slide_id), None)
        rows.append(
            QueueRow(
                node=node,
                position=i,
                score=scores.get(node.rv_score_id) if node.rv_score_id else None,
                threshold=node.rv_threshold
                if node.rv_score_id
                else effective_threshold(None, version),
                decision=decisions.get(node.rv_decision_id) if node.rv_decision_id else None,
                slide=slide or (slides[0] if slides else None),
                regions=node_regions,
                viewed=seen.get(node.pk, set()),
            )
        )
    return rows


def case_queue(*, case: Case, user) -> tuple[ModelVersion | None, list[QueueRow]]:
    """A case's nodes by predicted positivity (live primary model), unscored last."""
    version = live_primary()
    nodes = queue_order(with_review_state(case.nodes.all(), version=version))
    return version, build_rows(nodes, version=version, user=user)


# ---- triage -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TriageFilter:
    lab_ids: tuple[int, ...] | None = None
    date_from: date | None = None
    date_to: date | None = None
    version: ModelVersion | None = None
    status: str = ReviewStatus.UNREVIEWED  # or "any"


def triage_nodes(
    nodes: QuerySet[Node], *, version: ModelVersion | None, filters: TriageFilter
) -> QuerySet[Node]:
    """Negative-screened nodes of open cases, oldest case first (positive-screened go to pathologists).

    The filters are two uncorrelated subqueries that PostgreSQL runs once each and hashes: the
    nodes whose latest score of `version` is below its threshold, and the nodes whose current
    status (latest decision; none: unreviewed) is another than the one asked for. Correlated
    per-node subqueries ran twice per node of every open case (and misled the planner, which
    cannot see into them, into nested loops): 0.26 s a page on 10,000 nodes, against a few
    milliseconds now. Fetch a page with `triage_page`, which annotates just the nodes shown.
    """
    if version is None:
        return nodes.none()
    nodes = nodes.filter(case__status=Case.Status.OPEN)
    if filters.lab_ids is not None:
        nodes = nodes.filter(case__lab_id__in=filters.lab_ids)
    if filters.date_from:
        nodes = nodes.filter(case__created_at__date__gte=filters.date_from)
    if filters.date_to:
        nodes = nodes.filter(case__created_at__date__lte=filters.date_to)
    nodes = nodes.filter(pk__in=negative_screened_node_ids(version))
    if filters.status != "any":
        elsewhere = node_ids_with_current_status(exclude=filters.status)
        if filters.status == ReviewStatus.UNREVIEWED:
            # Unreviewed: no decision, or a latest decision that says unreviewed.
            nodes = nodes.exclude(pk__in=elsewhere)
        else:
            nodes = nodes.filter(pk__in=node_ids_with_current_status(only=filters.status))
    return nodes.order_by("case__created_at", "case_id", "label", "id")


def negative_screened_node_ids(version: ModelVersion) -> QuerySet:
    """Node ids whose latest score of `version` is below its threshold (a subquery, not run)."""
    newest_first = [F("created_at").desc(), F("id").desc()]
    threshold = Coalesce(F("threshold"), Value(version.threshold, output_field=FloatField()))
    # Every score row carries the margin of its node's latest score (a window), so the `< 0`
    # test applies to the latest score (a plain filter would pick the latest negative score).
    # No `row_number() = 1` filter: IN ignores the repeats, and PostgreSQL would guess that an
    # equality keeps 1 row in 200 and plan nested loops for what are thousands of nodes.
    return (
        NodeScore.objects.filter(model_version=version)
        .annotate(
            rv_latest_margin=Window(
                FirstValue(F("score") - threshold),
                partition_by=[F("node_id")],
                order_by=newest_first,
            ),
        )
        .filter(rv_latest_margin__lt=0)
        .values("node_id")
    )


def node_ids_with_current_status(
    *, only: str | None = None, exclude: str | None = None
) -> QuerySet:
    """Node ids whose latest decision's status is `only` (or is not `exclude`); a subquery."""
    latest = ReviewDecision.objects.annotate(
        rv_latest_status=Window(
            FirstValue("status"), partition_by=[F("node_id")], order_by=[F("id").desc()]
        ),
    )
    if only is not None:
        latest = latest.filter(rv_latest_status=only)
    if exclude is not None:
        latest = latest.exclude(rv_latest_status=exclude)
    return latest.values("node_id")


def triage_ids(nodes: QuerySet[Node], *, offset: int, limit: int) -> tuple[list[int], int]:
    """One page of `triage_nodes` (node ids in order) and the total, in one query.

    The total rides along as `count(*) over ()`, so the filters run once per request rather
    than once for the page and once more for a separate COUNT. A page past the end has no row
    to carry it: then a COUNT asks (only then).
    """
    rows = list(
        nodes.annotate(rv_total=Window(Count("pk"))).values_list("pk", "rv_total")[
            offset : offset + limit
        ]
    )
    if rows:
        return [pk for pk, _ in rows], rows[0][1]
    return [], (nodes.count() if offset else 0)


def triage_page(ids: Sequence[int], *, version: ModelVersion | None) -> list[Node]:
    """The nodes of one triage page (ids in list order), with their review state and case."""
    rows = with_review_state(Node.objects.filter(pk__in=list(ids)), version=version).select_related(
        "case__lab"
    )
    by_id = {n.pk: n for n in rows}
    return [by_id[i] for i in ids if i in by_id]
