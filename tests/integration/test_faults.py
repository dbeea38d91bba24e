"""Faults with real processes: Redis (the Celery broker) killed and restarted under a running
worker and a live web server; PostgreSQL restarted while a request is inside it.

What must hold: jobs end truthfully (here: every launched run completes after the broker returns,
on the same worker, once each), a launch while the broker is down is refused with 503 and a
message and leaves no row, and the web app recovers without a restart. (The worker killed during
training and during scoring is tested in test_training_worker.py and test_rescoring_worker.py.)
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from inference.records import ModelVersion, TrainingRun
from tests.inference.test_jobs import write_blob_folder

from .workers import (
    ROOT,
    RedisServer,
    free_port,
    print_log,
    start_web_server,
    start_worker,
    stop,
    wait_for,
    worker_env,
)

needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (apt-get install redis-server)",
)


class Api:
    """A keep-alive HTTP/1.1 client of the live server, authenticating with an API token."""

    def __init__(self, port: int, token: str, timeout: float = 60) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.headers = {"Authorization": f"Token {token}", "Accept": "application/json"}

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        if response.getheader("Connection", "").lower() == "close":
            self.conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def close(self) -> None:
        self.conn.close()


def _training_request(folder: Path, *, epochs: int) -> dict:
    return {
        "dataset_source": {"kind": "image-folder", "path": str(folder)},
        "recipe": {
            "max_epochs": epochs,
            "batch_size": 8,
            "early_stopping_patience": 10,
            "model_kwargs": {"width_mult": 0.25},
        },
    }


# ---- Redis restarted -------------------------------------------------------------------------


@pytest.mark.worker
@needs_redis_server
def test_redis_killed_and_restarted_under_a_worker_and_the_web_app(
    training_queue, tmp_path, people
):
    from rest_framework.authtoken.models import Token

    queue, workers = training_queue
    redis = RedisServer(tmp_path / "redis", appendonly=True).start()
    web = None
    api = None
    broker = {
        "CELERY_BROKER_URL": redis.url,
        "CELERY_RESULT_BACKEND": redis.url,
        # an admin's runs read files under the import roots only (inference.scope), checked by
        # the web app at launch and by the worker again
        "NODESCOPE_IMPORT_ROOTS": str(tmp_path),
    }
    try:
        folder = write_blob_folder(tmp_path / "blobs", n=96, size=16)
        worker = start_worker(queue, tmp_path / "worker.log", **broker)
        workers.append(worker)
        port = free_port()
        web = start_web_server(port, tmp_path / "web.log", worker_env(queue=queue, **broker))
        api = Api(port, Token.objects.create(user=people.admin).key)

        # A: a run the worker is in the middle of when the broker dies.
        status, body = api.call("POST", "/api/training-runs/", _training_request(folder, epochs=3))
        assert status == 201, body
        first = body["id"]
        wait_for(
            lambda: (TrainingRun.objects.get(pk=first).progress or {}).get("step", 0) > 0,
            240,
            "run A to be training",
        )
        # B: launched behind A, so its message is waiting in Redis when Redis dies.
        status, body = api.call("POST", "/api/training-runs/", _training_request(folder, epochs=1))
        assert status == 201, body
        second = body["id"]

        redis.kill()
        assert TrainingRun.objects.get(pk=first).status == TrainingRun.Status.RUNNING
        assert TrainingRun.objects.get(pk=second).status == TrainingRun.Status.QUEUED

        # Launching while the broker is down: 503 with a message, quickly, and no row.
        started = time.monotonic()
        status, body = api.call("POST", "/api/training-runs/", _training_request(folder, epochs=1))
        refused_in = time.monotonic() - started
        assert status == 503, body
        assert "job queue" in body["detail"] and "nothing was queued" in body["detail"], body
        assert refused_in < 10, refused_in
        assert TrainingRun.objects.count() == 2
        # Reading still works while the broker is down.
        status, body = api.call("GET", "/api/training-runs/")
        assert status == 200 and body["count"] == 2, body

        redis.start()  # the same port and append-only file: B's message is still there
        # The web app, never restarted, queues again.
        status, body = api.call("POST", "/api/training-runs/", _training_request(folder, epochs=1))
        assert status == 201, body
        third = body["id"]

        ids = (first, second, third)
        wait_for(
            lambda: all(run.is_finished for run in TrainingRun.objects.filter(pk__in=ids)),
            420,
            "runs A, B and the one launched after the restart to finish",
        )
        assert worker.poll() is None, "the worker died"
        runs = {run.pk: run for run in TrainingRun.objects.filter(pk__in=ids)}
        for run in runs.values():
            assert run.status == TrainingRun.Status.SUCCEEDED, (run.pk, run.status_reason)
            assert run.attempts == 1, (run.pk, run.attempts)  # each trained once, never twice
            assert run.worker == runs[first].worker  # by the one worker, which reconnected
        assert TrainingRun.objects.count() == 3
        assert ModelVersion.objects.filter(training_run__in=ids).count() == 3
        models_dir = Path(settings.RESULTS_DIR) / "models"
        assert not list(models_dir.glob("*.tmp"))
        for version in ModelVersion.objects.all():
            assert Path(version.weights_path).stat().st_size > 0
    finally:
        if api is not None:
            api.close()
        if web is not None:
            stop(web)
        redis.stop()
        print_log(tmp_path / "web.log", 3000)
        print_log(tmp_path / "redis" / "redis.log", 1500)


ENQUEUE_SCRIPT = """
import os
from inference.rescoring import enqueue_run
print("SENT", enqueue_run(int(os.environ["SCORING_RUN"])))
"""


@pytest.mark.worker
def test_broker_down_when_a_scoring_run_is_sent_fails_its_slides_with_the_reason(
    transactional_db, tmp_path, case
):
    """The broker dies between the check and the send: nothing stays `queued` with no message."""
    from inference.records import ScoringRun, SlideScoring
    from inference.rescoring import rescore_all
    from tests.inference.test_scoring import (
        generated_slide,
        make_version,
        random_dense_model,
        save_weights,
    )

    node = case.nodes.first()
    for seed in (1, 2):
        generated_slide(node, tmp_path / "s", seed=seed, tumour=False, size=(300, 300))
    version = make_version(save_weights(random_dense_model(), tmp_path / "dense.pt"))
    run = rescore_all(version=version, enqueue=False)
    assert run.slide_jobs.filter(status=SlideScoring.Status.QUEUED).count() == 2
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = worker_env(
        CELERY_BROKER_URL=dead,
        CELERY_RESULT_BACKEND=f"file://{tmp_path / 'results'}",
        SCORING_RUN=str(run.pk),
    )
    (tmp_path / "results").mkdir()
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", ENQUEUE_SCRIPT],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SENT 0" in out.stdout, out.stdout
    run.refresh_from_db()
    assert run.status == ScoringRun.Status.FAILED and run.finished_at
    assert (run.slides_done, run.slides_failed) == (0, 2)
    for job in run.slide_jobs.all():
        assert job.status == SlideScoring.Status.FAILED
        assert "could not be queued" in job.status_reason and "job queue" in job.status_reason


# ---- PostgreSQL restarted --------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _postgres_runner() -> tuple[list[str] | None, str]:
    """How to run the PostgreSQL server binaries: directly, or as the `postgres` user when we are
    root (the server refuses to run as root); None with the reason when neither is possible."""
    if os.geteuid() != 0:
        return [], ""
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None, "running as root and there is no postgres user to run a private cluster as"
    runuser = shutil.which("runuser")
    if runuser is None:
        return None, "running as root without runuser to switch to the postgres user"
    return [runuser, "-u", "postgres", "--"], ""


PG_BIN = _postgres_bin()
PG_RUNNER, PG_RUNNER_REASON = _postgres_runner()
needs_postgres_binaries = pytest.mark.skipif(
    PG_BIN is None or PG_RUNNER is None,
    reason=PG_RUNNER_REASON or "PostgreSQL server binaries (initdb, pg_ctl) are not installed",
)


class PrivatePostgres:
    """A throw-away PostgreSQL cluster (initdb) on a free loopback port, trust authentication."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="nodescope-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        if PG_RUNNER:
            account = pwd.getpwnam("postgres")
            os.chown(self.folder, account.pw_uid, account.pw_gid)

    def pg(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            [*PG_RUNNER, str(PG_BIN / args[0]), *args[1:]],
            check=True, capture_output=True, timeout=timeout, cwd=self.folder,
        )  # fmt: skip

    def start(self) -> PrivatePostgres:
        self.pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-o",
            options,
            "-w",
            "start",
        )
        return self

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every session is terminated, the server comes back."""
        self.pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "server.log"),
            "-m",
            "fast",
            "-w",
            "restart",
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=5)

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


SEED_SCRIPT = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from slides.access import grant_role
from slides.models import Case, Lab, Role
lab = Lab.objects.create(code="pg-lab", name="PG Lab")
user = get_user_model().objects.create_user("pg-pathologist", password="pg-fault-test-2026")
grant_role(user, Role.PATHOLOGIST)
lab.members.add(user)
for i in range(3):
    Case.objects.create(lab=lab, accession_number=f"PG-{i}", patient_pseudonym=f"P{i}")
print("TOKEN", Token.objects.create(user=user).key)
"""


@needs_postgres_binaries
@pytest.mark.timeout(400)
def test_postgres_restarted_during_a_request_answers_503_and_the_app_recovers(tmp_path):
    cluster = PrivatePostgres().start()
    web = None
    clients: list[Api] = []
    try:
        with cluster.connect() as admin:
            admin.execute("CREATE DATABASE nodescope")
        env = {
            **os.environ,
            "DATABASE_URL": cluster.url("nodescope"),
            "DATABASE_CONN_MAX_AGE": "600",  # persistent connections: the restart kills them
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "NODESCOPE_VAR_DIR": str(tmp_path / "var"),
        }
        manage = [sys.executable, "manage.py"]
        subprocess.run(
            [*manage, "migrate", "--noinput"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        seeded = subprocess.run(
            [*manage, "shell", "-c", SEED_SCRIPT], cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=120
        )  # fmt: skip
        token = seeded.stdout.split("TOKEN", 1)[1].split()[0]
        port = free_port()
        web = start_web_server(port, tmp_path / "web.log", env)

        steady = Api(port, token)  # one keep-alive connection: one server thread, one DB connection
        clients.append(steady)
        status, body = steady.call("GET", "/api/cases/")
        assert status == 200 and body["count"] == 3, body

        # A request held inside PostgreSQL: another session locks the cases table.
        locker = cluster.connect("nodescope")
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE slides_case IN ACCESS EXCLUSIVE MODE")
        in_flight = Api(port, token)
        clients.append(in_flight)
        outcome: dict[str, Any] = {}

        def request() -> None:
            started = time.monotonic()
            try:
                outcome["status"], outcome["body"] = in_flight.call("GET", "/api/cases/")
            except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                outcome["error"] = repr(exc)
            outcome["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=request, daemon=True)
        thread.start()

        def waiting_on_the_lock() -> bool:
            with cluster.connect("nodescope") as probe:
                row = probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                ).fetchone()
            return row[0] >= 1

        wait_for(waiting_on_the_lock, 30, "the request to wait inside PostgreSQL")
        assert thread.is_alive()

        cluster.restart()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the request in flight hung after the restart"
        assert "error" not in outcome, outcome
        assert outcome["status"] == 503, outcome
        assert "database is unavailable" in outcome["body"]["detail"], outcome
        with contextlib.suppress(Exception):  # its session was terminated by the restart
            locker.close()

        # The same server thread, whose persistent connection died: checked, replaced, served.
        status, body = steady.call("GET", "/api/cases/")
        assert status == 200 and body["count"] == 3, body
        # New connections are served too, by the web app that never restarted.
        fresh = Api(port, token)
        clients.append(fresh)
        for _ in range(3):
            status, body = fresh.call("GET", "/api/cases/")
            assert status == 200 and body["count"] == 3, body
        assert web.poll() is None
    finally:
        for client in clients:
            client.close()
        if web is not None:
            stop(web)
        print_log(tmp_path / "web.log", 3000)
        cluster.destroy()
