"""The MIL attention overlay in a real browser: the case page's link to a top-attention patch opens
the viewer with ?attention=<model version>, the overlay is laid over the slide, the most-attended
patch is drawn in the brightest colour, and the "MIL attention" toggle hides and shows it."""

from __future__ import annotations

import pytest

from inference.heatmaps import colour_table
from inference.mil_overlay import ATTENTION_LEVELS
from tests.browser import browser_marks
from tests.clinical.test_mil_attention_overlay import trained  # noqa: F401 - the fixture

from .test_viewer_browser import log_in

pytestmark = browser_marks("viewer.js")


def test_the_case_page_opens_the_viewer_with_the_attention_overlay(
    page,
    live_server,
    transactional_db,
    people,
    trained,  # noqa: F811
):
    case, (slide, _), version = trained
    log_in(page, live_server, people)
    page.goto(f"{live_server.url}/cases/{case.pk}/")
    page.locator(f'#clinical a[href*="attention={version.pk}"]').first.click()
    page.wait_for_selector('.ns-attention-panel[data-state="ready"]', timeout=60_000)
    assert f"attention={version.pk}" in page.url
    toggle = page.locator(".ns-attention-toggle")
    assert toggle.get_attribute("aria-pressed") == "true"
    assert page.locator(".ns-attention-panel").get_attribute("data-version") == str(version.pk)
    # opaque overlay, then read the drawn canvas at the centre of the most-attended patch
    top = page.evaluate("window.nodescopeViewer.nodescope.attention.overlay.top")
    page.evaluate("window.nodescopeViewer.nodescope.attention.setOpacity(1)")
    page.wait_for_function(
        """() => {
          const v = window.nodescopeViewer;
          const n = v.world.getItemCount();
          return n >= 2 && v.world.getItemAt(n - 1).getFullyLoaded();
        }""",
        timeout=30_000,
    )
    read = """([x, y]) => {
          const v = window.nodescopeViewer;
          v.forceRedraw();
          v.world.draw();
          const item = v.world.getItemAt(0);
          const p = v.viewport.pixelFromPoint(item.imageToViewportCoordinates(x, y), true);
          const canvas = v.drawer.canvas;
          const ratio = canvas.width / v.element.clientWidth;
          const ctx = canvas.getContext("2d");
          return Array.from(ctx.getImageData(Math.round(p.x * ratio), Math.round(p.y * ratio), 1, 1).data);
        }"""
    centre = [top["x"] + top["size"] / 2, top["y"] + top["size"] / 2]
    shown = page.evaluate(read, centre)
    brightest = [int(v) for v in colour_table(ATTENTION_LEVELS)[ATTENTION_LEVELS][:3]]
    assert shown[:3] == pytest.approx(brightest, abs=6), shown
    toggle.click()
    assert toggle.get_attribute("aria-pressed") == "false"
    page.wait_for_timeout(300)
    hidden = page.evaluate(read, centre)
    assert sum(abs(h - b) for h, b in zip(hidden[:3], brightest, strict=True)) > 60, hidden
    assert not [e for e in page.console_errors if "attention" in e.lower()]
