"""Real processes for the integration tests: Celery workers, a private redis-server, a private
PostgreSQL cluster, and Django's live server, each started on this machine and stopped by pid."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def database_url_for_tests() -> str:
    """The URL of the test database pytest-django created, for another process to share."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.3) -> T:
    """Poll `predicate` until it returns something true (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` s (this process only)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def worker_env(*, stale_seconds: int = 3, queue: str | None = None, **extra: str) -> dict[str, str]:
    """Environment for a process sharing this test's database and result folder."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_tests(),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "NODESCOPE_JOB_STALE_SECONDS": str(stale_seconds),
        "NODESCOPE_RESULTS_DIR": str(settings.RESULTS_DIR),
        "NODESCOPE_SLIDE_DIR": str(settings.SLIDE_STORAGE_DIR),
    }
    if queue:
        env["NODESCOPE_TRAINING_QUEUE"] = queue
    env.update(extra)
    return env


def start_worker(
    queue: str, log_path: Path, *, stale_seconds: int = 3, **extra_env: str
) -> subprocess.Popen:
    """`celery worker` consuming only `queue` (solo pool, prefetch 1, as the GPU worker runs),
    sharing the test database and result folder; `queue` is also its training/scoring queue.
    `extra_env` overrides settings (e.g. CELERY_BROKER_URL). Output is appended to `log_path`."""
    env = worker_env(stale_seconds=stale_seconds, queue=queue, **extra_env)
    with open(log_path, "a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queue,
             "--pool", "solo", "--concurrency", "1", "--prefetch-multiplier", "1",
             "--without-gossip", "--without-mingle", "-n", f"{queue}-{uuid.uuid4().hex[:4]}@%h",
             "--loglevel", "INFO"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def print_log(path: Path, chars: int = 4000) -> None:
    """Print the end of a process log (pytest shows it when the test fails)."""
    if path.exists():
        print(f"---- {path.name} ----\n{path.read_text(errors='replace')[-chars:]}")


# ---- redis-server ----------------------------------------------------------------------------


class RedisServer:
    """A private redis-server on a free loopback port, with its data in `folder`.

    With `appendonly` every write is in the append-only file before it is answered
    (appendfsync always), so a SIGKILLed server restarts with every queued message."""

    def __init__(self, folder: Path, *, appendonly: bool = True) -> None:
        self.binary = shutil.which("redis-server")
        self.folder = folder
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert self.binary, "redis-server is not installed"
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--save", "", "--daemonize", "no", "--protected-mode", "yes"]  # fmt: skip
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        with open(self.folder / "redis.log", "a") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.answers, 20, f"redis-server on port {self.port}", every=0.1)
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save, connections dropped as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=10)


# ---- Django's live server --------------------------------------------------------------------


def start_web_server(port: int, log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """`manage.py runserver --noreload` on 127.0.0.1:`port` (a thread per connection, HTTP/1.1
    keep-alive), with `env`; returns once /health/ answers."""
    import urllib.request

    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the web server exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(healthy, 60, "the web server to answer /health/", every=0.2)
    return proc
