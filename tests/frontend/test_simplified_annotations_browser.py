"""Zoomed out, the viewer fetches simplified outlines; editing one starts from its full geometry.

A 4096 x 2560 px slide holds two detailed outlines (3,000 vertices each, like a CAMELYON16 ASAP
outline). Seen whole in a small window (about 6 level-0 px per screen pixel) the viewer asks for
`simplify=4` and holds far fewer vertices; selecting one outline loads its full row
(`GET /api/annotations/<id>/`), and an eraser stroke across its edge is saved as the full outline
less the notch; zooming in on the other fetches it again in full. Checked through the ORM and the
requests the page made. Debian's Chromium through Playwright against live_server.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from tests.browser import browser_marks

from .test_annotation_browser import OnSlide, open_viewer

pytestmark = browser_marks("viewer.js")

WIDTH, HEIGHT = 4096, 2560
N = 3000


def detailed_outline(cx: float, cy: float, r: float, seed: int) -> dict:
    """A closed outline of N integer vertices within ±2 px of a circle."""
    t = np.linspace(0, 2 * math.pi, N, endpoint=False)
    radius = r + np.random.default_rng(seed).integers(-2, 3, N)
    ring = np.column_stack([cx + radius * np.cos(t), cy + radius * np.sin(t)]).round()
    ring = ring.astype(int).tolist()
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


@pytest.fixture
def big_slide(transactional_db, people, case, tmp_path):
    from slides.ingest import register_slide
    from tests.factories import write_pyramid_tiff

    image = np.full((HEIGHT, WIDTH, 3), 215, np.uint8)
    image[:, ::64] = 120  # something to see
    path = write_pyramid_tiff(tmp_path / "big.tiff", image, mpp=0.5)
    return register_slide(node=case.nodes.order_by("label").first(), path=path)


def test_zoomed_out_fetch_is_simplified_and_edits_use_full_geometry(
    live_server, page, people, big_slide, label_classes
):
    from annotations import services
    from annotations.models import Annotation

    create = services.create_annotation
    user = people.pathologist
    cx, cy, r = 1200, 1280, 800
    edited = create(
        slide=big_slide, user=user, geometry=detailed_outline(cx, cy, r, 1), label_class="tumour"
    )
    other = create(
        slide=big_slide,
        user=user,
        geometry=detailed_outline(3200, 1280, 500, 2),
        label_class="sinus",
    )
    original = {tuple(p) for p in edited.geometry["coordinates"][0]}
    requests: list[tuple[str, str]] = []
    page.on("request", lambda req: requests.append((req.method, req.url)))

    page.set_viewport_size({"width": 800, "height": 600})  # the whole slide at ~6 px per screen px
    open_viewer(page, live_server, people, big_slide)
    on = OnSlide(page)
    page.evaluate("() => window.nodescopeAnnotations.idle()")

    def lists():
        return [
            parse_qs(urlparse(url).query)
            for method, url in requests
            if method == "GET" and f"/api/slides/{big_slide.pk}/annotations/" in url
        ]

    assert lists() and lists()[-1].get("simplify") == ["4"], lists()
    loaded = "(id) => window.nodescopeAnnotations.loaded(id)"
    for row in (edited, other):
        state = page.evaluate(loaded, row.pk)
        assert state["simplified"] and state["tolerance"] == 4, state
        assert state["vertices"] < N / 4, state

    # Select the outline: its full row is loaded first.
    page.keyboard.press("v")
    on.click(cx, cy)
    on.idle()
    assert (
        "GET",
        f"{live_server.url}/api/annotations/{edited.pk}/",
    ) in requests
    state = page.evaluate(loaded, edited.pk)
    assert not state["simplified"] and state["vertices"] == N, state
    assert page.evaluate("() => window.nodescopeAnnotations.selected().id") == edited.pk

    # An eraser stroke across its right edge: the server gets the full outline less the notch.
    page.keyboard.press("e")
    page.evaluate("() => window.nodescopeAnnotations.layer.setBrush(8)")
    on.drag((cx + r - 60, cy - 20), (cx + r + 60, cy + 20), steps=6)
    on.idle()
    edited.refresh_from_db()
    assert edited.version == 2
    ring = [tuple(p) for p in edited.geometry["coordinates"][0][:-1]]
    kept = sum(p in original for p in ring)
    assert N * 0.9 < kept < N, (kept, len(ring))  # all but the notch's stored vertices
    assert len(ring) - kept < 60  # and a few new ones along the cut
    from shapely.geometry import Point, shape

    assert not shape(edited.geometry).contains(Point(cx + r - 10, cy))  # the notch is there
    patches = [url for method, url in requests if method == "PATCH"]
    assert patches == [f"{live_server.url}/api/annotations/{edited.pk}/"]

    # Zooming in on the other outline (1 level-0 px per screen px) fetches it in full.
    page.keyboard.press("Escape")
    page.evaluate(
        """([x, y]) => {
            const v = window.nodescopeViewer, item = v.world.getItemAt(0);
            v.viewport.zoomTo(item.imageToViewportZoom(1), null, true);
            v.viewport.panTo(item.imageToViewportCoordinates(x, y), true);
        }""",
        [3200, 1280],
    )
    page.wait_for_function(
        f"() => !window.nodescopeAnnotations.loaded({other.pk}).simplified", timeout=10_000
    )
    assert "simplify" not in lists()[-1], lists()[-1]
    assert page.evaluate(loaded, other.pk)["vertices"] == N
    assert Annotation.objects.get(pk=other.pk).version == 1, "nothing written by viewing"
    assert not [e for e in page.console_errors if "favicon" not in e], page.console_errors
