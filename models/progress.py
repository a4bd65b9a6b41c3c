"""Progress reporting for long jobs without a progress-bar dependency.

Training on a million events takes minutes; a silent terminal for that long looks hung.
Library code calls a plain `Progress` callable with one human-readable line; the CLI
passes `stderr_progress`, notebooks may pass `print`, tests pass nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

Progress = Callable[[str], None]
"""Receives one line of progress text."""


def silent(_line: str) -> None:
    """The default: say nothing."""


def stderr_progress(line: str) -> None:
    """Print a line to stderr (stdout stays clean for results)."""
    print(line, file=sys.stderr, flush=True)


class Stopwatch:
    """Elapsed wall-clock seconds since creation, for `... done in 12.3 s` lines."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds elapsed."""
        return time.perf_counter() - self._start


class Throttle:
    """Lets a progress line through at most once per `every_s` seconds (and the last one),
    so a loop over thousands of batches prints a handful of lines."""

    def __init__(self, progress: Progress, every_s: float = 2.0) -> None:
        self._progress = progress
        self._every = every_s
        self._last = -float("inf")

    def __call__(self, line: str, *, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last >= self._every:
            self._last = now
            self._progress(line)
