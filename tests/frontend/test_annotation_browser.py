"""The drawing tools in a real browser: Debian's Chromium driven by Playwright against live_server.

A pathologist opens a slide, draws a polygon by clicking vertices, closes it on its first vertex
and relabels it tumour; moves a vertex; draws a rectangle, undoes it (soft delete on the server)
and redoes it (restore); reads the rectangle's area in mm²; draws a self-intersecting bow-tie and
sees the server's reason while nothing is saved; meets a 409 when someone else changed a polygon;
hides and shows their own layer. Every outcome is checked through the ORM.

Needs /usr/bin/chromium, a built bundle (`cd frontend && npm install && npm run build`) and the
annotations API (`annotations/urls.py`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from pathlib import Path

import pytest

from tests.browser import browser_marks

DIST = Path(__file__).resolve().parents[2] / "frontend" / "static" / "dist"
SHOTS = Path(os.environ.get("NODESCOPE_ANNOTATION_SCREENSHOTS", "/tmp"))


def _bundle_has_annotations() -> bool:
    bundle = DIST / "viewer.js"
    return (
        bundle.exists()
        and (DIST / "annotations.css").exists()
        and b"nodescopeAnnotations" in bundle.read_bytes()
    )


pytestmark = [
    *browser_marks("viewer.js"),
    pytest.mark.skipif(
        not _bundle_has_annotations(),
        reason="frontend/static/dist has no annotation tools built (cd frontend && npm install && npm run build)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("annotations.urls") is None,
        reason="the annotations API (annotations/urls.py) is not there yet",
    ),
]


PAGE_TIMEOUT_MS = 20_000  # the page fixture (tests/browser.py) waits this long


def open_viewer(page, live_server, people, slide):
    from tests.factories import PASSWORD

    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", people.pathologist.username)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form[action$='/login/'] button[type=submit]").click()
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/slides/{slide.id}/view/")
    page.wait_for_selector('body[data-viewer-ready="1"]', state="attached")
    page.wait_for_selector('body[data-annotations-ready="1"]', state="attached")
    # A known view: the whole slide, settled.
    page.evaluate("() => window.nodescopeViewer.viewport.goHome(true)")
    page.wait_for_function(
        "() => { const v = window.nodescopeViewer.viewport; return v.getZoom(true) === v.getZoom(false); }"
    )


TO_PAGE_JS = """([x, y]) => {
    // Image (level-0 px) → page coordinates, through OpenSeadragon's own conversion.
    const v = window.nodescopeViewer;
    const p = v.viewport.imageToViewerElementCoordinates(window.nodescopeAnnotations.point(x, y));
    const r = v.element.getBoundingClientRect();
    return [r.left + p.x, r.top + p.y];
}"""

IMAGE_ZOOM_JS = "() => { const v = window.nodescopeViewer; return v.world.getItemAt(0).viewportToImageZoom(v.viewport.getZoom(true)); }"


class OnSlide:
    """Clicks and drags at image coordinates."""

    def __init__(self, page):
        self.page = page

    def at(self, x, y):
        px, py = self.page.evaluate(TO_PAGE_JS, [x, y])
        box = self.page.locator("#viewer").bounding_box()
        assert (
            box["x"] <= px <= box["x"] + box["width"] and box["y"] <= py <= box["y"] + box["height"]
        ), f"image point ({x}, {y}) is off screen at ({px:.0f}, {py:.0f})"
        return px, py

    def click(self, x, y):
        px, py = self.at(x, y)
        self.page.mouse.click(px, py)
        self.page.wait_for_timeout(60)  # keep OpenSeadragon from pairing clicks into a double click

    def drag(self, start, end, steps=8):
        (x0, y0), (x1, y1) = self.at(*start), self.at(*end)
        self.page.mouse.move(x0, y0)
        self.page.mouse.down()
        self.page.mouse.move(x1, y1, steps=steps)
        self.page.mouse.up()

    def idle(self):
        self.page.evaluate("() => window.nodescopeAnnotations.idle()")


def outer_ring(annotation):
    geometry = annotation.geometry
    ring = (
        geometry["coordinates"][0]
        if geometry["type"] == "Polygon"
        else geometry["coordinates"][0][0]
    )
    return [tuple(p) for p in ring[:-1]]  # GeoJSON repeats the first vertex


def close_to(ring, expected, tolerance):
    return len(ring) == len(expected) and all(
        abs(x - ex) <= tolerance and abs(y - ey) <= tolerance
        for (x, y), (ex, ey) in zip(ring, expected, strict=True)
    )


def test_draw_edit_undo_and_refuse(live_server, page, people, slide, label_classes):
    from annotations import services
    from annotations.models import Annotation

    open_viewer(page, live_server, people, slide)
    on = OnSlide(page)
    zoom = page.evaluate(IMAGE_ZOOM_JS)
    tol = 1.5 / zoom + 0.5  # a click lands within half a screen pixel; allow a pixel and a half

    # --- polygon: pick non-tumour first, click four vertices, close on the first vertex ----------
    page.keyboard.press("2")
    page.keyboard.press("p")
    assert page.evaluate("() => window.nodescopeAnnotations.layer.classKey") == "non-tumour"
    square = [(200, 150), (400, 140), (420, 320), (210, 330)]
    for x, y in square:
        on.click(x, y)
    on.click(*square[0])
    on.idle()
    rows = list(Annotation.objects.filter(slide=slide))
    assert len(rows) == 1, rows
    polygon = rows[0]
    assert polygon.label_class.key == "non-tumour"
    assert polygon.author == people.pathologist
    assert close_to(outer_ring(polygon), square, tol), (outer_ring(polygon), square, tol)

    # The new polygon is selected: choosing the tumour class relabels it (PATCH with the version).
    page.keyboard.press("1")
    on.idle()
    polygon.refresh_from_db()
    assert polygon.label_class.key == "tumour"
    assert polygon.version == 2
    assert page.locator(".ns-annot-class[aria-checked=true]").get_attribute("data-key") == "tumour"

    # --- select tool: drag the second vertex to a new place --------------------------------------
    page.keyboard.press("v")
    on.drag((400, 140), (440, 120))
    on.idle()
    polygon.refresh_from_db()
    moved = [square[0], (440, 120), *square[2:]]
    assert polygon.version == 3
    assert close_to(outer_ring(polygon), moved, tol + 1), outer_ring(polygon)
    page.wait_for_timeout(100)
    page.screenshot(path=str(SHOTS / "annot-polygon.png"))

    # --- rectangle: draw, read its area, undo (soft delete), redo (restore) ----------------------
    page.keyboard.press("r")
    on.drag((600, 200), (800, 300))
    on.idle()
    rect = Annotation.objects.filter(slide=slide).exclude(pk=polygon.pk).get()
    assert rect.label_class.key == "tumour"
    assert close_to(outer_ring(rect), [(600, 200), (800, 200), (800, 300), (600, 300)], tol)
    assert abs(rect.area_px - 200 * 100) < 200 * 100 * 0.03

    def readout():
        return page.evaluate(
            "() => { const r = document.querySelector('.ns-annot-readout');"
            " return {text: r.textContent, mm2: Number(r.dataset.areaMm2), state: r.dataset.state}; }"
        )

    shown = readout()
    expected_mm2 = rect.area_px * slide.mpp**2 / 1e6  # 200 x 100 px at 0.5 µm/px = 0.0050 mm²
    assert shown["state"] == "selected"
    assert abs(shown["mm2"] - expected_mm2) < 1e-9, (shown, expected_mm2)
    assert abs(expected_mm2 - 0.005) < 0.0002
    assert f"{expected_mm2:.4f} mm²" in shown["text"], shown
    assert "Tumour" in shown["text"]

    page.keyboard.press("Control+z")
    on.idle()
    rect.refresh_from_db()
    assert rect.deleted_at is not None, "undo of a new rectangle soft-deletes it"
    assert page.evaluate("() => window.nodescopeAnnotations.count()") == 1

    page.keyboard.press("Control+Shift+z")
    on.idle()
    rect.refresh_from_db()
    assert rect.deleted_at is None, "redo restores it"
    assert page.evaluate("() => window.nodescopeAnnotations.count()") == 2
    assert readout()["state"] == "selected"
    page.screenshot(path=str(SHOTS / "annot-rectangle.png"))

    # --- bow-tie: the server refuses it, the drawing stays, nothing is saved ----------------------
    page.keyboard.press("Escape")
    page.keyboard.press("p")
    for x, y in [(120, 450), (320, 620), (320, 450), (120, 620)]:
        on.click(x, y)
    page.keyboard.press("Enter")
    on.idle()
    message = page.locator(".ns-annot-message")
    message.wait_for(state="visible")
    text = message.inner_text()
    assert re.search(r"self-intersection", text, re.I), text
    assert "Not saved" in text
    assert Annotation.objects.filter(slide=slide).count() == 2
    draft = page.evaluate("() => window.nodescopeAnnotations.draft()")
    assert draft and draft["id"] is None and "self-intersection" in draft["error"].lower()
    assert readout()["state"] == "draft"
    page.screenshot(path=str(SHOTS / "annot-bowtie.png"))

    # The user fixes it where it is: drag the last vertex inside; the corrected outline is saved.
    page.keyboard.press("v")
    on.drag((120, 620), (200, 500))
    on.idle()
    assert page.evaluate("() => window.nodescopeAnnotations.draft()") is None
    assert not message.is_visible()
    fixed = Annotation.objects.filter(slide=slide).exclude(pk__in=[polygon.pk, rect.pk]).get()
    assert close_to(outer_ring(fixed), [(120, 450), (320, 620), (320, 450), (200, 500)], tol + 1), (
        outer_ring(fixed)
    )

    # Another bow-tie, discarded with Escape: nothing saved, the message goes.
    page.keyboard.press("p")
    for x, y in [(450, 450), (650, 620), (650, 450), (450, 620)]:
        on.click(x, y)
    page.keyboard.press("Enter")
    on.idle()
    message.wait_for(state="visible")
    page.keyboard.press("Escape")
    assert page.evaluate("() => window.nodescopeAnnotations.draft()") is None
    assert not message.is_visible()
    assert Annotation.objects.filter(slide=slide).count() == 3

    # --- somebody else changes the polygon: a stale PATCH gets 409 and the row is reloaded -------
    services.update_annotation(
        annotation=polygon,
        user=people.lab_lead,
        expected_version=polygon.version,
        label_class="sinus",
    )
    page.evaluate(f"() => window.nodescopeAnnotations.select({polygon.pk})")
    page.keyboard.press("2")  # relabel non-tumour, on the stale version 3
    on.idle()
    message.wait_for(state="visible")
    assert "changed by someone else" in message.inner_text()
    assert "reloaded" in message.inner_text()
    polygon.refresh_from_db()
    assert polygon.label_class.key == "sinus" and polygon.version == 4, (
        "the other writer's change stands"
    )
    selected = page.evaluate("() => window.nodescopeAnnotations.selected()")
    assert selected["classKey"] == "sinus" and selected["version"] == 4

    # --- per-author layers: hide and show one's own ------------------------------------------------
    drawn = "() => Number(document.querySelector('.ns-annot-canvas').dataset.drawn)"
    assert page.evaluate(drawn) == 3
    page.evaluate(
        f"() => window.nodescopeAnnotations.showAuthor({people.pathologist.username!r}, false)"
    )
    page.wait_for_function(f"{drawn} === 0")
    page.locator(".ns-annot-layers summary").click()
    page.screenshot(path=str(SHOTS / "annot-layers.png"))
    page.locator(".ns-annot-layers input[data-author]").first.check()
    page.wait_for_function(f"{drawn} === 3")

    # A fresh page load fetches all three by bbox.
    page.reload()
    page.wait_for_selector('body[data-annotations-ready="1"]', state="attached")
    assert page.evaluate("() => window.nodescopeAnnotations.count()") == 3

    unexpected = [
        e
        for e in page.console_errors
        if "favicon" not in e and "status of 400" not in e and "status of 409" not in e
    ]
    assert not unexpected, unexpected


def polygon_area(annotation):
    from shapely.geometry import shape

    return shape(annotation.geometry).area


def test_freehand_brush_eraser_and_undo_delete(live_server, page, people, slide, label_classes):
    import math

    from annotations.models import Annotation, AnnotationHistory

    open_viewer(page, live_server, people, slide)
    on = OnSlide(page)

    # --- freehand: drag once around a circle of radius 80 px --------------------------------------
    cx, cy, r = 300, 300, 80
    ring = [
        (cx + r * math.cos(2 * math.pi * i / 48), cy + r * math.sin(2 * math.pi * i / 48))
        for i in range(49)
    ]
    page.keyboard.press("f")
    page.mouse.move(*on.at(*ring[0]))
    page.mouse.down()
    for x, y in ring[1:]:
        page.mouse.move(*on.at(x, y), steps=2)
    page.mouse.up()
    on.idle()
    region = Annotation.objects.get(slide=slide)
    assert region.label_class.key == "tumour"
    assert region.vertex_count >= 12
    assert abs(polygon_area(region) - math.pi * r * r) < 0.06 * math.pi * r * r

    # --- brush: paint outwards from the selected region; it grows by the stroke ------------------
    page.keyboard.press("b")
    page.evaluate("() => window.nodescopeAnnotations.layer.setBrush(10)")
    zoom = page.evaluate(IMAGE_ZOOM_JS)
    radius = 10 / zoom
    before = polygon_area(region)
    on.drag((cx, cy), (cx + 160, cy), steps=12)
    on.idle()
    region.refresh_from_db()
    assert region.version == 2 and region.geometry["type"] == "Polygon"
    assert abs(region.max_x - (cx + 160 + radius)) < 2.5, (region.max_x, cx + 160 + radius)
    grown = polygon_area(region) - before
    assert 0.7 * (80 * 2 * radius) < grown < 1.4 * (80 * 2 * radius + math.pi * radius**2), grown

    # --- eraser: a stroke across the whole region cuts it in two ------------------------------------
    page.keyboard.press("e")
    before = polygon_area(region)
    on.drag((cx - 20, cy - r - 30), (cx - 20, cy + r + 30), steps=12)
    on.idle()
    region.refresh_from_db()
    assert region.version == 3
    assert region.geometry["type"] == "MultiPolygon" and len(region.geometry["coordinates"]) == 2
    assert polygon_area(region) < before - 0.7 * (2 * r * 2 * radius)
    cut = region.geometry
    page.screenshot(path=str(SHOTS / "annot-brush.png"))

    # --- delete, then undo the deletion: the server restores it as it was -------------------------
    page.keyboard.press("v")
    page.keyboard.press("Delete")
    on.idle()
    region.refresh_from_db()
    assert region.deleted_at is not None
    assert page.evaluate("() => window.nodescopeAnnotations.count()") == 0
    page.keyboard.press("Control+z")
    on.idle()
    region.refresh_from_db()
    assert region.deleted_at is None and region.geometry == cut
    assert page.evaluate("() => window.nodescopeAnnotations.count()") == 1
    actions = list(
        AnnotationHistory.objects.filter(annotation=region).values_list("action", flat=True)
    )
    assert actions == ["create", "update", "update", "delete", "restore"], actions

    # Ctrl+Y redoes the deletion; Escape while drawing a polygon leaves nothing behind.
    page.keyboard.press("Control+y")
    on.idle()
    region.refresh_from_db()
    assert region.deleted_at is not None
    page.keyboard.press("p")
    on.click(600, 200)
    on.click(700, 200)
    page.keyboard.press("Escape")
    on.idle()
    assert Annotation.objects.filter(slide=slide, deleted_at__isnull=True).count() == 0
    assert not [e for e in page.console_errors if "favicon" not in e], page.console_errors
