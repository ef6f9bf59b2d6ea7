"""What the command line prints while it works: one updating progress line on stderr."""

from __future__ import annotations

import sys
import time


def progress_line(label: str, with_failures: bool = True):
    """A progress callback printing one updating line to stderr: report(done, total[, failed])."""
    started = time.monotonic()

    def report(done: int, total: int, failed: int = 0) -> None:
        elapsed = time.monotonic() - started
        failures = f" ({failed} failed)" if with_failures else ""
        print(f"\r{label}: {done}/{total}{failures} {elapsed:.0f} s", end="" if done < total else "\n",
              file=sys.stderr, flush=True)

    return report
