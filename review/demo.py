"""The demo's review decisions: one case reviewed, so that the metrics page has figures at first
login, and one left open for the newcomer to review (the demo's first case)."""

from __future__ import annotations

from slides.models import Case, Node

from . import services
from .models import ReviewDecision

DEMO_REVIEWED_CASE = "DEMO-26-002"


def ensure_demo_decisions(*, lab, pathologist) -> int:
    """The demo pathologist opens each required region of the reviewed case's nodes and confirms
    each node as its ground truth says; nodes already decided are left alone. Returns the number
    of decisions made."""
    case = Case.objects.filter(lab=lab, accession_number=DEMO_REVIEWED_CASE).first()
    if case is None:
        return 0
    made = 0
    for node in case.nodes.order_by("label"):
        if node.ground_truth == Node.GroundTruth.UNKNOWN:
            continue
        if ReviewDecision.objects.filter(node=node).exists():
            continue
        for region in services.node_regions(node):
            if region.required:
                services.record_viewed_region(node=node, user=pathologist, region=region.key)
        status = (
            "confirmed_positive"
            if node.ground_truth == Node.GroundTruth.POSITIVE
            else "confirmed_negative"
        )
        services.decide(
            node=node,
            user=pathologist,
            status=status,
            based_on=None,
            note="demo: decided as the ground truth says, after viewing each flagged region",
        )
        made += 1
    return made
