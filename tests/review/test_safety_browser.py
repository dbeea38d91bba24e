"""The safety rule in the browser without a locked threshold: a node at 1.00 cannot be confirmed
negative unseen through the keyboard, the button or the API (the review page's own calls)."""

from __future__ import annotations

import pytest

from tests.browser import browser_marks, log_in

from .test_review_browser import status_of

pytestmark = browser_marks("review.js")


@pytest.fixture
def hot_case(transactional_db, people, tmp_path, label_classes):
    """A node scoring 1.00 under a live model with no threshold, on a real (small) slide."""
    from slides.ingest import register_slide
    from tests.factories import gradient_image, make_case, write_pyramid_tiff

    from .factories import make_model_version, score_node

    case = make_case(people.lab, "S26-HOT", nodes=("node at one",))
    node = case.nodes.get()
    version = make_model_version("no-threshold", threshold=None)
    path = write_pyramid_tiff(tmp_path / "hot.tiff", gradient_image(800, 600, seed=3), mpp=0.5)
    register_slide(node=node, path=path, user=people.pathologist, synthetic=True)
    score_node(node, version, 1.0, x=400, y=300)
    return case, node


def test_a_node_at_one_cannot_be_confirmed_negative_unseen_without_a_threshold(
    live_server, page, people, hot_case
):
    from review.models import ReviewDecision

    case, node = hot_case
    log_in(page, live_server, people.pathologist)
    page.goto(f"{live_server.url}/review/cases/{case.pk}/")
    page.wait_for_selector('body[data-review-ready="1"]', state="attached")
    assert "no locked threshold" in page.locator("main").inner_text()

    def refused(action) -> str:
        page.evaluate("() => { document.getElementById('review-message').dataset.kind = ''; }")
        action()
        page.wait_for_function(
            "() => document.getElementById('review-message').dataset.kind === 'error'"
        )
        return page.locator("#review-message").inner_text()

    by_key = refused(lambda: page.keyboard.press("n"))
    assert "cannot be confirmed negative" in by_key and "no locked threshold" in by_key
    by_button = refused(
        lambda: page.locator(f"#node-{node.pk} button[data-decide=confirmed_negative]").click()
    )
    assert "cannot be confirmed negative" in by_button
    api = page.request.post(
        f"{live_server.url}/api/nodes/{node.pk}/decisions/",
        data={"status": "confirmed_negative", "based_on": None},
        headers={
            "X-CSRFToken": page.evaluate(
                "() => document.getElementById('review-page').dataset.csrf"
            )
        },
    )
    assert api.status == 400 and api.json()["code"] == "regions_not_viewed"
    assert status_of(page, node) == "Unreviewed"
    assert not ReviewDecision.objects.filter(node=node).exists()
