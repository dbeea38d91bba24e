"""Shared set-up of the browser tests: Debian's Chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Playwright's sync API runs an event loop in this thread; Django's ORM calls made by the test
# (fixtures, live_server setup) would otherwise refuse to run.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = Path(os.environ.get("NODESCOPE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DIST = Path(__file__).resolve().parent.parent / "frontend" / "static" / "dist"


def browser_marks(bundle: str) -> list:
    """Marks of a browser test module: `browser`, and skips without Chromium or the built bundle."""
    return [
        pytest.mark.browser,
        pytest.mark.skipif(
            not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"
        ),
        pytest.mark.skipif(
            not (DIST / bundle).exists(),
            reason=f"frontend/static/dist/{bundle} is not built (cd frontend && npm install && npm run build)",
        ),
    ]


def log_in(page, live_server, user) -> None:
    """Log `user` in through the log-in page (the tests' common password), landing on the case
    list."""
    from tests.factories import PASSWORD

    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", user.username)
    page.fill("input[name=password]", PASSWORD)
    page.locator("form[action$='/login/'] button[type=submit]").click()
    page.wait_for_url(f"{live_server.url}/")


def shot(page, name: str) -> None:
    """A full-page screenshot under $NODESCOPE_SCREENSHOTS when it is set (for looking at pages)."""
    folder = os.environ.get("NODESCOPE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


@pytest.fixture
def browser():
    """A headless Debian Chromium for one test."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, request):
    """A page in a fresh 1400 x 900 context at device scale 1; `page.console_errors` collects
    console errors and uncaught page errors. A test module may set `PAGE_TIMEOUT_MS`."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(getattr(request.module, "PAGE_TIMEOUT_MS", 30_000))
    errors: list[str] = []
    page.on(
        "console",
        lambda msg: (
            errors.append(f"{msg.text} [{msg.location.get('url', '')}]")
            if msg.type == "error"
            else None
        ),
    )
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.console_errors = errors
    yield page
    context.close()
    # ORM calls a test makes while Playwright's event loop runs get database connections of their
    # own (Django's connection handler is context-local there) that the test runner never closes;
    # left open, one stops PostgreSQL from dropping the test database at the end of the run
    from django.db import connections

    connections.close_all()
