"""The reading page in a real browser (Debian's Chromium through Playwright, live_server): the
reader sees each image in the viewer, answers with the buttons and a confidence, and is moved on
to their next image; the page names no case, node or image."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.browser import browser_marks, log_in

pytestmark = browser_marks("viewer.js")
SCREENSHOT = Path(os.environ.get("NODESCOPE_READING_SCREENSHOT", "/tmp/reading.png"))
TILE_URL = re.compile(r"/api/studies/\d+/reading/images/\d+/tiles/\d+/\d+/\d+\.jpg$")


@pytest.fixture
def study(transactional_db, people, case, tiny_tiff, tmp_path):
    from slides.ingest import register_slide
    from slides.models import Node
    from studies import services
    from tests.factories import gradient_image, write_pyramid_tiff

    nodes = list(case.nodes.order_by("label"))
    Node.objects.filter(pk=nodes[0].pk).update(ground_truth="positive")
    other = write_pyramid_tiff(tmp_path / "second.tiff", gradient_image(900, 600, seed=3), mpp=0.5)
    slides = [
        register_slide(node=nodes[0], path=tiny_tiff, user=people.pathologist),
        register_slide(node=nodes[1], path=other, user=people.pathologist),
    ]
    created = services.create_study(
        user=people.lab_lead,
        data={
            "name": "Browser study",
            "lab": people.lab.pk,
            "instructions": "Call each image.",
            "images": [s.pk for s in slides],
            "readers": [people.pathologist.pk],
        },
    )
    return services.open_study(study=created, user=people.lab_lead)


def test_reader_answers_every_image_in_the_viewer(page, live_server, people, case, study):
    from studies.models import ReaderAnswer, StudyReader
    from tests.factories import PASSWORD

    tiles: list[tuple[str, int]] = []
    slide_routes: list[str] = []  # the slide's own routes would name its id
    page.on(
        "response",
        lambda r: tiles.append((r.url, r.status)) if TILE_URL.search(r.url.split("?")[0]) else None,
    )
    page.on("request", lambda r: slide_routes.append(r.url) if "/slides/" in r.url else None)
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", people.pathologist.username)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form[action$='/login/'] button[type=submit]").click()
    page.wait_for_url(f"{live_server.url}/")
    page.goto(f"{live_server.url}/studies/")
    page.get_by_role("link", name="Read", exact=True).click()
    order = StudyReader.objects.get(study=study, user=people.pathologist).order
    for position, label in ((1, "Benign"), (2, "Metastatic")):
        page.wait_for_selector('body[data-viewer-ready="1"]', state="attached", timeout=30_000)
        assert page.locator("#reading-position").inner_text() == str(position)
        text = page.locator("body").inner_text()
        for secret in (case.accession_number, "level II", "tiny", "second"):
            assert secret not in text
        if position == 1:
            page.screenshot(path=str(SCREENSHOT))
        page.get_by_label("4").check()
        page.get_by_role("button", name=label, exact=True).click()
    page.wait_for_selector("text=You have answered all 2 images")
    answers = {
        a.image_id: (a.label, a.confidence)
        for a in ReaderAnswer.objects.filter(study=study, reader=people.pathologist)
    }
    assert answers == {order[0]: ("benign", 4), order[1]: ("metastatic", 4)}
    assert tiles and all(status == 200 for _, status in tiles)
    assert slide_routes == []
    assert page.console_errors == []


def test_closing_a_study_asks_first(page, live_server, people, study):
    from studies.models import ReaderStudy

    log_in(page, live_server, people.lab_lead)
    page.goto(f"{live_server.url}/studies/{study.pk}/")
    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    page.click("#close-study")
    page.wait_for_timeout(300)
    assert asked == ["Close the study? Readers can no longer answer."]
    assert ReaderStudy.objects.get(pk=study.pk).status == ReaderStudy.Status.OPEN
    page.once("dialog", lambda d: d.accept())
    with page.expect_navigation():
        page.click("#close-study")
    assert ReaderStudy.objects.get(pk=study.pk).status == ReaderStudy.Status.CLOSED


def test_the_model_answers_are_followed_in_place(page, live_server, people, study):
    from studies.models import ReaderStudy
    from tests.review.factories import make_model_version

    version = make_model_version("study-model", threshold=0.5)
    ReaderStudy.objects.filter(pk=study.pk).update(
        model_version=version, model_status=ReaderStudy.ModelStatus.QUEUED
    )
    log_in(page, live_server, people.lab_lead)
    page.goto(f"{live_server.url}/studies/{study.pk}/")
    assert page.locator("#study-model-status").inner_text() == "Queued"
    # the worker moves the job on (as the model-answers task does); the page follows
    ReaderStudy.objects.filter(pk=study.pk).update(model_status=ReaderStudy.ModelStatus.RUNNING)
    page.wait_for_function(
        "() => document.getElementById('study-model-status').textContent === 'Running'"
    )
    ReaderStudy.objects.filter(pk=study.pk).update(model_status=ReaderStudy.ModelStatus.DONE)
    page.wait_for_function(
        "() => document.getElementById('study-page').dataset.modelStatus === 'done'"
    )
    assert page.locator("#study-model-status").inner_text() == "Done"
