"""`manage.py run_demo`: a real Celery worker (no-daemon broker by default) plus the web server."""

from __future__ import annotations

import signal
import subprocess
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


def _stop(_signum, _frame) -> None:
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = "Start a local Celery worker on both queues and the development web server."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", default="8000")

    def handle(self, *args, host: str, port: str, **options):
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config",
                "worker",
                "-Q",
                "default,gpu",
                "--pool",
                "solo",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "-n",
                "demo@%h",
            ],
            cwd=settings.BASE_DIR,
        )
        broker = settings.CELERY_BROKER_URL.split("://")[0]
        self.stdout.write(
            self.style.SUCCESS(
                f"NodeScope is at http://{host}:{port}/  (worker pid {worker.pid}, broker {broker})"
            )
        )
        self.stdout.write(
            "log in with the demo logins printed above; Ctrl-C stops web server and worker"
        )
        # SIGTERM (e.g. from a supervisor) stops the worker too, not just the web server.
        signal.signal(signal.SIGTERM, _stop)
        try:
            call_command("runserver", f"{host}:{port}", use_reloader=False)
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
