"""What the command line prints while it works: a progress bar on stderr (tqdm), quiet when stderr is not a terminal."""

from __future__ import annotations

import os
import sys


def progress_line(label: str, with_failures: bool = True):
    """A progress callback, report(done, total[, failed]): count, rate, elapsed and ETA, and failures so far.

    Nothing is printed when stderr is not a terminal (a log file, CI): the commands' own summaries say what
    happened there.
    """
    from tqdm import tqdm  # on first use: the service's commands import this module too

    bar = None

    def report(done: int, total: int, failed: int = 0) -> None:
        nonlocal bar
        if bar is None:
            terminal = sys.stderr.isatty()
            # a terminal that reports no size (a bare pty) would get no bar at all
            size = os.get_terminal_size(sys.stderr.fileno()) if terminal else os.terminal_size((0, 0))
            bar = tqdm(total=total, desc=label, file=sys.stderr, disable=not terminal, ncols=size.columns or 100,
                       nrows=size.lines or 24)
        if with_failures:
            bar.set_postfix(failed=failed, refresh=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return report
