"""The compose file validates where a docker compose client is installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

COMPOSE = Path(__file__).resolve().parent.parent / "docker" / "compose.yaml"


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_validates():
    command = _compose_command()
    if command is None:
        pytest.skip("no docker compose client on this machine")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={"SECRET_KEY": "test", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode == 0, result.stderr


def test_compose_has_every_service_on_shared_storage():
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"db", "redis", "web", "worker-cpu", "worker-gpu"} <= set(services)
    for name in ("web", "worker-cpu", "worker-gpu"):
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/data/slides", "/data/results"} <= mounts, name
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    for name in ("web", "worker-cpu", "worker-gpu"):
        dockerfile = COMPOSE.parent.parent / services[name]["build"]["dockerfile"]
        assert dockerfile.exists(), dockerfile
        assert "torch==2.13.0" in dockerfile.read_text()
