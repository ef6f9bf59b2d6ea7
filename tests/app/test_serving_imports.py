"""What the service's commands import: `coverid serve` runs where only the service is installed (the
image: `pip install .`, no `[train]` extra), and `coverid identify` / `ingest` start without torch or
the model code. Each check runs in a fresh interpreter, as a user's command would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.app.conftest import running_service
from tests.conftest import tune_wav

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODEL = ROOT / "models" / "weights" / "extractor.pt"
TRAIN_EXTRA = ("matplotlib", "sklearn", "pretty_midi", "mido")  # the [train] extra, by import name
# a sitecustomize on PYTHONPATH: the [train] packages cannot be imported, as where they are not installed
BLOCKER = f"""
import sys

class TrainExtraNotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {TRAIN_EXTRA!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, TrainExtraNotInstalled())
"""
# runs coverid's main() as the entry point does; prints its exit status, its stdout and the modules it loaded
PROBE = """
import contextlib, io, json, sys
from app.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as stop:
        code = stop.code
print(json.dumps({"code": code, "stdout": out.getvalue(), "modules": sorted(sys.modules)}))
"""


@pytest.fixture
def without_train_extra(tmp_path) -> dict[str, str]:
    """Environment variables under which the [train] packages cannot be imported."""
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "blocker"), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def python(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def loaded(modules: list[str], tops: tuple[str, ...]) -> list[str]:
    return [m for m in modules if m.partition(".")[0] in tops]


def test_the_blocker_blocks(without_train_extra):
    for name in TRAIN_EXTRA:
        result = python("-c", f"import {name}", env=without_train_extra)
        assert result.returncode == 1 and "blocked by the test" in result.stderr


@pytest.mark.parametrize("command", ["serve", "ingest", "identify"])
def test_service_commands_answer_without_the_train_extra(command, without_train_extra):
    result = python("-m", "app.cli", command, "--help", env=without_train_extra)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: coverid {command} ")


@pytest.fixture(params=["sqlite"])
def service_without_train_extra(request, tmp_path, without_train_extra):
    """`coverid serve` with the image's model where the [train] packages cannot be imported."""
    yield from running_service(request, tmp_path, SHIPPED_MODEL, without_train_extra)


def test_serve_without_the_train_extra_answers_and_identifies(service_without_train_extra):
    with httpx.Client(base_url=service_without_train_extra.url, timeout=120) as client:
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "alive"
        stored = client.post("/catalog", files={"file": ("t.wav", tune_wav(60.0, seed=7))}, data={"track_id": "t7"})
        assert stored.status_code == 201, stored.text
        found = client.post("/identify", files={"file": ("c.wav", tune_wav(40.0, seed=7, start_s=15.0))})
        assert found.status_code == 200, found.text
        assert found.json()["matches"][0]["track_id"] == "t7"


def test_the_serving_path_imports_no_training_code():
    result = python("-c", "import json, sys, app.main, app.cli; print(json.dumps(sorted(sys.modules)))")
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout)
    assert loaded(modules, ("models",)) != []  # the service does load the model code...
    assert [m for m in modules if m.startswith("models.training")] == []  # ...but none of the training room
    assert loaded(modules, TRAIN_EXTRA) == []


@pytest.mark.parametrize("command", ["identify", "ingest"])
def test_client_commands_load_neither_torch_nor_the_model_code(command):
    result = python("-c", PROBE, command, "--help")
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert probe["code"] == 0 and probe["stdout"].startswith(f"usage: coverid {command} ")
    assert loaded(probe["modules"], ("torch", "models")) == []


def test_exactly_the_routes_that_take_the_model_are_marked_as_using_it():
    """The back-pressure middleware admits by the `uses_model` marker; a route that takes the embedder without it
    would bypass the model's queue, and a marked route without the embedder would hold places for nothing."""
    from app.dependencies import embedder_dep
    from app.routes import catalog, health, identify

    for router in (catalog.router, identify.router, health.router):
        for route in router.routes:
            takes_model = any(d.call is embedder_dep for d in route.dependant.dependencies)
            assert getattr(route.endpoint, "uses_model", False) == takes_model, route.path
    marked = {(r.path, m) for router in (catalog.router, identify.router) for r in router.routes for m in r.methods
              if getattr(r.endpoint, "uses_model", False)}
    assert marked == {("/catalog", "POST"), ("/catalog/batch", "POST"), ("/identify", "POST"),
                      ("/identify/segments", "POST")}
