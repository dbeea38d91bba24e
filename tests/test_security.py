"""Login throttling, the audit log, and the OpenAPI schema behind authentication."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from audit.log import record
from audit.models import AuditEvent
from tests.factories import PASSWORD


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import cache

    cache.clear()


def test_login_is_throttled_after_repeated_failures(people, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    client = Client()
    for _ in range(3):
        response = client.post(reverse("login"), {"username": "path", "password": "wrong"})
        assert response.status_code == 200
    # Even the right password is refused while throttled.
    refused = client.post(reverse("login"), {"username": "path", "password": PASSWORD})
    assert refused.status_code == 429
    assert b"Too many failed log-ins" in refused.content
    assert "_auth_user_id" not in client.session


def test_successful_login_and_failures_are_audited(people):
    client = Client()
    client.post(reverse("login"), {"username": "path", "password": "nope"})
    response = client.post(reverse("login"), {"username": "path", "password": PASSWORD})
    assert response.status_code == 302
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert "login failed" in actions and "login" in actions


def test_audit_log_is_append_only(people):
    event = record(actor=people.admin, action="promote", obj=people.lab)
    assert event.actor_name == "admin" and event.object_type == "slides.lab"
    event.action = "tampered"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()


def test_schema_needs_login_and_lists_the_api(people):
    assert Client().get("/api/schema/").status_code == 403
    client = Client()
    client.force_login(people.pathologist)
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert "/api/slides/" in schema["paths"] and "/api/cases/" in schema["paths"]


def test_health_is_open_and_nothing_else_is(db):
    assert Client().get("/health/").json() == {"status": "ok"}
    assert Client().get("/").status_code == 302
    assert Client().get("/api/nodes/").status_code == 403


@pytest.mark.parametrize(
    "query", ["?limit=18446744073709551616", "?offset=18446744073709551616", "?offset=-5&limit=-1"]
)
def test_absurd_pagination_is_bounded_not_a_server_error(people, case, query):
    client = Client()
    client.force_login(people.pathologist)
    response = client.get("/api/cases/" + query)
    assert response.status_code == 200
    assert len(response.json()["results"]) <= 1000
