#!/usr/bin/env python
"""`make screenshots`: a picture of each main screen of the demo, as the role that uses it.

Starts the web server on the demo database (run `make demo` once first, or `manage.py load_demo`),
logs in through the log-in page in Debian's Chromium (Playwright, headless, 1600 x 1000) and
writes JPEGs (quality 85) into docs/screenshots/: case list, queue, viewer with heat map, triage, metrics,
Datasets, Models and a model's page. Waits for every page's network to settle; a page that
answers an error status stops the script with its URL.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("NODESCOPE_CHROMIUM", "/usr/bin/chromium")
LOGINS = {
    "pathologist": "pathologist-demo-2026",
    "lablead": "lablead-demo-2026",
    "admin": "admin-demo-2026",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"the server did not answer at {url}")


def _ids() -> dict[str, int]:
    """Ids of the objects the screens show (the demo's first case, its top node and slide)."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from inference.records import ModelVersion
    from review.queues import live_primary
    from slides.models import Case

    case = Case.objects.filter(accession_number="DEMO-26-001").first() or Case.objects.first()
    if case is None:
        raise SystemExit("no demo data: run `make demo` (or manage.py load_demo) first")
    version = live_primary() or ModelVersion.objects.order_by("-id").first()
    top = (
        version.node_scores.filter(node__case=case).order_by("-score").first() if version else None
    )
    node = top.node if top else case.nodes.order_by("pk").first()
    slide = (
        top.max_heatmap.slide if top and top.max_heatmap_id else node.slides.order_by("pk").first()
    )
    out = {"case": case.pk, "node": node.pk, "slide": slide.pk}
    if version:
        out["version"] = version.pk
    if top and top.max_x is not None:
        out["x"], out["y"] = round(top.max_x), round(top.max_y)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--png", action="store_true", help="PNG instead of JPEG (for checking)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids = _ids()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(f"{base}/health/")
        from playwright.sync_api import sync_playwright

        viewer = f"/slides/{ids['slide']}/view/"
        if "x" in ids:
            viewer += f"?x={ids['x']}&y={ids['y']}&zoom=0.5"
        screens = [
            ("pathologist", "/", "case-list.jpg"),
            ("pathologist", f"/review/cases/{ids['case']}/", "queue.jpg"),
            ("pathologist", viewer, "viewer-heatmap.jpg"),
            ("lablead", "/review/triage/", "triage.jpg"),
            ("lablead", "/review/metrics/", "metrics.jpg"),
            ("admin", "/datasets/", "datasets.jpg"),
            ("admin", "/models/", "models.jpg"),
        ]
        if "version" in ids:
            screens.append(("admin", f"/models/{ids['version']}/", "model.jpg"))
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            pages = {}
            for user, password in LOGINS.items():
                context = browser.new_context(viewport={"width": 1600, "height": 1000})
                page = context.new_page()
                page.goto(f"{base}/login/")
                page.fill("input[name=username]", user)
                page.fill("input[name=password]", password)
                page.locator("form[action$='/login/'] button[type=submit]").click()
                page.wait_for_url(f"{base}/")
                pages[user] = page
            for user, path, name in screens:
                page = pages[user]
                response = page.goto(base + path)
                if response is None or response.status >= 400:
                    raise SystemExit(f"{path} as {user}: {response.status if response else '?'}")
                page.wait_for_load_state("networkidle")
                if name.startswith("viewer"):
                    page.wait_for_timeout(2500)  # tiles and the heat-map overlay fade in
                if args.png:
                    page.screenshot(path=str(out / name.replace(".jpg", ".png")), full_page=True)
                else:
                    page.screenshot(path=str(out / name), type="jpeg", quality=85)
                print(f"{name}: {path} as {user}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
