"""Sessions, tokens and response headers (issue 16, items 5, 9, 10, 13, 14).

- Log-in throttling counts atomically: parallel wrong passwords beyond the limit never reach
  authentication, and other Unicode spellings of a locked username are locked too.
- The cached tile permission belongs to the authenticated user, not to an unverified header, and
  a log-out drops it.
- API tokens die with a password change or a deactivation, and expire after
  API_TOKEN_LIFETIME_HOURS.
- A reader study's tile ETag cannot be matched to the slide's checksum.
- Every answer carries a Content-Security-Policy without inline script; HTML and JSON are
  `no-store`; the production settings of docker/compose.yaml pass `check --deploy` clean.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.backends import ModelBackend
from django.db import connection, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from slides.ingest import register_slide
from tests.factories import PASSWORD

ROOT = Path(__file__).resolve().parents[2]
COUNTING_BACKEND = f"{__name__}.CountingBackend"


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import caches

    caches["default"].clear()
    yield
    caches["default"].clear()


# ---- log-in throttling ------------------------------------------------------------------------


class CountingBackend(ModelBackend):
    """Django's model backend, counting the attempts that reach it (and slow, to widen races)."""

    calls = 0
    lock = threading.Lock()

    def authenticate(self, request, username=None, password=None, **kwargs):
        with CountingBackend.lock:
            CountingBackend.calls += 1
        time.sleep(0.05)
        return super().authenticate(request, username=username, password=password, **kwargs)


def _post_concurrently(bodies_and_addresses: list[tuple[dict, str]]) -> list[int]:
    barrier = threading.Barrier(len(bodies_and_addresses))
    statuses: list[int] = []
    errors: list[BaseException] = []

    def attempt(body: dict, address: str) -> None:
        try:
            client = Client(REMOTE_ADDR=address)
            barrier.wait(timeout=30)
            statuses.append(client.post(reverse("login"), body).status_code)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=attempt, args=pair) for pair in bodies_and_addresses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return statuses


@pytest.mark.parametrize("shared", ["username", "address"])
def test_parallel_wrong_passwords_beyond_the_limit_never_reach_authentication(
    transactional_db, people, settings, shared
):
    settings.AUTHENTICATION_BACKENDS = [COUNTING_BACKEND]
    settings.LOGIN_FAILURE_LIMIT = 3
    CountingBackend.calls = 0
    if shared == "username":  # one account, attacked from 20 addresses at once
        attempts = [
            ({"username": "path", "password": f"wrong{i}"}, f"10.0.0.{i}") for i in range(20)
        ]
    else:  # one address spraying 20 accounts at once
        attempts = [({"username": f"user{i}", "password": "wrong"}, "10.9.9.9") for i in range(20)]
    statuses = _post_concurrently(attempts)
    assert len(statuses) == 20
    assert CountingBackend.calls <= 3
    assert statuses.count(429) >= 17
    assert set(statuses) <= {200, 429}


def test_other_unicode_spellings_of_a_locked_username_are_refused(people, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    fullwidth = "ｐａｔｈ"  # NFKC: "path", and the log-in form normalises it so
    # The fullwidth spelling is the same account to the log-in form...
    probe = Client(REMOTE_ADDR="10.1.0.1")
    ok = probe.post(reverse("login"), {"username": fullwidth, "password": PASSWORD})
    assert ok.status_code == 302 and int(probe.session["_auth_user_id"]) == people.pathologist.pk
    # ...so locking "path" locks it too (and every case spelling), whatever the address.
    for i in range(3):
        wrong = Client(REMOTE_ADDR=f"10.2.0.{i}").post(
            reverse("login"), {"username": "path", "password": "wrong"}
        )
        assert wrong.status_code == 200
    for i, spelling in enumerate([fullwidth, "PATH", " Path ", "path"]):
        client = Client(REMOTE_ADDR=f"10.3.0.{i}")
        refused = client.post(reverse("login"), {"username": spelling, "password": PASSWORD})
        assert refused.status_code == 429, spelling
        assert "_auth_user_id" not in client.session


def test_successful_log_ins_do_not_use_up_an_address(people, settings):
    settings.LOGIN_FAILURE_LIMIT = 2
    for _ in range(5):
        client = Client(REMOTE_ADDR="10.4.0.1")
        ok = client.post(reverse("login"), {"username": "path", "password": PASSWORD})
        assert ok.status_code == 302


# ---- the cached tile permission ---------------------------------------------------------------


@pytest.fixture
def slide(case, tiny_tiff):
    return register_slide(node=case.nodes.first(), path=tiny_tiff)


def _tile(slide, z=0, x=0, y=0) -> str:
    return reverse("slide-tile", args=[slide.pk, z, x, y])


def _access_queries(client: Client, url: str, **headers) -> tuple[int, int]:
    """(status, number of slide access queries) of one GET."""
    with CaptureQueriesContext(connection) as queries:
        status = client.get(url, **headers).status_code
    return status, sum('"slides_slide"' in q["sql"] for q in queries.captured_queries)


def test_an_authorization_header_alone_does_not_reuse_a_cached_tile_permission(people, slide):
    client = Client()
    client.force_login(people.pathologist)
    forged = {"HTTP_AUTHORIZATION": "Token chosen-by-the-attacker"}
    # The logged-in user's request carries the header too; its session is what is checked.
    assert client.get(_tile(slide), **forged).status_code == 200
    assert client.get(_tile(slide, 1, 0, 0), **forged).status_code == 200
    # The header alone, without the session, is nobody.
    assert Client().get(_tile(slide), **forged).status_code == 403
    assert Client().get(_tile(slide, 1, 0, 0), **forged).status_code == 403
    heat = reverse("slide-thumbnail", args=[slide.pk])
    assert Client().get(heat, **forged).status_code == 403


def test_log_out_drops_the_users_cached_tile_permission(people, slide):
    client = Client()
    client.login(username="path", password=PASSWORD)
    assert _access_queries(client, _tile(slide)) == (200, 1)
    assert _access_queries(client, _tile(slide, 1, 0, 0)) == (200, 0)  # remembered
    cookie = client.cookies["sessionid"].value
    assert client.post(reverse("logout")).status_code == 302
    # The old session cookie reads nothing, and a new log-in asks the database again.
    stale = Client()
    stale.cookies["sessionid"] = cookie
    assert stale.get(_tile(slide)).status_code in (302, 403)
    client.login(username="path", password=PASSWORD)
    assert _access_queries(client, _tile(slide, 1, 1, 0)) == (200, 1)


# ---- API tokens -------------------------------------------------------------------------------


def _token_status(key: str, url: str = "/api/cases/") -> int:
    return Client().get(url, HTTP_AUTHORIZATION=f"Token {key}").status_code


def test_a_password_change_revokes_api_tokens_and_their_cached_tile_permission(people, slide):
    user = people.pathologist
    token = Token.objects.create(user=user)
    assert _token_status(token.key) == 200
    assert _token_status(token.key, _tile(slide)) == 200
    user.set_password("a-brand-new-password-42")
    user.save()
    assert not Token.objects.filter(user=user).exists()
    assert _token_status(token.key) == 403  # DRF: an unknown token, session auth listed first
    assert _token_status(token.key, _tile(slide)) == 403


def test_deactivation_revokes_api_tokens(people):
    user = people.pathologist
    token = Token.objects.create(user=user)
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert not Token.objects.filter(user=user).exists()
    assert _token_status(token.key) == 403


def test_other_saves_keep_api_tokens(people):
    user = people.pathologist
    token = Token.objects.create(user=user)
    user.first_name = "Ada"
    user.save()
    assert Client().login(username="path", password=PASSWORD)  # saves last_login
    assert _token_status(token.key) == 200


def test_api_tokens_expire_after_the_configured_lifetime(people, settings):
    settings.API_TOKEN_LIFETIME_HOURS = 24
    fresh = Token.objects.create(user=people.pathologist)
    assert _token_status(fresh.key) == 200
    old = Token.objects.create(user=people.lab_lead)
    Token.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(hours=25))
    response = Client().get("/api/cases/", HTTP_AUTHORIZATION=f"Token {old.key}")
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Token"
    assert "expired" in response.json()["detail"]
    assert not Token.objects.filter(pk=old.pk).exists()
    settings.API_TOKEN_LIFETIME_HOURS = 0  # no expiry
    older = Token.objects.create(user=people.lab_lead)
    Token.objects.filter(pk=older.pk).update(created=timezone.now() - timedelta(days=3650))
    assert _token_status(older.key) == 200


# ---- blind study tiles ------------------------------------------------------------------------


def _longest_common_substring(a: str, b: str) -> int:
    best = 0
    for i in range(len(a)):
        for j in range(i + best + 1, len(a) + 1):
            if a[i:j].lower() in b.lower():
                best = j - i
            else:
                break
    return best


def test_study_tile_etag_does_not_reveal_the_slide(people, slide):
    lead = Client()
    lead.force_login(people.lab_lead)
    created = lead.post(
        "/api/studies/",
        {
            "name": "blind",
            "lab": people.lab.pk,
            "instructions": "?",
            "images": [slide.pk],
            "readers": [people.pathologist.pk],
        },
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    sid = created.json()["id"]
    assert lead.post(f"/api/studies/{sid}/open/").status_code == 200
    reader = Client()
    reader.force_login(people.pathologist)
    image = reader.get(f"/api/studies/{sid}/reading/").json()["next"]["image"]
    url = f"/api/studies/{sid}/reading/images/{image}/tiles/1/0/0.jpg"
    first = reader.get(url)
    assert first.status_code == 200
    etag = first["ETag"]
    assert _longest_common_substring(etag, slide.checksum) < 8, (etag, slide.checksum)
    assert slide.checksum[:8] not in first.serialize_headers().decode()
    again = reader.get(url, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again["ETag"] == etag
    other = reader.get(url.replace("/1/0/0.jpg", "/1/1/0.jpg"))
    assert other["ETag"] != etag
    # The slide's own route keeps its checksum-based ETag, for those who may see the slide.
    lead_tile = lead.get(_tile(slide, 1, 0, 0))
    assert lead_tile["ETag"] != etag


# ---- headers ----------------------------------------------------------------------------------


def _directives(policy: str) -> dict[str, list[str]]:
    out = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def test_pages_and_api_answers_carry_csp_referrer_policy_and_no_store(people, slide):
    client = Client()
    client.force_login(people.pathologist)
    for url in ["/", f"/cases/{slide.node.case_id}/", f"/slides/{slide.pk}/view/", "/models/"]:
        response = client.get(url)
        assert response.status_code == 200, url
        policy = _directives(response["Content-Security-Policy"])
        assert policy["script-src"] == ["'self'"], url
        assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
        assert response["Referrer-Policy"] == "same-origin"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert "no-store" in response["Cache-Control"], url
    for url in ["/api/cases/", f"/api/slides/{slide.pk}/tilesource/"]:
        response = client.get(url)
        assert response.status_code == 200
        assert "no-store" in response["Cache-Control"], url
    assert "no-store" in Client().get(reverse("login"))["Cache-Control"]
    # Tiles and thumbnails keep their own private caching (ETag, max-age).
    for url in [_tile(slide), reverse("slide-thumbnail", args=[slide.pk])]:
        response = client.get(url)
        assert "no-store" not in response["Cache-Control"]
        assert "private" in response["Cache-Control"] and response["ETag"]


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)


def test_templates_have_no_inline_script_or_event_handlers():
    templates = list((ROOT / "frontend" / "templates").rglob("*.html"))
    assert templates
    for path in templates:
        text = path.read_text()
        assert not INLINE_SCRIPT.search(text), path
        assert not INLINE_HANDLER.search(text), path
        assert "javascript:" not in text, path


def _compose_environment(tmp_path: Path) -> dict[str, str]:
    """The web service's environment from docker/compose.yaml (defaults filled in), with the
    database, broker, cache and storage pointed at local stand-ins."""
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    raw = spec["services"]["web"]["environment"]
    given = {
        "SECRET_KEY": "x7#Lq9vR2m!Tz4@Wc8&Yp1^Hs6*Jd3%Fk0(Gn5)Bb-Ve=Ua_Xi+Ol~Qr" * 2,
        "ALLOWED_HOSTS": "nodescope.example.org",
    }

    def fill(value: str) -> str:
        def one(match: re.Match) -> str:
            name, op, default = match.group(1), match.group(2), match.group(3)
            if name in given:
                return given[name]
            return default if op == ":-" else ""

        return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", one, str(value))

    env = {name: fill(value) for name, value in raw.items()}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'deploy.sqlite3'}",
        CELERY_BROKER_URL="filesystem://",
        REDIS_CACHE_URL="",
        NODESCOPE_VAR_DIR=str(tmp_path / "var"),
        NODESCOPE_SLIDE_DIR=str(tmp_path / "slides"),
        NODESCOPE_RESULTS_DIR=str(tmp_path / "results"),
    )
    return env


def test_production_settings_pass_check_deploy_clean(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "SECURE_", "NODESCOPE_", "DEBUG"))
    }
    env.update(_compose_environment(tmp_path))
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env.pop("DEBUG", None)  # compose leaves DEBUG unset: off
    assert env["SECURE_SSL_REDIRECT"] == "1" and env["SECURE_HSTS_SECONDS"] == "31536000"
    code = (
        "import django; django.setup(); from django.core.management import call_command; "
        "call_command('check', deploy=True, fail_level='WARNING')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output and "issues" not in output.replace("no issues", ""), output
    # The same settings with DEBUG on are refused, so the check is really looking.
    env["DEBUG"] = "1"
    debug = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert debug.returncode != 0 and "security.W018" in debug.stdout + debug.stderr


# ---- every page under the CSP, in Chromium --------------------------------------------------

CSP_SHOTS = os.environ.get("NODESCOPE_CSP_SCREENSHOTS", "")  # a folder: keep a PNG per page
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


@pytest.mark.browser
def test_main_pages_raise_no_csp_violation_in_chromium(
    live_server, browser, people, case, tiny_tiff
):
    """Case list, case, viewer, review queue, triage, metrics, models, a model version, studies,
    clinical data, the admin site and the browsable API: no CSP violation, no page error."""
    from tests.browser import CHROMIUM, DIST
    from tests.review.factories import make_model_version

    if not CHROMIUM.exists() or not (DIST / "viewer.js").exists():
        pytest.skip("needs Chromium and the built bundle (see tests/browser.py)")
    slide = register_slide(node=case.nodes.first(), path=tiny_tiff, user=people.admin)
    version = make_model_version("csp-check", threshold=0.5, live=False)
    people.admin.is_staff = people.admin.is_superuser = True
    people.admin.save()
    cid = case.pk
    pages = {
        "case-list": "/",
        "case": f"/cases/{cid}/",
        "viewer": f"/slides/{slide.pk}/view/",
        "queue": f"/review/cases/{cid}/",
        "triage": "/review/triage/",
        "metrics": "/review/metrics/",
        "models": "/models/",
        "model-version": f"/models/{version.pk}/",
        "studies": "/studies/",
        "study-new": "/studies/new/",
        "clinical": f"/cases/{cid}/clinical/",
        "admin": "/admin/",
        "admin-slides": "/admin/slides/slide/",
        "admin-slide": f"/admin/slides/slide/{slide.pk}/change/",
        "api-browsable": "/api/cases/",
    }
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.add_init_script(RECORD_VIOLATIONS)
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: console.append(f"page error: {e}"))
    problems: list[str] = []
    try:
        page.goto(live_server.url + "/login/")
        page.fill("input[name=username]", people.admin.username)
        page.fill("input[name=password]", PASSWORD)
        page.locator("form[action$='/login/'] button[type=submit]").click()
        page.wait_for_url(live_server.url + "/")
        # The policy is enforced and the recorder works: an injected inline script is refused.
        injected = page.evaluate(
            """() => { const s = document.createElement("script");
                 s.textContent = "window.__ran = true"; document.body.append(s);
                 return window.__ran === true; }"""
        )
        page.wait_for_timeout(100)
        assert injected is False and page.evaluate("window.__cspViolations.length") == 1
        for name, path in pages.items():
            console.clear()
            response = page.goto(live_server.url + path)
            assert response is not None and response.status == 200, (name, path)
            assert "script-src 'self'" in response.headers["content-security-policy"]
            page.wait_for_load_state("load")
            page.wait_for_timeout(1500 if name == "viewer" else 300)
            violations = page.evaluate("window.__cspViolations || []")
            csp_console = [m for m in console if "Content Security Policy" in m]
            if violations or csp_console or any(m.startswith("page error") for m in console):
                problems.append(f"{name}: {violations} {console}")
            if CSP_SHOTS:
                Path(CSP_SHOTS).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(CSP_SHOTS) / f"{name}.png"), full_page=True)
        _page_scripts_still_work(page, live_server.url, version.pk)
    finally:
        context.close()
        connections.close_all()
    assert not problems, "\n".join(problems)


def _page_scripts_still_work(page, base: str, version_id: int) -> None:
    """The scripts moved out of the models templates still drive their forms (requests
    intercepted and answered 400, so nothing is launched or promoted)."""
    sent: list[dict] = []

    def refuse(route):
        sent.append({"url": route.request.url, "body": route.request.post_data or ""})
        route.fulfill(status=400, content_type="application/json", body='{"detail": "held"}')

    page.route("**/api/training-runs/", refuse)
    page.route(f"**/api/model-versions/{version_id}/promote/", refuse)
    page.goto(base + "/models/")
    page.select_option("#launch-form select[name=source]", "image-folder")
    page.fill("#launch-form input[name=folder_path]", "/x")
    page.locator("#launch-form button[type=submit]").click()
    page.wait_for_function("document.getElementById('launch-error').textContent === 'held'")
    launched = json.loads(sent[-1]["body"])
    assert launched["dataset_source"] == {"kind": "image-folder", "path": "/x", "size": 96}
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.accept()))
    page.goto(f"{base}/models/{version_id}/")
    page.locator("#promote button[type=submit]").click()
    page.wait_for_timeout(500)
    assert sent[-1]["url"].endswith(f"/api/model-versions/{version_id}/promote/")
    # first the confirmation naming the rescoring, then the refusal
    assert len(dialogs) == 2 and dialogs[0].startswith("Promote csp-check to live")
    assert dialogs[1] == "held" and page.url.endswith(f"/models/{version_id}/")
