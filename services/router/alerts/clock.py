"""Where the alert package gets the time from.

Wall-clock seconds (not monotonic), because retry times and grouping windows are stored
in the outbox and must still mean something after a restart. Injected everywhere, so tests
can step through grouping windows without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Returns the current time in epoch seconds."""

system_clock: Clock = time.time
"""The real clock."""


class ManualClock:
    """A clock that moves only when told to: steps through grouping and resolve windows in
    tests and replays without sleeping."""

    def __init__(self, start: float = 1_767_571_200.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move forward by `seconds`."""
        self.now += seconds
