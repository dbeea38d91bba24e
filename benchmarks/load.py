#!/usr/bin/env python
"""Many viewers at once on the live server, over loopback, for a bounded time.

The web app runs as its own process (gunicorn with gthread workers as in production, two
processes of 8 threads, one per core here; `manage.py runserver` when gunicorn is missing) on
127.0.0.1, against a freshly seeded throw-away SQLite database:
one generated (synthetic) slide with a few thousand annotation polygons, in a case whose nodes are
scored by the live model. Each viewer logs in through the real login form (CSRF, password check),
keeps one HTTP/1.1 keep-alive connection, and until the time is up:

- pans: moves its 1280 x 800 screen by a random step at its zoom level (zooming in or out now
  and then) and fetches the tiles that came into view and that it has not fetched before (a
  browser caches them), `GET /api/slides/<id>/tiles/<z>/<x>/<y>.jpg`;
- fetches the annotations in view, `GET /api/slides/<id>/annotations/?bbox=...`;
- every fourth step, opens the case's review queue: the page `GET /review/cases/<id>/` and its
  data `GET /api/review/cases/<id>/queue/`.

Any status other than 200 (or 304), or a failed connection, is an error; the script exits 1 if
there is any. Baseline, same process, same server and data: one viewer alone, for the same time,
before the crowd; ratios are crowd p95 / single-viewer p95 per kind of request.

Figures: p50 and p95 per kind, requests per second, errors. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import math
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._django import ROOT, setup_django  # noqa: E402

SCREEN = (1280, 800)
PASSWORD = "load-viewer-2026!"
KINDS = ("tile", "annotations", "queue_page", "queue_api")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- data --------------------------------------------------------------------------------------


def seed(
    var: Path, *, size: int, polygons: int, nodes: int, viewers: int, rng: random.Random
) -> dict:
    """A lab with `viewers` pathologists, a case of `nodes` scored nodes, one generated slide
    with `polygons` annotations. Returns what the viewers need to know."""
    import numpy as np
    from django.contrib.auth import get_user_model

    from annotations.models import Annotation, LabelClass
    from inference.records import NodeScore, Stage
    from slides.access import grant_role
    from slides.ingest import register_slide
    from slides.models import Case, Lab, Node, Role
    from slides.synthetic import generate_slide
    from tests.review.factories import make_model_version

    lab = Lab.objects.create(code="load", name="Load Lab")
    users = []
    for i in range(viewers):
        user = get_user_model().objects.create_user(f"viewer{i}", password=PASSWORD)
        grant_role(user, Role.PATHOLOGIST)
        users.append(user)
    lab.members.add(*users)
    case = Case.objects.create(lab=lab, accession_number="LOAD-0001", patient_pseudonym="PL-1")
    node_rows = [
        Node.objects.create(case=case, label=f"level {i + 1}, node {i + 1}") for i in range(nodes)
    ]
    synthetic = generate_slide(
        var / "slides" / "load.tiff", width=size, height=size, mpp=0.5, seed=3, tumour=True
    )
    slide = register_slide(node=node_rows[0], path=synthetic.path, synthetic=True)
    live = make_model_version("load-live", threshold=0.5, live=True, stage=Stage.PRIMARY)
    NodeScore.objects.bulk_create(
        [
            NodeScore(
                node=n, model_version=live, score=s, threshold=0.5, screened_positive=s >= 0.5
            )
            for n, s in zip(node_rows, (rng.random() for _ in node_rows), strict=False)
        ]
    )
    classes = list(LabelClass.objects.all()[:4])
    rows = []
    np_rng = np.random.default_rng(7)
    for i in range(polygons):
        cx, cy = np_rng.uniform(0, size, 2)
        k = int(np_rng.integers(8, 24))
        radius = np_rng.uniform(20, 300) * np_rng.uniform(0.6, 1.0, k)
        angles = np.sort(np_rng.uniform(0, 2 * math.pi, k))
        xs = np.clip(cx + radius * np.cos(angles), 0, size - 1)
        ys = np.clip(cy + radius * np.sin(angles), 0, size - 1)
        ring = [[float(x), float(y)] for x, y in zip(xs, ys, strict=True)]
        ring.append(ring[0])
        area = 0.5 * abs(float(np.dot(xs, np.roll(ys, -1)) - np.dot(np.roll(xs, -1), ys)))
        rows.append(
            Annotation(
                slide=slide, label_class=classes[i % len(classes)], author=users[i % len(users)],
                geometry={"type": "Polygon", "coordinates": [ring]},
                min_x=float(xs.min()), min_y=float(ys.min()), max_x=float(xs.max()), max_y=float(ys.max()),
                vertex_count=k, area_px=area,
            )
        )  # fmt: skip
    Annotation.objects.bulk_create(rows, batch_size=2000)
    return {
        "usernames": [u.username for u in users],
        "slide": slide.pk,
        "width": slide.width,
        "height": slide.height,
        "levels": slide.levels,
        "tile": slide.tile_width,
        "case": case.pk,
    }


# ---- the server --------------------------------------------------------------------------------


def server_command(port: int) -> list[str]:
    """gunicorn as in production (docker/Dockerfile.web: gthread workers), two processes of 8
    threads (SQLite's busy timeout covers the two processes' session writes at log-in);
    runserver without gunicorn."""
    if importlib.util.find_spec("gunicorn") is not None:
        return [
            sys.executable, "-m", "gunicorn", "config.wsgi:application",
            "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "8",
            "--worker-class", "gthread", "--timeout", "120", "--log-level", "warning",
        ]  # fmt: skip
    return [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]


def server_name() -> str:
    return " ".join(server_command(0)[2:4]) if "gunicorn" in server_command(0) else "runserver"


def start_server(var: Path, port: int) -> subprocess.Popen:
    """The web app in its own process on loopback, on the seeded database; waits for /health/."""
    env = {**os.environ, "NODESCOPE_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "config.settings"}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        server_command(port),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(var / "server.log", "w"),  # noqa: SIM115
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"the web server exited with {proc.returncode}; see {var / 'server.log'}"
            )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health/")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the web server did not answer /health/ within 90 s")


# ---- a viewer ----------------------------------------------------------------------------------


class Viewer:
    """One pathologist's browser: one keep-alive connection, cookies, a viewport that pans."""

    def __init__(self, port: int, username: str, info: dict, seed: int) -> None:
        self.port = port
        self.username = username
        self.info = info
        self.rng = random.Random(seed)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.cookies: dict[str, str] = {}
        self.seen_tiles: set[tuple[int, int, int]] = set()
        self.samples: list[tuple[str, float]] = []
        self.errors: list[str] = []

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ):
        sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=sent)
                response = self.conn.getresponse()
                data = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # the server closed an idle keep-alive connection: reconnect once, as browsers do
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt == 2:
                    raise
        for header in response.msg.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        if (response.getheader("Connection") or "").lower() == "close":
            self.conn.close()
        return response.status, data

    def log_in(self) -> None:
        status, page = self.request("GET", "/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        if status != 200 or token is None:
            raise RuntimeError(f"{self.username}: login page answered {status}")
        form = urllib.parse.urlencode(
            {
                "username": self.username,
                "password": PASSWORD,
                "csrfmiddlewaretoken": token.group(1).decode(),
            }
        ).encode()
        status, _ = self.request(
            "POST", "/login/", form,
            {"Content-Type": "application/x-www-form-urlencoded", "Referer": f"http://127.0.0.1:{self.port}/login/"},
        )  # fmt: skip
        if status != 302 or "sessionid" not in self.cookies:
            raise RuntimeError(f"{self.username}: login answered {status}")

    def timed(self, kind: str, path: str) -> None:
        started = time.perf_counter()
        try:
            status, _ = self.request("GET", path)
        except (OSError, http.client.HTTPException) as exc:
            self.errors.append(f"{kind} {path}: {type(exc).__name__}: {exc}")
            return
        self.samples.append((kind, time.perf_counter() - started))
        if status not in (200, 304):
            self.errors.append(f"{kind} {path}: HTTP {status}")

    def run(self, seconds: float) -> None:
        info = self.info
        top = info["levels"] - 1
        z = self.rng.randint(max(0, top - 3), top)
        cx, cy = self.rng.uniform(0, info["width"]), self.rng.uniform(0, info["height"])
        deadline = time.monotonic() + seconds
        step = 0
        while time.monotonic() < deadline:
            scale = 2 ** (top - z)  # level-0 px per screen px at this zoom
            cx = min(max(cx + self.rng.uniform(-0.5, 0.5) * SCREEN[0] * scale, 0), info["width"])
            cy = min(max(cy + self.rng.uniform(-0.5, 0.5) * SCREEN[1] * scale, 0), info["height"])
            x0, y0 = cx - SCREEN[0] * scale / 2, cy - SCREEN[1] * scale / 2
            x1, y1 = cx + SCREEN[0] * scale / 2, cy + SCREEN[1] * scale / 2
            span = info["tile"] * scale
            cols = math.ceil(info["width"] / span)
            rows = math.ceil(info["height"] / span)
            for ty in range(max(0, int(y0 // span)), min(rows, int(y1 // span) + 1)):
                for tx in range(max(0, int(x0 // span)), min(cols, int(x1 // span) + 1)):
                    if (z, tx, ty) not in self.seen_tiles and time.monotonic() < deadline:
                        self.seen_tiles.add((z, tx, ty))
                        self.timed("tile", f"/api/slides/{info['slide']}/tiles/{z}/{tx}/{ty}.jpg")
            bbox = ",".join(
                str(int(v))
                for v in (max(x0, 0), max(y0, 0), min(x1, info["width"]), min(y1, info["height"]))
            )
            self.timed("annotations", f"/api/slides/{info['slide']}/annotations/?bbox={bbox}")
            if step % 4 == 0:
                self.timed("queue_page", f"/review/cases/{info['case']}/")
                self.timed("queue_api", f"/api/review/cases/{info['case']}/queue/")
            if self.rng.random() < 0.2:
                z = min(top, max(0, z + self.rng.choice((-1, 1))))
            step += 1
        self.conn.close()


def phase(port: int, info: dict, usernames: list[str], seconds: float, seed: int) -> dict:
    """Log in one viewer per username, then let them all view at once for `seconds`."""
    viewers = [Viewer(port, name, info, seed + i) for i, name in enumerate(usernames)]
    for viewer in viewers:
        viewer.log_in()
    threads = [threading.Thread(target=v.run, args=(seconds,)) for v in viewers]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    by_kind: dict[str, list[float]] = defaultdict(list)
    for viewer in viewers:
        for kind, seconds_taken in viewer.samples:
            by_kind[kind].append(seconds_taken * 1000)
    errors = [e for v in viewers for e in v.errors]
    total = sum(len(v) for v in by_kind.values())
    figures = {
        "viewers": len(viewers),
        "seconds": round(elapsed, 2),
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "errors": len(errors),
        "error_examples": errors[:5],
        "kinds": {},
    }
    all_ms = [ms for values in by_kind.values() for ms in values]
    for kind in (*KINDS, "all"):
        values = all_ms if kind == "all" else by_kind.get(kind, [])
        if values:
            figures["kinds"][kind] = {
                "n": len(values),
                "p50_ms": round(statistics.median(values), 2),
                "p95_ms": round(percentile(values, 95), 2),
            }
    return figures


def show(label: str, figures: dict) -> None:
    print(
        f"{label}: {figures['viewers']} viewer(s), {figures['requests']} requests in {figures['seconds']} s"
        f" = {figures['requests_per_s']} req/s, {figures['errors']} errors"
    )
    for kind, row in figures["kinds"].items():
        print(
            f"  {kind:<12} n {row['n']:6d}   p50 {row['p50_ms']:9.2f} ms   p95 {row['p95_ms']:9.2f} ms"
        )
    for example in figures["error_examples"]:
        print(f"  error: {example}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for the test suite")
    parser.add_argument(
        "--viewers", type=int, default=None, help="concurrent viewers (16; 6 with --quick)"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="time per phase (30; 3 with --quick)"
    )
    parser.add_argument(
        "--size", type=int, default=None, help="slide side in px (8192; 2048 with --quick)"
    )
    parser.add_argument(
        "--polygons", type=int, default=None, help="annotations (5000; 1000 with --quick)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (database, slide, server log)",
    )
    args = parser.parse_args()
    viewers = args.viewers or (6 if args.quick else 16)
    seconds = args.seconds or (3.0 if args.quick else 30.0)
    size = args.size or (2048 if args.quick else 8192)
    polygons = args.polygons or (1000 if args.quick else 5000)

    var = setup_django()
    rng = random.Random(5)
    t0 = time.perf_counter()
    info = seed(var, size=size, polygons=polygons, nodes=8, viewers=viewers, rng=rng)
    print(
        f"seeded in {time.perf_counter() - t0:.1f} s: synthetic slide {info['width']} x {info['height']} px,"
        f" {info['levels']} levels, {polygons} annotations, a case of 8 scored nodes, {viewers} viewers"
    )
    port = free_port()
    server = start_server(var, port)
    try:
        single = phase(port, info, info["usernames"][:1], seconds, seed=100)
        show("baseline, one viewer alone", single)
        crowd = phase(port, info, info["usernames"], seconds, seed=200)
        show(f"{viewers} viewers at once", crowd)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        if not args.keep:
            shutil.rmtree(var, ignore_errors=True)
    ratios = {
        kind: round(crowd["kinds"][kind]["p95_ms"] / single["kinds"][kind]["p95_ms"], 2)
        for kind in crowd["kinds"]
        if kind in single["kinds"] and single["kinds"][kind]["p95_ms"] > 0
    }
    print("p95 ratio, crowd / one viewer: " + ", ".join(f"{k} {v}x" for k, v in ratios.items()))
    print(
        f"throughput: {crowd['requests_per_s']} req/s with {viewers} viewers vs {single['requests_per_s']} req/s alone"
        f" ({crowd['requests_per_s'] / max(single['requests_per_s'], 1e-9):.2f}x)"
    )
    result = {
        "benchmark": "load",
        "quick": args.quick,
        "server": f"{server_name()} (2 processes x 8 threads), SQLite, loopback",
        "slide_px": [info["width"], info["height"]],
        "annotations": polygons,
        "single": single,
        "crowd": crowd,
        "p95_ratio": ratios,
        "throughput_ratio": round(crowd["requests_per_s"] / max(single["requests_per_s"], 1e-9), 2),
        "errors": single["errors"] + crowd["errors"],
    }
    print(json.dumps(result))
    if result["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
