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


def test_a_wrong_method_gets_405_with_every_method_of_the_path_in_allow(service):
    """Starlette's 405 named only the first route of a path (POST for /catalog, which also takes GET)."""
    import httpx

    expected = {"/catalog": "GET, POST", "/catalog/t1": "DELETE, GET", "/catalog/batch": "POST", "/identify": "POST",
                "/healthz": "GET"}
    spec = httpx.get(f"{service.url}/openapi.json").json()
    for path, allow in expected.items():
        template = "/catalog/{track_id}" if path == "/catalog/t1" else path  # /catalog/batch is its own resource
        assert allow == ", ".join(sorted(m.upper() for m in spec["paths"][template]))  # what the schema declares
        for method in ("OPTIONS", "PUT", "PATCH"):
            answer = httpx.request(method, f"{service.url}{path}", headers={"Authorization": f"Bearer {KEY}"})
            assert answer.status_code == 405 and answer.headers["allow"] == allow, (method, path, answer.headers)


def test_what_the_schema_allows_in_the_catalogue_forms_is_accepted_and_what_it_refuses_it_says(service):
    import httpx

    from tests.conftest import tune_wav

    auth = {"Authorization": f"Bearer {KEY}"}
    added = httpx.post(f"{service.url}/catalog", headers=auth, data={"metadata": "null"},
                       files={"file": ("t.wav", tune_wav(25, 3))}, timeout=60)
    assert added.status_code == 201 and added.json()["metadata"] == {}, added.text  # JSON null: no metadata
    spec = httpx.get(f"{service.url}/openapi.json").json()["components"]["schemas"]
    batch = next(s for name, s in spec.items() if name.startswith("Body_add_tracks"))
    assert batch["properties"]["files"]["minItems"] == 1
    for name in ("Body_add_track", "Body_identify_clip"):
        upload = next(s for n, s in spec.items() if n.startswith(name))["properties"]["file"]
        assert upload["minLength"] == 1 and "WAV" in upload["description"]
    empty = httpx.post(f"{service.url}/identify", files={"file": ("e.wav", b"")}, timeout=60)
    assert empty.status_code == 422


def test_a_query_parameter_given_twice_is_refused_not_guessed(service):
    """schemathesis's long run: GET /catalog?offset=false&offset=0.0 answered 200 (the last value taken)."""
    import httpx

    auth = {"Authorization": f"Bearer {KEY}"}
    twice = httpx.get(f"{service.url}/catalog?offset=false&offset=0&limit=1", headers=auth)
    assert twice.status_code == 422 and "offset" in twice.json()["detail"] and "once" in twice.json()["detail"]
    assert httpx.get(f"{service.url}/catalog?offset=0&limit=1", headers=auth).status_code == 200
    assert httpx.get(f"{service.url}/healthz?x=1&x=2").status_code == 200  # not a parameter of the route: ignored
