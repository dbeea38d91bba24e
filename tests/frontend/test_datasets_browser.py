"""The Datasets page in Chromium: an admin previews and creates a snapshot; a lab lead reads."""

from __future__ import annotations

import pytest

from annotations.models import Dataset
from tests.annotations.test_datasets import files, tissue_cache, world  # noqa: F401
from tests.browser import browser_marks, log_in, shot

pytestmark = browser_marks("main.js")


@pytest.fixture
def transactional_world(transactional_db, seeded, world):  # noqa: F811
    return world


def test_admin_previews_and_creates_a_snapshot(page, live_server, transactional_world, eager_tasks):
    world = transactional_world
    log_in(page, live_server, world.people.admin)
    page.goto(f"{live_server.url}/datasets/")
    assert page.locator("#dataset-create").is_disabled()
    page.fill("input[name=name]", "nodes-december")
    page.fill("input[name=val_fraction]", "0.34")
    page.click("#dataset-preview")
    sides = page.locator("#preview-sides tr")
    sides.first.wait_for()
    assert sides.count() == 2
    assert "Training" in sides.nth(0).inner_text() and "Validation" in sides.nth(1).inner_text()
    shot(page, "datasets-preview.png")
    page.click("#dataset-create")
    row = page.locator("#dataset-list tr[data-dataset]")
    row.first.wait_for()
    assert "nodes-december" in row.first.inner_text()
    dataset = Dataset.objects.get(name="nodes-december")
    assert dataset.created_by == world.people.admin
    page.wait_for_function(
        "document.querySelector('#dataset-list tr[data-dataset]').dataset.status === 'ready'"
    )
    shot(page, "datasets-admin.png")
    assert page.console_errors == []


def test_a_field_error_shows_beside_its_field(page, live_server, transactional_world):
    log_in(page, live_server, transactional_world.people.admin)
    page.goto(f"{live_server.url}/datasets/")
    page.fill("input[name=val_fraction]", "2")
    page.click("#dataset-preview")
    name_error = page.locator('.field-error[data-field="name"]')
    name_error.wait_for()
    assert name_error.is_visible()
    assert page.locator('.field-error[data-field="val_fraction"]').is_visible()


def test_a_lab_lead_reads_without_the_form(page, live_server, transactional_world):
    log_in(page, live_server, transactional_world.people.lab_lead)
    page.goto(f"{live_server.url}/datasets/")
    assert page.locator("#dataset-form").count() == 0
    assert "No snapshots yet" in page.locator("#dataset-list").inner_text()
    shot(page, "datasets-lead.png")
