"""CT and ultrasound node images in a real browser (Debian's Chromium through Playwright).

A pathologist opens a CT image (a DICOM in Hounsfield units): the window selector is there, the
tiles come with the image's own window; choosing the lung preset reloads the tiles with
`?preset=lung` and the picture gets brighter (air at -1000 HU is no longer black); a box drawn with
the rectangle tool is saved as a Polygon. An ultrasound image shows no window selector.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.browser import browser_marks

from .test_annotation_browser import OnSlide, open_viewer, outer_ring
from .test_viewer_browser import CANVAS_STATS_JS

pytestmark = browser_marks("viewer.js")

PAGE_TIMEOUT_MS = 20_000
TILE_URL = re.compile(r"/api/slides/\d+/tiles/\d+/\d+/\d+\.jpg(\?.*)?$")


@pytest.fixture
def ct_image(transactional_db, people, case, tmp_path):
    from slides.node_images import register_node_image
    from tests.slides.node_image_files import write_dicom

    hu = np.full((192, 256), -1000, dtype=np.int16)  # air
    hu[40:150, 60:200] = 40  # a soft-tissue node
    path = write_dicom(tmp_path / "ct.dcm", hu=hu, window=(40, 400))
    return register_node_image(node=case.nodes.first(), path=path, modality="ct")


def _canvas_mean(page) -> float:
    return page.evaluate(CANVAS_STATS_JS)["mean"]


def test_ct_window_presets_change_the_tiles_and_a_box_is_saved(
    live_server, page, people, case, ct_image, label_classes, tmp_path
):
    from annotations.models import Annotation
    from slides.node_images import register_node_image
    from tests.slides.node_image_files import write_png

    tiles: list[tuple[str, int]] = []
    page.on(
        "response",
        lambda r: tiles.append((r.url, r.status)) if TILE_URL.search(r.url) else None,
    )
    open_viewer(page, live_server, people, ct_image)
    assert page.locator("#window-preset").is_visible()
    options = page.locator("#window-preset option").all_inner_texts()
    assert any(o.startswith("lung (-600/1500)") for o in options), options
    assert tiles and all(status == 200 and "?" not in url for url, status in tiles), tiles
    default_mean = _canvas_mean(page)
    # A scale bar in millimetres (PixelSpacing 0.6/0.7 mm), no objective magnification.
    scale = page.locator(".ns-scalebar")
    assert scale.is_visible() and int(scale.get_attribute("data-length-um")) >= 10_000
    assert scale.inner_text().endswith("mm")
    assert page.locator(".ns-magnification").is_hidden()

    tiles.clear()
    page.select_option("#window-preset", "lung")
    page.wait_for_function("() => document.body.dataset.window === '?preset=lung'")
    page.wait_for_function(
        "() => window.nodescopeViewer.world.getItemAt(0).getFullyLoaded()", timeout=10_000
    )
    page.wait_for_timeout(300)
    assert tiles and all(url.endswith("?preset=lung") and s == 200 for url, s in tiles), tiles
    lung_mean = _canvas_mean(page)
    # Soft-tissue window: air 0, node 128. Lung window: air ≈ 60, node ≈ 163.
    assert lung_mean > default_mean + 25, (default_mean, lung_mean)

    # A custom window from the two number fields.
    tiles.clear()
    page.select_option("#window-preset", "custom")
    page.fill("#window-center", "-1000")
    page.fill("#window-width", "10")
    page.click(".ns-window-apply")
    page.wait_for_function("() => document.body.dataset.window === '?window=-1000%2C10'")
    page.wait_for_function("() => window.nodescopeViewer.world.getItemAt(0).getFullyLoaded()")
    page.wait_for_timeout(300)
    assert tiles and all(s == 200 for _u, s in tiles)
    assert _canvas_mean(page) > lung_mean + 40  # everything above -995 HU is white

    # A box with the rectangle tool, saved as a Polygon in image pixels.
    page.evaluate("() => window.nodescopeViewer.canvas.focus()")
    page.keyboard.press("r")
    on = OnSlide(page)
    on.drag((70, 50), (170, 120))
    on.idle()
    box = Annotation.objects.get(slide=ct_image)
    assert box.geometry["type"] == "Polygon" and box.label_class.key == "tumour"
    ring = outer_ring(box)
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    assert len(ring) == 4 and abs(min(xs) - 70) <= 3 and abs(max(xs) - 170) <= 3
    assert abs(min(ys) - 50) <= 3 and abs(max(ys) - 120) <= 3

    # An ultrasound image: no window selector.
    us = register_node_image(
        node=case.nodes.last(),
        path=write_png(tmp_path / "us.png", size=(128, 96)),
        modality="ultrasound",
    )
    page.goto(f"{live_server.url}/slides/{us.id}/view/")
    page.wait_for_selector('body[data-viewer-ready="1"]', state="attached")
    assert page.locator("#window-preset").count() == 0
    assert not page.console_errors, page.console_errors
