"""Slides for annotation tests: rows of a chosen size (validation needs only width and height)."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from django.test import Client

from slides.models import Node, Slide

_serial = itertools.count(1)


def make_slide(
    node: Node, *, width: int = 1000, height: int = 700, mpp: float | None = 0.5, name: str = ""
) -> Slide:
    """A Slide row of the given size, without a file (geometry checks and labels need none)."""
    n = next(_serial)
    return Slide.objects.create(
        node=node,
        name=name or f"slide-{n}.tiff",
        file_path=f"/nonexistent/slide-{n}.tiff",
        source="tiff",
        checksum=hashlib.sha256(f"annotation-test-slide-{n}".encode()).hexdigest(),
        file_size=1,
        width=width,
        height=height,
        levels=1,
        tile_width=256,
        tile_height=256,
        mpp_x=mpp,
        mpp_y=mpp,
    )


def square(x0: float, y0: float, x1: float, y1: float) -> dict:
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def slide(case) -> Slide:
    return make_slide(case.nodes.first())
