"""The slide viewer in a real browser: Debian's Chromium driven by Playwright against live_server.

Logs in through the login form, walks case list → case → "View", waits for the first complete
draw, then checks the tiles (all 200 image/jpeg, none failed), that the canvas shows the slide,
and that the scale bar and magnification readout agree with the zoom.

Needs /usr/bin/chromium and a built bundle (`cd frontend && npm install && npm run build`).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from tests.browser import browser_marks

SCREENSHOT = Path(os.environ.get("NODESCOPE_VIEWER_SCREENSHOT", "/tmp/viewer.png"))
# Set to a folder to also keep screenshots of the case list and case page (for reviewing styles).
PAGE_SHOTS = os.environ.get("NODESCOPE_PAGE_SCREENSHOTS", "")
TILE_URL = re.compile(r"/api/slides/\d+/tiles/\d+/\d+/\d+\.jpg$")

pytestmark = browser_marks("viewer.js")


class TileLog:
    """Every tile response and failed tile request (`/api/slides/<id>/tiles/…`) the page sees."""

    def __init__(self, page):
        self.responses: list[tuple[str, int, str]] = []
        self.failed: list[str] = []
        page.on("response", self._response)
        page.on("requestfailed", self._failed)

    def _response(self, response):
        if TILE_URL.search(response.url.split("?")[0]):
            self.responses.append(
                (response.url, response.status, response.headers.get("content-type", ""))
            )

    def _failed(self, request):
        # Only tiles: a case-page thumbnail may be aborted by navigating on to the viewer.
        if TILE_URL.search(request.url.split("?")[0]):
            self.failed.append(f"{request.url}: {request.failure}")


def log_in(page, live_server, people):
    from tests.factories import PASSWORD

    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", people.pathologist.username)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form[action$='/login/'] button[type=submit]").click()
    page.wait_for_url(f"{live_server.url}/")
    if PAGE_SHOTS:
        Path(PAGE_SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(PAGE_SHOTS) / "case-list.png"), full_page=True)


def open_viewer(page, live_server, people, case, slide):
    log_in(page, live_server, people)
    page.get_by_role("link", name=case.accession_number, exact=True).click()
    page.wait_for_url(f"{live_server.url}/cases/{case.id}/")
    if PAGE_SHOTS:
        Path(PAGE_SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(PAGE_SHOTS) / "case.png"), full_page=True)
    page.get_by_role("link", name="View", exact=True).click()
    page.wait_for_url(f"{live_server.url}/slides/{slide.id}/view/")
    page.wait_for_selector('body[data-viewer-ready="1"]', state="attached", timeout=30_000)


VIEW_STATE_JS = """() => {
    const v = window.nodescopeViewer;
    const item = v.world.getItemAt(0);
    const bar = document.querySelector('.ns-scalebar');
    return {
        imageZoom: item.viewportToImageZoom(v.viewport.getZoom(true)),
        scaleText: bar.querySelector('.ns-scalebar-label').textContent,
        scaleHidden: bar.hidden,
        scaleUm: Number(bar.dataset.lengthUm || 'NaN'),
        scalePx: bar.querySelector('.ns-scalebar-bar').getBoundingClientRect().width,
        magText: document.querySelector('.ns-magnification').textContent,
        magHidden: document.querySelector('.ns-magnification').hidden,
        navigator: !!(v.navigator && v.navigator.element && v.navigator.element.offsetWidth > 0),
        drawer: v.drawer.getType(),
        tileErrors: v.nodescope.tileErrors,
    };
}"""

CANVAS_STATS_JS = """() => {
    // Grey-level mean and spread of the drawn (non-transparent) pixels of OpenSeadragon's canvas.
    const canvas = window.nodescopeViewer.drawer.canvas;
    const ctx = canvas.getContext('2d');
    const {width, height} = canvas;
    const data = ctx.getImageData(0, 0, width, height).data;
    let n = 0, sum = 0, sumSq = 0, total = 0;
    for (let i = 0; i < data.length; i += 16) {  // every 4th pixel
        total++;
        if (data[i + 3] === 0) continue;
        const grey = (data[i] + data[i + 1] + data[i + 2]) / 3;
        sum += grey; sumSq += grey * grey; n++;
    }
    const mean = n ? sum / n : 0;
    const std = n ? Math.sqrt(Math.max(0, sumSq / n - mean * mean)) : 0;
    return {width, height, mean, std, drawnFraction: n / total};
}"""


def test_viewer_opens_slide_with_tiles_scale_bar_and_magnification(
    live_server, page, people, case, slide
):
    tiles = TileLog(page)
    open_viewer(page, live_server, people, case, slide)

    # Slim bar with case, node and slide, and a way back to the case.
    bar = page.locator(".viewer-bar")
    assert case.accession_number in bar.inner_text()
    assert slide.node.label in bar.inner_text()
    assert slide.name in bar.inner_text()
    assert page.locator(".viewer-back").get_attribute("href") == f"/cases/{case.id}/"
    assert not page.locator("body > header.topbar").is_visible()

    # Tiles: every one answered 200 image/jpeg, none failed.
    assert tiles.responses, "the viewer requested no tiles"
    bad = [r for r in tiles.responses if r[1] != 200 or not r[2].startswith("image/jpeg")]
    assert not bad, f"bad tile responses: {bad}"
    assert not tiles.failed, f"failed tile requests: {tiles.failed}"

    state = page.evaluate(VIEW_STATE_JS)
    assert state["tileErrors"] == 0
    assert state["drawer"] == "canvas"
    assert state["navigator"], "the navigator is not shown"

    # The canvas shows the (gradient + noise) slide, not a blank or uniform background.
    stats = page.evaluate(CANVAS_STATS_JS)
    assert stats["width"] > 0 and stats["height"] > 0
    assert stats["drawnFraction"] > 0.5, stats
    assert stats["std"] > 15, f"viewer canvas looks blank: {stats}"

    # Scale bar: a round length whose drawn width matches mpp and the zoom.
    mpp = slide.mpp
    assert mpp
    assert not state["scaleHidden"]
    assert re.fullmatch(r"\d+(\.\d+)? (µm|mm)", state["scaleText"]), state["scaleText"]
    assert state["scaleUm"] in {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000}
    expected_px = state["scaleUm"] / mpp * state["imageZoom"]
    assert abs(state["scalePx"] - expected_px) < 1.5, (state, expected_px)
    assert 10 < state["scalePx"] <= 161

    # Magnification readout: level-0 objective power times the image zoom.
    base_mag = slide.magnification or 10 / mpp
    assert not state["magHidden"]
    assert state["magText"] == f"{base_mag * state['imageZoom']:.1f}×"

    # Keyboard navigation (OpenSeadragon's): each "=" / "+" zooms in by 10 %; the readouts follow.
    page.evaluate("() => window.nodescopeViewer.canvas.focus()")
    for _ in range(4):
        page.keyboard.press("Equal")
    page.wait_for_function(
        f"() => window.nodescopeViewer.world.getItemAt(0).viewportToImageZoom("
        f"window.nodescopeViewer.viewport.getZoom(true)) > {state['imageZoom'] * 1.3}"
    )
    page.wait_for_timeout(1200)  # let the spring animation settle
    zoomed = page.evaluate(VIEW_STATE_JS)
    assert zoomed["magText"] == f"{base_mag * zoomed['imageZoom']:.1f}×"
    assert zoomed["magText"] != state["magText"]
    assert abs(zoomed["scalePx"] - zoomed["scaleUm"] / mpp * zoomed["imageZoom"]) < 1.5
    page.keyboard.press("0")  # home
    page.wait_for_timeout(1200)

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    png = page.locator("#viewer").screenshot()
    from PIL import Image, ImageStat

    shot = Image.open(io.BytesIO(png)).convert("L")
    assert max(ImageStat.Stat(shot).stddev) > 15, "the viewer screenshot looks blank"

    assert not tiles.failed
    assert not [e for e in page.console_errors if "favicon" not in e], page.console_errors


def test_viewer_without_scale_hides_scale_bar_and_derives_magnification(
    live_server, page, people, case, slide
):
    from slides.models import Slide

    # Magnification unknown but µm/px known: the readout derives it as 10 / mpp.
    Slide.objects.filter(pk=slide.pk).update(magnification=None)
    open_viewer(page, live_server, people, case, slide)
    state = page.evaluate(VIEW_STATE_JS)
    assert not state["scaleHidden"]
    assert state["magText"] == f"{10 / slide.mpp * state['imageZoom']:.1f}×"

    # Neither known: no scale bar, no magnification, the slide still shows.
    Slide.objects.filter(pk=slide.pk).update(mpp_x=None, mpp_y=None, magnification=None)
    page.reload()
    page.wait_for_selector('body[data-viewer-ready="1"]', state="attached")
    state = page.evaluate(VIEW_STATE_JS)
    assert state["scaleHidden"] and state["magHidden"]
    assert not page.locator(".ns-scalebar").is_visible()
    assert page.evaluate(CANVAS_STATS_JS)["std"] > 15


@pytest.mark.shared_data
@pytest.mark.parametrize("filename", ["CMU-1-Small-Region.svs", "CMU-1-Small-Region.pyramid.tiff"])
def test_viewer_shows_real_slide(live_server, page, people, case, transactional_db, filename):
    """A real H&E slide (240 px SVS tiles, cropped edge tiles) through openslide and tiff sources."""
    from slides.ingest import register_slide
    from tests.conftest import CMU_DIR

    if not (CMU_DIR / filename).exists():
        pytest.skip("../shared/data is not beside this clone (real slides live there)")
    node = case.nodes.order_by("label").first()
    slide = register_slide(node=node, path=CMU_DIR / filename, user=people.pathologist)
    tiles = TileLog(page)
    open_viewer(page, live_server, people, case, slide)

    assert tiles.responses and not tiles.failed
    assert all(
        status == 200 and ctype.startswith("image/jpeg") for _, status, ctype in tiles.responses
    )
    state = page.evaluate(VIEW_STATE_JS)
    assert state["tileErrors"] == 0
    assert (
        state["magText"] == f"{(slide.magnification or 10 / slide.mpp) * state['imageZoom']:.1f}×"
    )
    assert state["scaleUm"] in {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000}
    # H&E on glass: varied, mostly light pixels.
    stats = page.evaluate(CANVAS_STATS_JS)
    assert stats["drawnFraction"] > 0.3 and stats["std"] > 10 and stats["mean"] > 120, stats

    # Zoom to full resolution and pan a little: the deepest level's (edge) tiles load too.
    page.evaluate(
        "() => { const v = window.nodescopeViewer; const item = v.world.getItemAt(0);"
        " v.viewport.zoomTo(item.imageToViewportZoom(1), null, true); }"
    )
    page.evaluate("() => window.nodescopeViewer.canvas.focus()")
    for key in ["ArrowRight", "ArrowRight", "ArrowDown"]:
        page.keyboard.press(key)

    def levels_seen() -> set[int]:
        return {int(url.split("/tiles/")[1].split("/")[0]) for url, _, _ in tiles.responses}

    # "fully loaded" can still describe the previous view for a frame or two after the zoom:
    # first wait for the deepest level's tiles to arrive, then for the view to settle
    for _ in range(150):
        if slide.levels - 1 in levels_seen():
            break
        page.wait_for_timeout(100)
    page.wait_for_function(
        "() => { const v = window.nodescopeViewer; return v.world.getItemAt(0).getFullyLoaded()"
        " && v.viewport.getZoom(true) === v.viewport.getZoom(false); }"
    )
    assert not tiles.failed
    assert all(status == 200 for _, status, _ in tiles.responses)
    levels = levels_seen()
    assert slide.levels - 1 in levels, levels
    state = page.evaluate(VIEW_STATE_JS)
    assert state["magText"] == f"{(slide.magnification or 10 / slide.mpp):.1f}×"
    page.screenshot(path=str(SCREENSHOT.with_name(f"viewer-{Path(filename).suffix[1:]}.png")))
    assert not [e for e in page.console_errors if "favicon" not in e], page.console_errors
