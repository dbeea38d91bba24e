"""When the database or the job queue is down, say so: 503 with a message, not a 500.

A request that meets a lost database connection (PostgreSQL restarted, a backend terminated) or
an unreachable Celery broker gets `503 Service Unavailable` with `Retry-After` and a sentence
naming what is down, as JSON for the API and as plain text for pages. Django closes the broken
database connection when the request ends (its `errors_occurred` flag), and `CONN_HEALTH_CHECKS`
makes a request that finds a persistent connection dead open a fresh one, so the web app recovers
by itself once the service is back, without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db.utils import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


def unavailable_reason(exc: BaseException) -> str | None:
    """What is down, in a sentence, if `exc` means a backing service is unavailable; else None."""
    from config.queueing import QueueUnavailable

    if isinstance(exc, QueueUnavailable):
        return str(exc)
    if isinstance(exc, OperationalError | InterfaceError):
        return "The database is unavailable (connection lost or refused); nothing was saved. Try again shortly."
    try:
        from kombu.exceptions import OperationalError as BrokerError
    except ImportError:  # pragma: no cover - kombu is a dependency
        return None
    if isinstance(exc, BrokerError):
        return "The job queue (Celery broker) cannot be reached; nothing was queued. Try again shortly."
    return None


class ServiceUnavailableMiddleware:
    """Turns database and broker outages raised by a view into a 503 with a message."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        reason = unavailable_reason(exception)
        if reason is None:
            return None
        log.warning(
            "%s %s: 503, %s (%s: %s)",
            request.method,
            request.path,
            reason,
            type(exception).__name__,
            exception,
        )
        wants_json = request.path.startswith("/api/") or "application/json" in request.headers.get(
            "Accept", ""
        )
        if wants_json:
            response: HttpResponse = JsonResponse({"detail": reason}, status=503)
        else:
            response = HttpResponse(reason, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
