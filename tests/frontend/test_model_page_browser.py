"""A model's page in Chromium: lock the threshold from the calibration preview, then promote."""

from __future__ import annotations

import pytest

from inference.records import ModelVersion
from slides.access import grant_role
from slides.models import Role
from tests.browser import browser_marks, log_in, shot
from tests.factories import make_case
from tests.review.factories import make_model_version, make_slide, score_node

pytestmark = browser_marks("main.js")


@pytest.fixture
def candidate(transactional_db, people):
    """A primary model without a threshold that has scored four nodes of known truth."""
    version = make_model_version("candidate", threshold=None, live=False)
    case = make_case(people.lab, "S26-0700", nodes=("p1", "p2", "n1", "n2"))
    for node, score in zip(case.nodes.order_by("label"), (0.25, 0.5, 0.75, 0.9375), strict=True):
        node.ground_truth = "positive" if node.label.startswith("p") else "negative"
        node.save(update_fields=["ground_truth"])
        make_slide(node, f"{node.label}-1")
        score_node(node, version, score, threshold=None)
    grant_role(people.admin, Role.PLATFORM_ADMIN)
    return version


def test_lock_then_promote(page, live_server, people, candidate, eager_tasks):
    log_in(page, live_server, people.admin)
    page.goto(f"{live_server.url}/models/{candidate.pk}/")
    promote = page.locator("#promote button[type=submit]")
    assert promote.is_disabled()
    assert "no locked threshold" in page.locator("#promote-blocked").inner_text()
    # n1 0.25 and n2 0.5 are negative, p1 0.75 and p2 0.9375 positive: the rule gives 0.75
    page.locator("#threshold-preview").wait_for()
    assert page.locator("#preview-threshold").inner_text() == "0.7500"
    assert (
        "4 calibration nodes (2 positive, 2 negative)"
        in page.locator("#threshold-source").inner_text()
    )
    shot(page, "model-threshold-preview.png")
    dialogs: list[str] = []

    def accept(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.click("#threshold-lock")
    page.locator("#threshold-value").wait_for()
    assert page.locator("#threshold-value").inner_text() == "0.7500"
    assert ModelVersion.objects.get(pk=candidate.pk).threshold == 0.75
    assert "Lock the threshold at 0.7500" in dialogs[0]
    assert promote.is_enabled()
    promote.click()
    page.locator("h1 .badge", has_text="live").wait_for()
    assert "Every slide (4) will be rescored" in dialogs[1]
    assert ModelVersion.objects.get(pk=candidate.pk).is_live
    shot(page, "model-locked-live.png")


def test_a_set_that_cannot_calibrate_says_why(page, live_server, people, candidate):
    ids = ",".join(
        str(pk)
        for pk in candidate.node_scores.filter(node__ground_truth="negative").values_list(
            "node_id", flat=True
        )
    )
    log_in(page, live_server, people.admin)
    page.goto(f"{live_server.url}/models/{candidate.pk}/")
    page.fill("#threshold-form input[name=nodes]", ids)
    page.click("#threshold-refresh")
    refused = page.locator("#threshold-refused")
    refused.wait_for()
    assert "all 2 calibration nodes are negative" in refused.inner_text()
    assert page.locator("#threshold-lock").is_disabled()


def test_a_run_can_start_from_a_trained_model(page, live_server, people, candidate):
    """The launch form's "Start from" fine-tunes: the recipe names the model's weights and its
    network settings (the request is intercepted; nothing is launched)."""
    import json

    ModelVersion.objects.filter(pk=candidate.pk).update(
        hyperparameters={"model_kwargs": {"padding": "valid", "width_mult": 0.5}}
    )
    sent: list[dict] = []

    def hold(route):
        sent.append(json.loads(route.request.post_data or "{}"))
        route.fulfill(status=400, content_type="application/json", body='{"detail": "held"}')

    log_in(page, live_server, people.admin)
    page.route("**/api/training-runs/", hold)
    page.goto(f"{live_server.url}/models/")
    page.select_option("#launch-form select[name=start_from]", str(candidate.pk))
    page.select_option("#launch-form select[name=source]", "image-folder")
    page.fill("#launch-form input[name=folder_path]", "/import/patches")
    page.click("#launch-form button[type=submit]")
    page.wait_for_function("document.getElementById('launch-error').textContent === 'held'")
    recipe = sent[-1]["recipe"]
    assert recipe["pretrained_weights"] == candidate.weights_path
    assert recipe["model_kwargs"] == {"padding": "valid", "width_mult": 0.5}
    assert sent[-1]["architecture"] == candidate.architecture
