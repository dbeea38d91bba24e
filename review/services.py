"""Review workflows: deciding a node, recording viewed regions, corrections, sign-off, settings.

Every function takes keyword arguments, checks the actor's role itself (views only narrow what
the user may see, so a node outside their labs is a 404 before a service is called), writes in
one transaction with its audit event, and refuses with a `ReviewRefused` that carries the HTTP
status, a machine-readable `code` and a message naming the problem.

Decisions and sign-off:
- A decision names the decision the reviewer saw (`based_on`, None for none). If another decision
  arrived since, `StaleDecision` carries the current one and nothing is written. The case row is
  locked (SELECT ... FOR UPDATE) while deciding or signing off, and the database allows one
  successor per decision, so two concurrent reviewers can never both win.
- Safety rule: a node cannot be confirmed negative until the deciding reviewer has opened each of
  its regions at or above the threshold (lab setting `require_region_views`, on by default; only
  an admin switches it, and the switch is audited). A negative-screened node has no such region.
- A case signs off (lab leads) when every node is confirmed positive or negative; "needs further
  work" is not a settled node. Sign-off locks the decisions. A lab lead may still amend one: the
  amendment is a new decision flagged `amendment` with a mandatory reason, audited as
  "review decision amended", and it must itself confirm positive or negative, so the case stays
  signed off with every node settled (nothing is un-signed silently). To send a node back for
  further work, a lab lead reopens the case explicitly (with a reason, audited).
"""

from __future__ import annotations

import math

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from annotations import services as annotation_services
from annotations.geometry import InvalidAnnotation
from annotations.models import LabelClass
from audit import log as audit
from slides.access import has_role
from slides.models import Case, Lab, Node, Role, Slide

from .models import (
    FINAL_STATUSES,
    CaseSignOff,
    FurtherWork,
    ReviewDecision,
    ReviewerCorrection,
    ReviewSettings,
    ReviewStatus,
    ViewedRegion,
)
from .queues import (
    DEFAULT_REGION_PX,
    Region,
    effective_threshold,
    latest_decision,
    latest_score,
    live_primary,
    regions_for,
    review_regions,
    with_review_state,
)

#: A free centre (x, y) reported by the viewer counts as a region if it lies this close (level-0 px).
REGION_MATCH_PX = 512
#: Side of the square a "not tumour" correction covers around a region without a heat map window.
DEFAULT_CORRECTION_PX = DEFAULT_REGION_PX
#: "Viewed" when the viewer reports its view: the region's square at least this share inside the
#: view, at a zoom (screen px per level-0 px) where the pixels are legible. 0.25 is 10x on a 40x
#: scan (0.25 µm/px), 5x on a 20x one. The review viewer applies the same rule before it reports.
VIEWED_MIN_INSIDE = float(getattr(settings, "REVIEW_VIEWED_MIN_INSIDE", 0.8))
VIEWED_MIN_ZOOM = float(getattr(settings, "REVIEW_VIEWED_MIN_ZOOM", 0.25))


class ReviewRefused(Exception):
    """A review action that was not done; `status_code`, `code` and `extra` go into the response."""

    status_code = 400
    code = "refused"

    def __init__(self, message: str, *, code: str | None = None, **extra):
        super().__init__(message)
        if code:
            self.code = code
        self.extra = extra


class NotPermitted(ReviewRefused):
    status_code = 403
    code = "not_permitted"


class StaleDecision(ReviewRefused):
    """Another decision arrived since the one the reviewer saw; `current` is it."""

    status_code = 409
    code = "stale"

    def __init__(self, message: str, *, current: ReviewDecision | None):
        super().__init__(message)
        self.current = current


class CaseStateConflict(ReviewRefused):
    status_code = 409
    code = "case_state"


def _name(user) -> str:
    return getattr(user, "username", "") or ""


def _require(user, role: str, message: str) -> None:
    if not has_role(user, role):
        raise NotPermitted(message)


# ---- lab settings -------------------------------------------------------------------------------


def lab_settings(lab: Lab | int) -> ReviewSettings:
    """The lab's review settings (defaults, unsaved, if never changed)."""
    lab_id = lab if isinstance(lab, int) else lab.pk
    found = ReviewSettings.objects.filter(lab_id=lab_id).first()
    return found or ReviewSettings(lab_id=lab_id)


def set_lab_settings(
    *, lab: Lab, user, require_region_views: bool, reason: str = ""
) -> ReviewSettings:
    """Switch the region-viewing rule of a lab (admins only); the change is audited."""
    _require(user, Role.ADMIN, "Only admins change a lab's review settings.")
    with transaction.atomic():
        current, _ = ReviewSettings.objects.select_for_update().get_or_create(lab=lab)
        before = current.require_region_views
        current.require_region_views = bool(require_region_views)
        current.updated_by = user
        current.save()
        audit.record(
            actor=user,
            action="review setting changed",
            obj=lab,
            setting="require_region_views",
            before=before,
            after=current.require_region_views,
            reason=reason,
        )
    return current


# ---- decisions ----------------------------------------------------------------------------------


def _check_status(status: object, further_work: object) -> tuple[str, str]:
    if status not in ReviewStatus.values:
        raise ReviewRefused(
            f"unknown status {status!r}; use one of: {', '.join(ReviewStatus.values)}",
            code="unknown_status",
        )
    further_work = further_work or ""
    if further_work not in FurtherWork.values:
        raise ReviewRefused(
            f"unknown further work {further_work!r}; use one of: "
            f"{', '.join(v for v in FurtherWork.values if v)}",
            code="unknown_further_work",
        )
    if further_work and status != ReviewStatus.NEEDS_FURTHER_WORK:
        raise ReviewRefused(
            "further work can only be named with the status needs_further_work", code="further_work"
        )
    return str(status), str(further_work)


def decide(
    *,
    node: Node,
    user,
    status: str,
    based_on: int | None,
    note: str = "",
    further_work: str = "",
    reason: str = "",
) -> ReviewDecision:
    """Append a decision on `node`, made by `user` having seen decision `based_on` (None: none)."""
    status, further_work = _check_status(status, further_work)
    _require(user, Role.PATHOLOGIST, "Only pathologists, lab leads and admins decide on nodes.")
    version = live_primary()
    with transaction.atomic():
        case = Case.objects.select_for_update().select_related("lab").get(pk=node.case_id)
        current = latest_decision(node)
        current_id = current.pk if current else None
        if current_id != based_on:
            who = (
                f"{current.user_name} decided {current.get_status_display().lower()}"
                if current
                else "it has no decision yet"
            )
            raise StaleDecision(
                f"node {node.label!r} changed while you looked: {who} "
                f"(decision {current_id}, you saw {based_on}). Nothing was saved; review it again.",
                current=current,
            )
        amendment = case.status == Case.Status.SIGNED_OFF
        if amendment:
            if not has_role(user, Role.LAB_LEAD):
                raise NotPermitted(
                    f"case {case.accession_number} is signed off and its decisions are locked; "
                    "only a lab lead can amend a decision, with a reason",
                    code="signed_off",
                )
            if not reason.strip():
                raise ReviewRefused(
                    f"case {case.accession_number} is signed off: give a reason to amend this decision",
                    code="reason_required",
                )
            if status not in FINAL_STATUSES:
                raise ReviewRefused(
                    "an amendment of a signed-off case must confirm the node positive or negative; "
                    "to send the node for further work, reopen the case first",
                    code="amendment_status",
                )
        score = latest_score(node, version)
        threshold = effective_threshold(score, version)
        regions = review_regions(node, score, threshold)
        seen = set(
            ViewedRegion.objects.filter(node=node, user=user).values_list("region_key", flat=True)
        )
        rule = lab_settings(case.lab).require_region_views
        missing = [r for r in regions if r.required and r.key not in seen]
        if status == ReviewStatus.CONFIRMED_NEGATIVE and rule and missing:
            if score is None:
                what = (
                    "the live model has not scored it, so open each of its slides in the viewer, "
                    "zoomed in,"
                )
            elif threshold is None:
                what = (
                    "the live model has no locked threshold, so every region counts: open each "
                    "region in the viewer"
                )
            else:
                what = "open each region at or above the threshold in the viewer"
            raise ReviewRefused(
                f"node {node.label!r} cannot be confirmed negative yet: {what} first ({len(missing)} of "
                f"{sum(r.required for r in regions)} not viewed: {', '.join(r.key for r in missing)})",
                code="regions_not_viewed",
                regions=[
                    r.as_dict() | {"viewer_url": r.viewer_url(node_id=node.pk)} for r in missing
                ],
            )
        try:
            with transaction.atomic():
                decision = ReviewDecision.objects.create(
                    node=node,
                    previous=current,
                    status=status,
                    further_work=further_work,
                    note=note,
                    user=user,
                    user_name=_name(user),
                    node_score=score,
                    model_version=version if score else None,
                    score=score.score if score else None,
                    threshold=threshold if score else None,
                    screened_positive=(
                        None if score is None or threshold is None else score.score >= threshold
                    ),
                    regions=[r.as_dict() | {"viewed": r.key in seen} for r in regions],
                    region_rule=rule,
                    amendment=amendment,
                    reason=reason,
                )
        except IntegrityError as exc:
            # Another reviewer's decision on the same predecessor got in first.
            fresh = latest_decision(node)
            if (fresh.pk if fresh else None) == current_id:
                raise  # not a race: some other constraint refused the row
            raise StaleDecision(
                f"node {node.label!r} was decided by {fresh.user_name if fresh else 'someone'} "
                "at the same moment. Nothing was saved; review it again.",
                current=fresh,
            ) from exc
        audit.record(
            actor=user,
            action="review decision amended" if amendment else "review decision",
            obj=decision,
            node=node.pk,
            case=case.pk,
            status=status,
            further_work=further_work,
            based_on=based_on,
            model_version=decision.model_version_id,
            score=decision.score,
            threshold=decision.threshold,
            regions_required=[r.key for r in regions if r.required],
            regions_viewed=sorted(seen & {r.key for r in regions}),
            region_rule=rule,
            reason=reason,
        )
    return decision


# ---- viewed regions -----------------------------------------------------------------------------


def node_regions(node: Node) -> list[Region]:
    """The node's regions under the live primary model (required: at or above its threshold, all
    of them without a threshold, each slide as a whole when the live model has not scored it)."""
    version = live_primary()
    score = latest_score(node, version)
    return review_regions(node, score, effective_threshold(score, version))


def inside_share(
    box: tuple[float, float, float, float], view: tuple[float, float, float, float]
) -> float:
    """Share (0..1) of the area of `box` that lies inside `view`; both (x0, y0, x1, y1)."""
    width = max(0.0, min(box[2], view[2]) - max(box[0], view[0]))
    height = max(0.0, min(box[3], view[3]) - max(box[1], view[1]))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return 1.0 if area <= 0 else width * height / area


def check_shown(
    match: Region, *, slide: Slide, viewport: tuple[float, float, float, float], zoom: float
) -> None:
    """Refuse (code "not_shown") unless the view showed `match` as the viewed rule asks."""
    if zoom < VIEWED_MIN_ZOOM:
        raise ReviewRefused(
            f"region {match.key} was shown at {zoom:.3g} screen px per slide px; it counts as "
            f"viewed from {VIEWED_MIN_ZOOM:g} (zoom in further)",
            code="not_shown",
        )
    box = match.box(width=slide.width, height=slide.height)
    if box is None:
        return  # the node's slide as a whole: showing the slide is viewing it
    share = inside_share(box, viewport)
    if share < VIEWED_MIN_INSIDE:
        raise ReviewRefused(
            f"region {match.key} was {share:.0%} inside the view; it counts as viewed from "
            f"{VIEWED_MIN_INSIDE:.0%} (pan to it)",
            code="not_shown",
        )


def record_viewed_region(
    *,
    node: Node,
    user,
    region: str | None = None,
    x: float | None = None,
    y: float | None = None,
    slide: int | None = None,
    viewport: tuple[float, float, float, float] | None = None,
    zoom: float | None = None,
) -> ViewedRegion:
    """Record that `user` opened a region of `node`: by key, or by a centre (x, y) on a slide.

    A centre within REGION_MATCH_PX of one of the node's regions on the same slide counts as that
    region; any other centre is recorded as it is (key "xy@x,y") but satisfies no region.

    The review viewer reports a region by key with what it showed: `viewport` (x0, y0, x1, y1,
    level-0 px of `slide`) and `zoom` (screen px per level-0 px). Then the region must have been
    on that slide, at least VIEWED_MIN_INSIDE of its square inside the view, at VIEWED_MIN_ZOOM or
    closer, or nothing is recorded; the view is kept with the record.
    """
    _require(user, Role.PATHOLOGIST, "Only pathologists, lab leads and admins review nodes.")
    if (viewport is None) != (zoom is None):
        raise ReviewRefused("give the viewport and the zoom together", code="viewport")
    if viewport is not None and not region:
        raise ReviewRefused("a viewport is reported with a region key", code="viewport")
    regions = node_regions(node)
    if region:
        match = next((r for r in regions if r.key == region), None)
        if match is None:
            known = (
                ", ".join(r.key for r in regions)
                or "none (the node is not scored by the live model)"
            )
            raise ReviewRefused(
                f"node {node.label!r} has no region {region!r}; its regions: {known}",
                code="unknown_region",
            )
        key, slide_id, heatmap_id, x, y = (
            match.key,
            match.slide_id,
            match.heatmap_id,
            match.x,
            match.y,
        )
        if viewport is not None:
            if slide is not None and slide != match.slide_id:
                raise ReviewRefused(
                    f"region {match.key} is on slide {match.slide_id}, not on slide {slide}",
                    code="slide",
                )
            shown = Slide.objects.filter(node=node, pk=match.slide_id).first()
            if shown is None:
                raise ReviewRefused(f"region {match.key} has no slide to view", code="slide")
            check_shown(match, slide=shown, viewport=viewport, zoom=zoom)
    else:
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            raise ReviewRefused(
                "give a region key, or a centre x and y (level-0 pixels)", code="no_region"
            )
        slides = list(Slide.objects.filter(node=node).values_list("id", flat=True))
        slide_id = slide if slide is not None else (slides[0] if len(slides) == 1 else None)
        if slide_id not in slides:
            raise ReviewRefused(
                f"give the slide of node {node.label!r} the centre is on (one of {slides})",
                code="slide",
            )
        near = [
            r
            for r in regions
            if r.slide_id == slide_id
            and r.x is not None
            and r.y is not None
            and math.hypot(r.x - x, r.y - y) <= REGION_MATCH_PX
        ]
        if near:
            best = min(near, key=lambda r: math.hypot(r.x - x, r.y - y))
            key, heatmap_id = best.key, best.heatmap_id
        else:
            key, heatmap_id = f"xy@{round(x)},{round(y)}", None
    return ViewedRegion.objects.create(
        node=node,
        heatmap_id=heatmap_id,
        slide_id=slide_id,
        region_key=key,
        x=x,
        y=y,
        user=user,
        viewport=[round(v, 1) for v in viewport] if viewport is not None else None,
        zoom=zoom,
    )


# ---- reviewer corrections -----------------------------------------------------------------------


def hard_negative_classes() -> QuerySet[LabelClass]:
    return LabelClass.objects.filter(kind=LabelClass.Kind.HARD_NEGATIVE).order_by("order", "key")


def _square(x: float, y: float, side: float, slide: Slide) -> dict:
    half = side / 2
    x0, x1 = max(0.0, x - half), min(float(slide.width), x + half)
    y0, y1 = max(0.0, y - half), min(float(slide.height), y + half)
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


def correct_region(
    *,
    node: Node,
    user,
    label_class: str,
    region: str | None = None,
    geometry: dict | None = None,
    slide: int | None = None,
    size_px: float | None = None,
    note: str = "",
) -> ReviewerCorrection:
    """Save a high-scoring region a reviewer calls "not tumour" as a hard-negative annotation.

    The annotation is created through the annotations service (validated, with history) under a
    hard-negative class; the `ReviewerCorrection` row marks it as a reviewer correction. Secondary
    training picks hard-negative annotations up like any other. Give a region key (a square of
    `size_px`, default twice the heat map's classifier window, around its centre) or a GeoJSON
    polygon with its slide.
    """
    _require(user, Role.PATHOLOGIST, "Only pathologists, lab leads and admins correct regions.")
    classes = {c.key: c for c in hard_negative_classes()}
    cls = classes.get(label_class) or next(
        (c for c in classes.values() if c.name.casefold() == str(label_class).casefold()), None
    )
    if cls is None:
        raise ReviewRefused(
            f"{label_class!r} is not a hard-negative class; use one of: {', '.join(classes)}",
            code="label_class",
        )
    version = live_primary()
    score = latest_score(node, version)
    key = ""
    if region:
        match = next(
            (
                r
                for r in regions_for(score, threshold=effective_threshold(score, version))
                if r.key == region
            ),
            None,
        )
        if match is None or match.x is None or match.slide_id is None:
            raise ReviewRefused(
                f"node {node.label!r} has no region {region!r} with a location",
                code="unknown_region",
            )
        target = Slide.objects.get(pk=match.slide_id)
        # By default the region's own square: what the viewer had to show for it to count viewed.
        side = size_px if size_px is not None else match.size_px
        shape = _square(match.x, match.y, float(side), target)
        key = match.key
    elif geometry is not None:
        target = Slide.objects.filter(node=node, pk=slide).first() if slide is not None else None
        if target is None:
            raise ReviewRefused(
                f"give the slide of node {node.label!r} the polygon is on", code="slide"
            )
        shape = geometry
    else:
        raise ReviewRefused("give a region key or a polygon (geometry and slide)", code="no_region")
    with transaction.atomic():
        try:
            annotation = annotation_services.create_annotation(
                slide=target,
                user=user,
                geometry=shape,
                label_class=cls,
                name=f"reviewer correction: not tumour (node {node.pk}{', ' + key if key else ''})"[
                    :255
                ],
            )
        except InvalidAnnotation as exc:
            raise ReviewRefused(
                f"the correction's polygon was refused: {exc}", code="geometry"
            ) from exc
        correction = ReviewerCorrection.objects.create(
            annotation=annotation, node=node, node_score=score, region_key=key, user=user, note=note
        )
        audit.record(
            actor=user,
            action="reviewer correction",
            obj=correction,
            node=node.pk,
            annotation=annotation.pk,
            label_class=cls.key,
            region=key,
            score=score.score if score else None,
        )
    return correction


# ---- sign-off -----------------------------------------------------------------------------------


def unsettled_nodes(case: Case) -> list[dict]:
    """Nodes of the case not confirmed positive or negative: [{id, label, status}]."""
    nodes = with_review_state(case.nodes.all(), version=None).order_by("label", "id")
    return [
        {"id": n.pk, "label": n.label, "status": n.rv_status}
        for n in nodes
        if n.rv_status not in FINAL_STATUSES
    ]


def sign_off(*, case: Case, user, note: str = "") -> CaseSignOff:
    """Sign a case off (lab leads): every node confirmed positive or negative; locks decisions."""
    _require(user, Role.LAB_LEAD, "Only lab leads and admins sign cases off.")
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case.pk)
        if case.status == Case.Status.SIGNED_OFF:
            raise CaseStateConflict(
                f"case {case.accession_number} is already signed off", code="already_signed_off"
            )
        nodes = list(with_review_state(case.nodes.all(), version=None).order_by("label", "id"))
        if not nodes:
            raise ReviewRefused(
                f"case {case.accession_number} has no nodes to sign off", code="case_not_ready"
            )
        pending = [n for n in nodes if n.rv_status not in FINAL_STATUSES]
        if pending:
            listed = ", ".join(
                f"{n.label} ({ReviewStatus(n.rv_status).label.lower()})" for n in pending
            )
            raise ReviewRefused(
                f"case {case.accession_number} cannot be signed off: every node must be confirmed "
                f"positive or negative first; not yet: {listed}",
                code="case_not_ready",
                nodes=[{"id": n.pk, "label": n.label, "status": n.rv_status} for n in pending],
            )
        changed = Case.objects.filter(pk=case.pk, status=Case.Status.OPEN).update(
            status=Case.Status.SIGNED_OFF
        )
        if changed != 1:  # pragma: no cover - the row lock makes this unreachable
            raise CaseStateConflict(f"case {case.accession_number} changed meanwhile")
        decisions = {str(n.pk): n.rv_decision_id for n in nodes}
        record = CaseSignOff.objects.create(
            case=case,
            action=CaseSignOff.Action.SIGNED_OFF,
            user=user,
            user_name=_name(user),
            reason=note,
            decisions=decisions,
        )
        audit.record(actor=user, action="case signed off", obj=case, decisions=decisions, note=note)
    return record


def reopen(*, case: Case, user, reason: str) -> CaseSignOff:
    """Reopen a signed-off case (lab leads, with a reason): its decisions can change again."""
    _require(user, Role.LAB_LEAD, "Only lab leads and admins reopen cases.")
    if not reason.strip():
        raise ReviewRefused("give a reason to reopen a signed-off case", code="reason_required")
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case.pk)
        changed = Case.objects.filter(pk=case.pk, status=Case.Status.SIGNED_OFF).update(
            status=Case.Status.OPEN
        )
        if changed != 1:
            raise CaseStateConflict(
                f"case {case.accession_number} is not signed off", code="not_signed_off"
            )
        record = CaseSignOff.objects.create(
            case=case,
            action=CaseSignOff.Action.REOPENED,
            user=user,
            user_name=_name(user),
            reason=reason,
        )
        audit.record(actor=user, action="case reopened", obj=case, reason=reason)
    return record
