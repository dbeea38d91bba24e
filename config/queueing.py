"""Putting a job on the Celery queue, and saying so plainly when the queue cannot be reached.

Launching a job writes its row, then sends its message once the transaction commits. If the
broker is down, the caller must learn it at once (a 503 naming the queue, see `config.faults`)
and no row may be left `queued` with no message behind it. So launchers call
:func:`check_queue_reachable` before they write anything (a short connection attempt), and send
through :func:`send`, which turns any failure to send into :class:`QueueUnavailable`; the launcher
then marks its row failed with that reason (the broker died between the check and the send).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings

CHECK_TIMEOUT_SECONDS = 3.0


class QueueUnavailable(RuntimeError):
    """The job queue (Celery broker) cannot be reached; the message says what was not queued."""


def broker_name() -> str:
    """The broker's URL with any password masked, for messages."""
    from config.celery import app

    with app.connection_for_write() as conn:
        return conn.as_uri()


def check_queue_reachable(*, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
    """Raise QueueUnavailable unless a connection to the broker opens within about `timeout` s."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return
    from config.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0.2, interval_step=0.5, timeout=timeout
            )
    except Exception as exc:  # noqa: BLE001 - any failure to connect means nothing can be queued
        raise QueueUnavailable(
            f"The job queue ({broker_name()}) cannot be reached ({exc}); nothing was queued. "
            "Try again shortly."
        ) from exc


def send(task: Any, args: Sequence[Any], *, queue: str, what: str) -> None:
    """`task.apply_async(args, queue=queue)`, raising QueueUnavailable (naming `what`) on failure."""
    try:
        task.apply_async(args=list(args), queue=queue)
    except Exception as exc:  # noqa: BLE001 - broker and result-store errors come in many types
        raise QueueUnavailable(
            f"{what} could not be queued: the job queue ({broker_name()}) failed ({type(exc).__name__}: {exc})."
        ) from exc
