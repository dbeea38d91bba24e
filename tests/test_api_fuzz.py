"""Schemathesis against the live API from its own OpenAPI schema: at least 1,000 requests, no 5xx."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token

from slides.ingest import register_slide

MIN_REQUESTS = 1000


@pytest.mark.timeout(900)
def test_api_has_no_server_errors_under_generated_requests(
    live_server, people, case, tiny_tiff, tmp_path
):
    st = Path(sys.executable).with_name("st")
    if not st.exists() and not shutil.which("st"):
        pytest.skip("schemathesis is not installed")
    register_slide(node=case.nodes.first(), path=tiny_tiff)
    token = Token.objects.create(user=people.admin)
    client = Client()
    client.force_login(people.admin)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    schema_path = tmp_path / "openapi.json"
    schema_path.write_text(json.dumps(schema))
    operations = sum(len(ops) for ops in schema["paths"].values())
    per_operation = max(30, -(-MIN_REQUESTS * 6 // 5 // max(operations, 1)))
    result = subprocess.run(
        [
            str(st),
            "run",
            str(schema_path),
            "--url",
            live_server.url,
            "-H",
            f"Authorization: Token {token.key}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            str(per_operation),
            "--seed",
            "20261122",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(tmp_path / "events.ndjson"),
        ],
        capture_output=True,
        text=True,
        timeout=880,
    )
    output = result.stdout + result.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    print(output[-5000:])
    requests = 0
    for line in (tmp_path / "events.ndjson").read_text().splitlines():
        requests += len(re.findall(r'"response":\s*\{', line))
    assert result.returncode == 0, output[-6000:]
    assert requests >= MIN_REQUESTS, f"only {requests} requests were made\n{output[-3000:]}"
