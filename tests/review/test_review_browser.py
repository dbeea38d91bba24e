"""A full keyboard review of a generated case in Debian's Chromium (Playwright, live_server).

The lab lead logs in, opens the case queue, checks the nodes are in score order, and reviews with
the keyboard only. Node 2 has two regions at or above the threshold on one slide: n is refused;
Enter opens the review viewer at the highest-scoring region, and the viewer itself reports that
region once it is on screen (the queue's count follows); n is still refused until the reviewer
has panned to the second region, which does not count while the view is zoomed out too far.
In the viewer, n saves the region in view as "not tumour" under the class picked in the bar: a
hard-negative annotation, visible through the API. Node 3's region is shown by r, node 1 is
negative-screened; the case is signed off. The database is checked.

Needs /usr/bin/chromium and a built bundle (`cd frontend && npm install && npm run build`).
"""

from __future__ import annotations

import os

import pytest

from tests.browser import browser_marks, log_in

SCREENSHOT = os.environ.get("NODESCOPE_REVIEW_SCREENSHOT", "")

pytestmark = browser_marks("review.js")


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    yield page
    context.close()


@pytest.fixture
def review_case(transactional_db, people, tmp_path, label_classes):
    """A generated case: three nodes with real (small, generated) slides, scored by a live model.

    Scores, threshold 0.5: node 2 0.92 at (2600, 1700) of its 3000 x 2000 slide, whose heat map
    has a second maximum of 0.8 at (400, 300), two regions at or above the threshold that no
    view at a legible zoom holds together; node 3 0.61 (maximum at 600, 200); node 1 0.35
    (negative-screened). The other slides are 800 x 600.
    """

    from slides.ingest import register_slide
    from tests.factories import gradient_image, make_case, write_pyramid_tiff

    from .factories import make_heatmap, make_model_version, score_node

    case = make_case(
        people.lab,
        "S26-BROWSER",
        nodes=("level II, node 1", "level III, node 2", "level IV, node 3"),
    )
    version = make_model_version("browser-v1", threshold=0.5)
    nodes = {n.label: n for n in case.nodes.all()}
    slides = {}
    for i, (label, node) in enumerate(sorted(nodes.items())):
        size = (3000, 2000) if label == "level III, node 2" else (800, 600)
        path = write_pyramid_tiff(
            tmp_path / f"slide-{i}.tiff", gradient_image(*size, seed=i), mpp=0.5
        )
        slides[label] = register_slide(
            node=node, path=path, user=people.pathologist, synthetic=True
        )
    heatmap = make_heatmap(slides["level III, node 2"], version, max_score=0.8, x=400, y=300)
    write_overlay(heatmap, tmp_path / "heatmap.npz", width=3000, height=2000)
    score_node(nodes["level III, node 2"], version, 0.92, x=2600, y=1700)
    score_node(nodes["level IV, node 3"], version, 0.61, x=600, y=200)
    score_node(nodes["level II, node 1"], version, 0.35, x=100, y=100)
    return case, nodes


def write_overlay(heatmap, path, *, width: int, height: int) -> None:
    """A real raster for `heatmap` (stride 40 px): its maximum, 13/16, around (400, 300)."""
    import numpy as np

    from inference.heatmaps import write_raster
    from inference.records import HeatMap

    rows, cols = height // 40, width // 40
    counts = np.zeros((rows, cols), dtype=np.uint8)
    counts[6:9, 9:12] = 8
    counts[7, 10] = 13
    write_raster(path, counts=counts, denominator=16, stride_px=40.0, window_px=160.0)
    HeatMap.objects.filter(pk=heatmap.pk).update(raster_path=str(path), rows=rows, cols=cols)


def status_of(page, node) -> str:
    return page.locator(f"#node-{node.pk} .status .badge.status").inner_text()


def wait_status(page, node, text: str) -> None:
    page.wait_for_function(
        "([id, text]) => document.querySelector(`#node-${id} .status .badge.status`).textContent === text",
        arg=[node.pk, text],
    )


def press_opening_viewer(page, key: str):
    """Press `key`, which opens the review viewer in its named window; return that page, ready."""
    with page.context.expect_page() as opened:
        page.keyboard.press(key)
    viewer = opened.value
    viewer.set_default_timeout(30_000)
    viewer.js_errors = []
    viewer.on("pageerror", lambda exc: viewer.js_errors.append(str(exc)))
    viewer.wait_for_selector('body[data-review-ready="1"]', state="attached")
    viewer.wait_for_selector('body[data-viewer-ready="1"]', state="attached")
    return viewer


def wait_viewed(viewer, text: str) -> None:
    viewer.wait_for_function(
        "text => document.getElementById('review-viewed-count').textContent === text", arg=text
    )


def wait_queue_count(page, node, text: str) -> None:
    page.wait_for_function(
        "([id, text]) => document.querySelector(`#node-${id} .regions-viewed`).textContent === text",
        arg=[node.pk, text],
    )


def show(viewer, x: float, y: float, zoom: float) -> None:
    """Pan and zoom the viewer (as a drag and a scroll would) to level-0 (x, y) at `zoom`."""
    viewer.evaluate(
        """([x, y, zoom]) => {
            const v = window.nodescopeViewer;
            const item = v.world.getItemAt(0);
            v.viewport.zoomTo(item.imageToViewportZoom(zoom), null, true);
            v.viewport.panTo(item.imageToViewportCoordinates(x, y), true);
        }""",
        [x, y, zoom],
    )


def refused_negative(page) -> str:
    page.evaluate("() => { document.getElementById('review-message').dataset.kind = ''; }")
    page.keyboard.press("n")
    page.wait_for_function(
        "() => document.getElementById('review-message').dataset.kind === 'error'"
    )
    return page.locator("#review-message").inner_text()


def test_full_keyboard_review_and_sign_off(live_server, page, people, review_case):
    from annotations.models import Annotation
    from audit.models import AuditEvent
    from review.models import CaseSignOff, ReviewDecision, ReviewerCorrection, ViewedRegion
    from slides.models import Case

    case, nodes = review_case
    node1, node2, node3 = (
        nodes["level II, node 1"],
        nodes["level III, node 2"],
        nodes["level IV, node 3"],
    )
    log_in(page, live_server, people.lab_lead)
    page.goto(f"{live_server.url}/review/cases/{case.pk}/")
    page.wait_for_selector('body[data-review-ready="1"]', state="attached")

    labels = page.locator("tr.review-row .node-label").all_inner_texts()
    assert labels == ["level III, node 2", "level IV, node 3", "level II, node 1"]
    assert page.locator("tr.review-row.selected .node-label").inner_text() == "level III, node 2"
    thumbs = page.locator("tr.review-row img.thumb")
    assert thumbs.count() == 3
    wait_queue_count(page, node2, "0/2")

    # Node 2 (0.92): a negative confirmation is refused until both regions have been viewed.
    assert "cannot be confirmed negative" in refused_negative(page)
    assert status_of(page, node2) == "Unreviewed"
    viewer = press_opening_viewer(page, "Enter")
    slide2 = node2.slides.get()
    assert f"/review/nodes/{node2.pk}/slides/{slide2.pk}/view/?x=2600&y=1700&zoom=1.0" in (
        viewer.url
    )
    # The viewer reports the region it opened at once it is drawn; the queue hears of it.
    wait_viewed(viewer, "1/2 viewed")
    wait_queue_count(page, node2, "1/2")
    assert "1 of 2 not viewed" in refused_negative(page)

    # The second region, zoomed out to 0.1 screen px per slide px: on screen, but not legible.
    show(viewer, 400, 300, 0.1)
    viewer.wait_for_timeout(2000)
    assert viewer.locator("#review-viewed-count").inner_text() == "1/2 viewed"
    assert viewer.locator("#review-not-tumour").is_disabled()
    # Panned to it at a legible zoom: reported by the viewer, and then n is allowed.
    show(viewer, 420, 320, 0.6)
    wait_viewed(viewer, "2/2 viewed")
    wait_queue_count(page, node2, "2/2")

    # "Not tumour" on the region in view: class picked in the bar, then n in the viewer.
    assert viewer.locator("#review-not-tumour").is_enabled()
    viewer.select_option("#review-correction-class", "sinus")
    viewer.locator("#viewer .openseadragon-canvas").first.focus()
    viewer.keyboard.press("n")
    viewer.wait_for_selector("body[data-last-correction]", state="attached")
    feedback = viewer.locator("#review-message")
    assert "saved as not tumour (Sinus)" in feedback.inner_text()
    assert feedback.get_attribute("data-kind") == "ok"
    annotation_id = int(viewer.evaluate("() => document.body.dataset.lastCorrection"))
    listed = viewer.request.get(f"{live_server.url}/api/nodes/{node2.pk}/corrections/").json()
    assert [(c["annotation"], c["label_class"]) for c in listed["corrections"]] == [
        (annotation_id, "sinus")
    ]
    if SCREENSHOT:
        viewer.screenshot(path=SCREENSHOT.replace(".png", "-viewer.png"))
    assert viewer.js_errors == []
    viewer.close()

    page.bring_to_front()
    page.keyboard.press("n")
    wait_status(page, node2, "Confirmed negative")
    assert page.locator("tr.review-row.selected .node-label").inner_text() == "level IV, node 3"

    # Node 3 (0.61): r opens its high-scoring region in the viewer, which reports it; then n.
    viewer = press_opening_viewer(page, "r")
    assert "x=600&y=200" in viewer.url
    wait_viewed(viewer, "1/1 viewed")
    wait_queue_count(page, node3, "1/1")
    viewer.close()
    page.keyboard.press("n")
    wait_status(page, node3, "Confirmed negative")

    # Node 1 (0.35, negative-screened): k back and j forward, then n straight away.
    page.keyboard.press("k")
    assert page.locator("tr.review-row.selected .node-label").inner_text() == "level IV, node 3"
    page.keyboard.press("ArrowDown")
    assert page.locator("tr.review-row.selected .node-label").inner_text() == "level II, node 1"
    page.keyboard.press("n")
    wait_status(page, node1, "Confirmed negative")

    # Sign off.
    button = page.locator("#sign-off-button")
    assert button.is_enabled()
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_navigation():
        button.click()
    assert page.locator("#case-status").inner_text() == "Signed off"
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT, full_page=True)
    assert page.js_errors == []

    case.refresh_from_db()
    assert case.status == Case.Status.SIGNED_OFF
    decisions = {d.node_id: d for d in ReviewDecision.objects.all()}
    assert {n: d.status for n, d in decisions.items()} == {
        node2.pk: "confirmed_negative",
        node3.pk: "confirmed_negative",
        node1.pk: "confirmed_negative",
    }
    assert all(d.user == people.lab_lead for d in decisions.values())
    assert [r["viewed"] for r in decisions[node2.pk].regions] == [True, True]
    assert [r["viewed"] for r in decisions[node3.pk].regions] == [True]
    assert decisions[node1.pk].regions[0]["required"] is False
    # Every region was reported by the viewer, with the view that showed it.
    viewed = list(ViewedRegion.objects.filter(node=node2).order_by("id"))
    assert len(viewed) == 2 and all(v.zoom >= 0.25 and len(v.viewport) == 4 for v in viewed)
    assert set(ViewedRegion.objects.values_list("node_id", flat=True)) == {node2.pk, node3.pk}
    correction = ReviewerCorrection.objects.get()
    assert correction.node == node2 and correction.annotation_id == annotation_id
    annotation = Annotation.objects.get(pk=annotation_id)
    assert annotation.label_class.key == "sinus" and annotation.label_class.kind == "hard-negative"
    assert annotation.slide_id == node2.slides.get().pk
    assert CaseSignOff.objects.get().decisions == {str(k): d.pk for k, d in decisions.items()}
    assert AuditEvent.objects.filter(action="review decision").count() == 3
    assert AuditEvent.objects.filter(action="reviewer correction").count() == 1
    assert AuditEvent.objects.filter(action="case signed off").count() == 1


def test_triage_confirms_negative_screened_nodes_with_the_keyboard(
    live_server, page, people, review_case
):
    from review.models import ReviewDecision

    case, nodes = review_case
    log_in(page, live_server, people.lab_lead)
    page.goto(f"{live_server.url}/review/triage/")
    page.wait_for_selector('body[data-review-ready="1"]', state="attached")
    # Only the negative-screened node is listed (0.35 < 0.5).
    assert page.locator("tr.review-row .node-label").all_inner_texts() == ["level II, node 1"]
    page.keyboard.press("n")
    node1 = nodes["level II, node 1"]
    wait_status(page, node1, "Confirmed negative")
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT.replace(".png", "-triage.png"), full_page=True)
        page.goto(f"{live_server.url}/review/metrics/")
        page.screenshot(path=SCREENSHOT.replace(".png", "-metrics.png"), full_page=True)
    assert page.js_errors == []
    decision = ReviewDecision.objects.get(node=node1)
    assert decision.status == "confirmed_negative" and decision.user == people.lab_lead
    # Enter opens the node's case queue with the node selected.
    page.goto(f"{live_server.url}/review/triage/?status=any")
    page.wait_for_selector('body[data-review-ready="1"]', state="attached")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.endswith(f"/review/cases/{case.pk}/#node-{node1.pk}")
    page.wait_for_selector('body[data-review-ready="1"]', state="attached")
    assert page.locator("tr.review-row.selected .node-label").inner_text() == "level II, node 1"
