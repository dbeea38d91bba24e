"""The whole loop through the user interface only, in Debian's Chromium, with a real Celery worker.

Two cases, each with a positive and a negative lymph node (small generated slides with their exact
tumour regions, as an import would register them). Then, in the browser only:

1. the pathologist draws a tumour outline on each positive slide in the viewer;
2. the admin previews and creates a dataset snapshot and watches its extraction finish, launches
   a training run from the form and watches it finish, scores the calibration nodes, locks the
   threshold and promotes the model; the scoring run finishes on the page without a reload;
3. the pathologist opens a case queue, views a flagged region in the review viewer, marks a place
   there "not tumour" and decides every node of the case;
4. the lab lead triages a negative-screened node (or is told why there is none), signs the case
   off, and reads the metrics.

The database is read to verify, never written, after the fixture. Set NODESCOPE_SCREENSHOTS to a
folder to keep a picture of each step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from shapely.geometry import shape

from tests.browser import browser_marks, log_in, shot

pytestmark = [*browser_marks("viewer.js"), pytest.mark.worker]

PAGE_TIMEOUT_MS = 60_000
JOB_TIMEOUT_MS = 240_000  # the worker's first task imports torch; training and scoring follow


@pytest.fixture
def world(transactional_db, seeded, people, settings, tmp_path):
    """Cases J-A and J-B, each with a positive and a negative node (ground truth from the
    import); the admin also holds the platform admin role (they promote)."""
    from slides.access import grant_role
    from slides.ingest import register_slide
    from slides.models import Role
    from slides.synthetic import generate_slide
    from tests.factories import make_case

    grant_role(people.admin, Role.PLATFORM_ADMIN)
    slides = {}
    for accession, seeds in (("J-A", (41, 42)), ("J-B", (51, 52))):
        case = make_case(people.lab, accession, nodes=("node 1 (positive)", "node 2 (negative)"))
        for node, seed, tumour in zip(
            case.nodes.order_by("label"), seeds, (True, False), strict=True
        ):
            node.ground_truth = "positive" if tumour else "negative"
            node.save(update_fields=["ground_truth"])
            made = generate_slide(
                tmp_path / f"{accession}-{seed}.tiff",
                width=1600,
                height=1600,
                mpp=0.5,
                seed=seed,
                tumour=tumour,
                n_tumour_nests=2 if tumour else None,
                workers=1,
            )
            slides[(accession, tumour)] = (
                register_slide(node=node, path=made.path, synthetic=True),
                made,
            )
    return slides


@pytest.fixture
def celery_worker(world, settings, tmp_path):
    """One real worker on private default and training queues, sharing the test database."""
    from tests.integration.workers import print_log, stop, worker_env

    default_q = f"journey-default-{uuid.uuid4().hex[:6]}"
    gpu_q = f"journey-gpu-{uuid.uuid4().hex[:6]}"
    settings.CELERY_TASK_DEFAULT_QUEUE = default_q
    settings.TRAINING_QUEUE = gpu_q
    log = tmp_path / "worker.log"
    env = worker_env(queue=gpu_q, stale_seconds=60)
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", f"{default_q},{gpu_q}",
             "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1",
             "--without-gossip", "--without-mingle", "-n", f"{gpu_q}@%h", "--loglevel", "INFO"],
            cwd=Path(__file__).resolve().parents[2], env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    yield proc
    stop(proc)
    print_log(log, 4000)


def logged_in_page(browser, live_server, user):
    """A page of its own browser context (its own session), logged in as `user`."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.js_errors = []
    page.on("pageerror", lambda exc: page.js_errors.append(str(exc)))
    log_in(page, live_server, user)
    return page


TO_PAGE_JS = """([x, y]) => {
    const v = window.nodescopeViewer;
    const p = v.viewport.imageToViewerElementCoordinates(window.nodescopeAnnotations.point(x, y));
    const r = v.element.getBoundingClientRect();
    return [r.left + p.x, r.top + p.y];
}"""


def tumour_outline(made, vertices: int = 12) -> list[tuple[float, float]]:
    """The largest generated tumour region, simplified to about `vertices` points (level-0 px)."""
    features = json.loads(Path(made.regions_path).read_text())["features"]
    polygons = [shape(f["geometry"]) for f in features if f["properties"].get("class") == "tumour"]
    largest = max(polygons, key=lambda p: p.area)
    if largest.geom_type == "MultiPolygon":
        largest = max(largest.geoms, key=lambda p: p.area)
    ring = largest.exterior
    step = ring.length / vertices
    return [tuple(ring.interpolate(i * step).coords[0]) for i in range(vertices)]


def draw_tumour(page, live_server, slide, made) -> None:
    page.goto(f"{live_server.url}/slides/{slide.pk}/view/")
    page.wait_for_selector('body[data-viewer-ready="1"]', state="attached")
    page.wait_for_selector('body[data-annotations-ready="1"]', state="attached")
    page.evaluate("() => window.nodescopeViewer.viewport.goHome(true)")
    page.keyboard.press("1")  # tumour
    page.keyboard.press("p")  # polygon
    points = tumour_outline(made)
    for x, y in [*points, points[0]]:  # closing on the first vertex
        px, py = page.evaluate(TO_PAGE_JS, [x, y])
        page.mouse.click(px, py)
        page.wait_for_timeout(80)  # not paired into a double click
    page.evaluate("() => window.nodescopeAnnotations.idle()")


def test_the_whole_loop_in_the_browser(live_server, browser, people, world, celery_worker):
    from annotations.models import Annotation, Dataset
    from inference.records import ModelVersion, ScoringRun, TrainingRun
    from review.models import CaseSignOff, ReviewDecision, ReviewerCorrection
    from slides.models import Case

    # 1. the pathologist draws the tumour of each positive node
    pathologist = logged_in_page(browser, live_server, people.pathologist)
    for accession in ("J-A", "J-B"):
        slide, made = world[(accession, True)]
        draw_tumour(pathologist, live_server, slide, made)
    shot(pathologist, "journey-1-outline.png")
    assert (
        Annotation.objects.filter(label_class__key="tumour", deleted_at__isnull=True).count() == 2
    )

    # 2a. the admin makes a dataset snapshot and watches it being extracted
    admin = logged_in_page(browser, live_server, people.admin)
    admin.goto(f"{live_server.url}/datasets/")
    admin.fill("input[name=name]", "journey")
    admin.fill("input[name=val_fraction]", "0.5")
    admin.click("#dataset-form details summary")
    admin.check("input[name=balanced]")  # as many non-tumour as tumour patches
    admin.click("#dataset-preview")
    admin.locator("#preview-sides tr").nth(1).wait_for()
    shot(admin, "journey-2-dataset-preview.png")
    admin.click("#dataset-create")
    admin.wait_for_function(
        "() => document.querySelector('#dataset-list tr[data-dataset]')?.dataset.status === 'ready'",
        timeout=JOB_TIMEOUT_MS,
    )
    dataset = Dataset.objects.get(name="journey")
    assert dataset.status == Dataset.Status.READY and dataset.created_by == people.admin

    # 2b. training from the form, progress on the page until it succeeds
    admin.goto(f"{live_server.url}/models/")
    admin.select_option("#launch-form select[name=source]", f"snapshot:{dataset.pk}")
    admin.fill("#launch-form input[name=max_epochs]", "8")
    admin.fill("#launch-form input[name=batch_size]", "32")
    admin.fill("#launch-form input[name=jitter]", "0")
    admin.fill("#launch-form input[name=hue]", "0")
    admin.click("#launch-form button[type=submit]")
    admin.locator("tr[data-run]").first.wait_for()
    shot(admin, "journey-3-training.png")
    admin.wait_for_function(
        "() => document.querySelector('tr[data-run]')?.dataset.status === 'succeeded'",
        timeout=JOB_TIMEOUT_MS,
    )
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.status_reason
    version = ModelVersion.objects.get(training_run=run)
    assert version.hyperparameters["model_kwargs"]["padding"] == "valid"  # built scannable

    # 2c. the model page: score the calibration nodes, lock the threshold, promote
    dialogs: list[str] = []

    def accept(dialog):
        dialogs.append(dialog.message)
        dialog.accept()

    admin.on("dialog", accept)
    admin.goto(f"{live_server.url}/models/{version.pk}/")
    assert admin.locator("#promote button[type=submit]").is_disabled()
    admin.locator("#threshold-score").wait_for(state="visible")
    admin.click("#threshold-score")
    admin.locator("#threshold-preview").wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    shot(admin, "journey-4-threshold-preview.png")
    admin.click("#threshold-lock")
    admin.locator("#threshold-value").wait_for()
    version.refresh_from_db()
    assert version.threshold is not None and "Lock the threshold" in dialogs[-1]
    admin.click("#promote button[type=submit]")
    admin.locator("h1 .badge", has_text="live").wait_for()
    assert "Every slide (4) will be rescored" in dialogs[-1]
    # the promotion's scoring run finishes on this page without a reload
    promotion = ScoringRun.objects.get(model_version=version, trigger=ScoringRun.Trigger.PROMOTION)
    row = admin.locator(f'tr[data-scoring-run="{promotion.pk}"]')
    admin.evaluate("() => { window.__notReloaded = true; }")
    admin.wait_for_function(
        f"() => document.querySelector('tr[data-scoring-run=\"{promotion.pk}\"]').dataset.status === 'succeeded'",
        timeout=JOB_TIMEOUT_MS,
    )
    assert admin.evaluate("() => window.__notReloaded === true")
    assert row.locator(".progress-cell .muted").inner_text() == "4/4"
    shot(admin, "journey-5-promoted.png")

    # 3. the pathologist reviews case J-A: views the top region, marks "not tumour", decides
    case = Case.objects.get(accession_number="J-A")
    pathologist.goto(f"{live_server.url}/review/cases/{case.pk}/")
    pathologist.wait_for_selector('body[data-review-ready="1"]', state="attached")
    shot(pathologist, "journey-6-queue.png")
    with pathologist.context.expect_page() as opened:
        pathologist.keyboard.press("Enter")
    viewer = opened.value
    viewer.set_default_timeout(PAGE_TIMEOUT_MS)
    viewer.wait_for_selector('body[data-review-ready="1"]', state="attached")
    viewer.wait_for_selector('body[data-viewer-ready="1"]', state="attached")
    viewer.wait_for_function(
        "() => /^[1-9]/.test(document.getElementById('review-viewed-count').textContent)"
    )
    viewer.locator("#viewer .openseadragon-canvas").first.focus()
    viewer.keyboard.press("n")
    viewer.wait_for_selector("body[data-last-correction]", state="attached")
    shot(viewer, "journey-7-not-tumour.png")
    viewer.close()
    assert ReviewerCorrection.objects.count() == 1
    pathologist.bring_to_front()
    pathologist.reload()
    pathologist.wait_for_selector('body[data-review-ready="1"]', state="attached")
    for node in case.nodes.order_by("label"):
        row = pathologist.locator(f"#node-{node.pk}")
        flagged = row.get_attribute("data-screened") == "positive"
        status = "confirmed_positive" if flagged else "confirmed_negative"
        row.locator(f"button[data-decide={status}]").click()
        want = "Confirmed positive" if flagged else "Confirmed negative"
        pathologist.wait_for_function(
            "([id, text]) => document.querySelector(`#node-${id} .status .badge.status`).textContent === text",
            arg=[node.pk, want],
        )
    assert ReviewDecision.objects.filter(node__case=case).count() == 2

    # 4. the lab lead: triage, sign-off, metrics
    lead = logged_in_page(browser, live_server, people.lab_lead)
    lead.goto(f"{live_server.url}/review/triage/")
    rows = lead.locator("#review-list tr.review-row")
    if rows.count():
        first = rows.first
        node_id = int(first.get_attribute("data-node-id"))
        first.locator("button[data-decide=confirmed_negative]").click()
        lead.wait_for_function(
            "id => document.querySelector(`#node-${id}`).dataset.status === 'confirmed_negative'",
            arg=node_id,
        )
    else:
        assert "Nothing to triage" in lead.locator("main").inner_text()
    shot(lead, "journey-8-triage.png")
    lead.goto(f"{live_server.url}/review/cases/{case.pk}/")
    lead.once("dialog", lambda dialog: dialog.accept())
    with lead.expect_navigation():
        lead.locator("#sign-off-button").click()
    assert lead.locator("#case-status").inner_text() == "Signed off"
    assert CaseSignOff.objects.filter(case=case).exists()
    lead.goto(f"{live_server.url}/review/metrics/?bootstrap=0")
    text = lead.locator("main").inner_text()
    assert version.name in text and "Nodes evaluated" in text
    assert "0 (0 positive, 0 negative)" not in text
    shot(lead, "journey-9-metrics.png")
    for page in (pathologist, admin, lead):
        assert page.js_errors == []
