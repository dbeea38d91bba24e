"""Review tests: a live model and a scored case."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.test import Client

from slides.models import Case, Node
from tests.factories import make_case

from .factories import make_heatmap, make_model_version, make_slide, score_node


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@dataclass
class Scored:
    case: Case
    version: object
    nodes: dict[str, Node]  # label -> node


@pytest.fixture
def version(db):
    return make_model_version("primary-v1", threshold=0.5)


@pytest.fixture
def scored(people, version) -> Scored:
    """A case of four nodes: two positive-screened (one with two heat maps), one negative, one unscored.

    Queue order: "node B" 0.92, "node A" 0.61, "node C" 0.20, then "node D" (not scored).
    """
    case = make_case(people.lab, "S26-0100", nodes=("node A", "node B", "node C", "node D"))
    nodes = {n.label: n for n in case.nodes.all()}
    b1 = make_slide(nodes["node B"], "B-1")
    b2 = make_slide(nodes["node B"], "B-2")
    hm1 = make_heatmap(b1, version, max_score=0.92, x=1200, y=900)
    make_heatmap(b2, version, max_score=0.55, x=300, y=200)
    score_node(nodes["node B"], version, 0.92, heatmap=hm1)
    make_slide(nodes["node A"], "A-1")
    score_node(nodes["node A"], version, 0.61, x=2000, y=1500)
    make_slide(nodes["node C"], "C-1")
    score_node(nodes["node C"], version, 0.20, x=100, y=100)
    make_slide(nodes["node D"], "D-1")
    return Scored(case=case, version=version, nodes=nodes)
