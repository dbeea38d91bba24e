"""The Grad-CAM tool in a real browser: C turns it on, a click on the slide asks for the map of
the window there, the record is computed (tasks run eagerly in the live server), and its overlay
is laid over the slide as an image of exactly that region."""

from __future__ import annotations

import pytest

from inference.records import GradCam
from tests.browser import browser_marks

from .test_viewer_browser import log_in

pytestmark = browser_marks("viewer.js")


@pytest.fixture
def live_slide(transactional_db, people, case, tmp_path, eager_tasks):
    from tests.inference.test_scoring import (
        generated_slide,
        make_version,
        random_dense_model,
        save_weights,
    )

    weights = save_weights(random_dense_model(seed=1), tmp_path / "w.pt")
    make_version(weights, live=True)
    return generated_slide(case.nodes.first(), tmp_path, seed=7, tumour=True, size=(400, 300))


def test_a_click_with_the_gradcam_tool_shows_the_map_over_its_window(
    page,
    live_server,
    people,
    live_slide,
):
    log_in(page, live_server, people)
    page.goto(f"{live_server.url}/slides/{live_slide.id}/view/")
    page.wait_for_selector('body[data-viewer-ready="1"]', state="attached", timeout=30_000)
    items_before = page.evaluate("window.nodescopeViewer.world.getItemCount()")
    page.keyboard.press("c")
    tool = page.locator(".ns-gradcam-tool")
    assert tool.get_attribute("aria-pressed") == "true"
    # click where level-0 pixel (200, 150) is on screen
    point = page.evaluate(
        """() => {
          const v = window.nodescopeViewer;
          const item = v.world.getItemAt(0);
          const vp = item.imageToViewportCoordinates(200, 150);
          const p = v.viewport.pixelFromPoint(vp, true);
          const box = v.element.getBoundingClientRect();
          return {x: box.left + p.x, y: box.top + p.y};
        }"""
    )
    page.mouse.click(point["x"], point["y"])
    page.wait_for_selector('.ns-gradcam-panel[data-state="ready"]', timeout=60_000)
    record = GradCam.objects.get()
    assert record.status == GradCam.Status.SUCCEEDED
    assert (record.x, record.y, record.width, record.height) == (180, 130, 40, 40)
    assert page.locator(".ns-gradcam-panel").get_attribute("data-gradcams") == str(record.pk)
    assert page.evaluate("window.nodescopeViewer.world.getItemCount()") == items_before + 1
    bounds = page.evaluate(
        """() => {
          const v = window.nodescopeViewer;
          const base = v.world.getItemAt(0);
          const top = v.world.getItemAt(v.world.getItemCount() - 1);
          const r = base.viewportToImageRectangle(top.getBounds());
          return [r.x, r.y, r.width, r.height];
        }"""
    )
    assert bounds == pytest.approx([180, 130, 40, 40], abs=0.5)
    assert not [e for e in page.console_errors if "gradcam" in e.lower()]
