"""A short schemathesis run against the real service: no 5xx except a documented 503, and every answer
matches the OpenAPI document (status and body). The long run is a documented command (README)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app.conftest import running_service

KEY = "schemathesis-key"


@pytest.fixture(params=["sqlite"])
def service(request, tmp_path, narrow_artifact):
    yield from running_service(request, tmp_path, narrow_artifact[0], {"COVERID_API_KEYS": json.dumps([KEY])})


def test_generated_requests_get_documented_answers(service, tmp_path):
    executable = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.fail("schemathesis is not installed: `make test` installs it with the test extra")
    done = subprocess.run(
        [executable, "run", f"{service.url}/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "10", "--max-time", "60", "--workers", "1",
         "--header", f"Authorization: Bearer {KEY}", "--request-timeout", "30", "--seed", "1",
         "--report", "junit", "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
