"""A full keyboard review of a generated case in Debian's Chromium (Playwright, live_server).

The lab lead logs in, opens the case queue, checks the nodes are in score order, and reviews with
the keyboard only: n on a positive-screened node is refused until its region is opened (Enter
opens the viewer at the highest-scoring region and records it), p confirms positive, r opens the
next high-scoring region, n confirms negative; then signs the case off. The database is checked.

Needs /usr/bin/chromium and a built bundle (`cd frontend && npm install && npm run build`).
"""

from __future__ import annotations

import os

import pytest

from tests.browser import browser_marks

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
def review_case(transactional_db, people, tmp_path):
    """A generated case: three nodes with real (tiny, generated) slides, scored by a live model.

    Scores: node 2 0.92 (heat map maximum at 400, 300), node 3 0.61 (maximum at 600, 200),
    node 1 0.35 (negative-screened), threshold 0.5.
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
        path = write_pyramid_tiff(
            tmp_path / f"slide-{i}.tiff", gradient_image(800, 600, seed=i), mpp=0.5
        )
        slides[label] = register_slide(
            node=node, path=path, user=people.pathologist, synthetic=True
        )
    heatmap = make_heatmap(slides["level III, node 2"], version, max_score=0.92, x=400, y=300)
    score_node(nodes["level III, node 2"], version, 0.92, heatmap=heatmap)
    score_node(nodes["level IV, node 3"], version, 0.61, x=600, y=200)
    score_node(nodes["level II, node 1"], version, 0.35, x=100, y=100)
    return case, nodes


def log_in(page, live_server, user):
    from tests.factories import PASSWORD

    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form[action$='/login/'] button[type=submit]").click()
    page.wait_for_url(f"{live_server.url}/")


def status_of(page, node) -> str:
    return page.locator(f"#node-{node.pk} .status .badge.status").inner_text()


def wait_status(page, node, text: str) -> None:
    page.wait_for_function(
        "([id, text]) => document.querySelector(`#node-${id} .status .badge.status`).textContent === text",
        arg=[node.pk, text],
    )


def press_opening_viewer(page, key: str, live_server):
    """Press `key`, which opens the viewer in its named window; close that window again."""
    with page.context.expect_page() as opened:
        page.keyboard.press(key)
    viewer = opened.value
    viewer.wait_for_load_state("domcontentloaded")
    url = viewer.url
    viewer.close()
    return url


def test_full_keyboard_review_and_sign_off(live_server, page, people, review_case):
    from audit.models import AuditEvent
    from review.models import CaseSignOff, ReviewDecision, ViewedRegion
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

    # Node 2 (0.92): a negative confirmation is refused until its region is opened.
    page.keyboard.press("n")
    page.wait_for_function(
        "() => document.getElementById('review-message').dataset.kind === 'error'"
    )
    assert "cannot be confirmed negative" in page.locator("#review-message").inner_text()
    assert status_of(page, node2) == "Unreviewed"
    url = press_opening_viewer(page, "Enter", live_server)
    assert f"/slides/{node2.slides.get().pk}/view/?x=400&y=300" in url and "heatmap=1" in url
    page.wait_for_function(
        f"() => document.querySelector('#node-{node2.pk} .regions-viewed').textContent === '1/1'"
    )
    page.keyboard.press("p")
    wait_status(page, node2, "Confirmed positive")
    assert page.locator("tr.review-row.selected .node-label").inner_text() == "level IV, node 3"

    # Node 3 (0.61): r opens its high-scoring region; then n is allowed.
    url = press_opening_viewer(page, "r", live_server)
    assert "x=600&y=200" in url
    page.wait_for_function(
        f"() => document.querySelector('#node-{node3.pk} .regions-viewed').textContent === '1/1'"
    )
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
        node2.pk: "confirmed_positive",
        node3.pk: "confirmed_negative",
        node1.pk: "confirmed_negative",
    }
    assert all(d.user == people.lab_lead for d in decisions.values())
    assert [r["viewed"] for r in decisions[node3.pk].regions] == [True]
    assert decisions[node1.pk].regions[0]["required"] is False
    assert set(ViewedRegion.objects.values_list("node_id", flat=True)) == {node2.pk, node3.pk}
    assert CaseSignOff.objects.get().decisions == {str(k): d.pk for k, d in decisions.items()}
    assert AuditEvent.objects.filter(action="review decision").count() == 3
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
