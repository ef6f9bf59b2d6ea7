"""The README's first five minutes, run exactly as written against a fresh service with the shipped model."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.app.conftest import ServiceProcess

ROOT = Path(__file__).resolve().parent.parent


def fenced_block_after(marker: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(marker) + r".*?\n```\w*\n(.*?)```", text, re.S)
    assert block, f"README.md has no code block after {marker!r}"
    return [line for line in block.group(1).splitlines() if line.strip()]


def ranked(lines: list[str]) -> list[tuple[str, float]]:
    """(track_id, reference start in s) of each ranked line of `coverid identify`."""
    found = [re.match(r"\s*\d+\. (\S+) .* ~ track (\d+) s", line) for line in lines]
    return [(m.group(1), float(m.group(2))) for m in found if m]


def test_the_first_five_minutes_work_as_written(tmp_path):
    commands = fenced_block_after("<!-- first-five-minutes")
    expected = ranked(fenced_block_after("<!-- expected-identify-output"))
    assert len(commands) == 2 and expected
    service = ServiceProcess({"COVERID_DATA_DIR": str(tmp_path / "data"), "COVERID_DEVICE": "cpu"},
                             tmp_path / "service.log")  # the shipped model: what `make run` serves
    service.start()
    try:
        outputs = []
        for command in commands:
            result = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300,
                                    env={**os.environ, "COVERID_URL": service.url})
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            outputs.append(result.stdout)
    finally:
        service.stop()
    assert "3 of 3 files catalogued" in outputs[0]
    answer = ranked(outputs[1].splitlines())
    assert answer[0][0] == expected[0][0]  # the song the README promises comes first
    assert abs(answer[0][1] - expected[0][1]) <= 10.0  # and sits where it says


def setup_command_after(heading: str) -> str:
    """The indented one-line command that follows a set-up heading of the README."""
    text = (ROOT / "README.md").read_text()
    found = re.search(re.escape(heading) + r"[^\n]*\n(?:[^\n]+\n)*?\n    (\S[^\n]*)\n", text)
    assert found, f"README.md has no indented command after {heading!r}"
    return found.group(1).strip()


def test_ci_runs_the_readme_test_command_and_nothing_else():
    assert setup_command_after("Run the service") == "make run"
    test_command = setup_command_after("Install and pass the tests")
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    # the shell's safety options and moving to the checkout's root are not commands of their own
    commands = [c for c in commands if c not in ("set -euo pipefail", 'cd "$(dirname "$0")/.."')]
    assert commands == [test_command]


def test_the_makefile_installs_system_packages_before_the_python_environment():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: system-test install$", makefile, re.M)
    assert re.search(r"^run: system-run install$", makefile, re.M)
    result = subprocess.run(["bash", "docker/system-packages.sh", "nonsense"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr
