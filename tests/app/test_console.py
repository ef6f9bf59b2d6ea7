"""The command line's progress: a maintained bar (rate, ETA, failures) on a terminal, nothing when not a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

SCRIPT = (
    "from app.console import progress_line\n"
    "report = progress_line('ingesting')\n"
    "for done in range(1, 6):\n"
    "    report(done, 5, failed=done // 3)\n"
    "print('finished')\n"
)


def test_progress_on_a_terminal_shows_count_rate_eta_and_failures():
    primary, secondary = pty.openpty()
    done = subprocess.run([sys.executable, "-c", SCRIPT], stdin=secondary, stdout=secondary, stderr=secondary,
                          timeout=60)
    os.close(secondary)
    out = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal's other side is closed: all was read
            break
        if not chunk:
            break
        out += chunk
    os.close(primary)
    text = out.decode(errors="replace")
    assert done.returncode == 0 and "finished" in text
    assert "ingesting" in text and "5/5" in text and "failed=1" in text
    assert "it/s" in text or "s/it" in text  # the rate
    assert "<" in text  # elapsed<remaining


def test_progress_is_quiet_when_stderr_is_not_a_terminal():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "finished\n"
    assert done.stderr == ""
