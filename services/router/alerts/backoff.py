"""When to try a failed delivery again.

Exponential backoff spreads retries out while a receiver is down; jitter keeps several
routers (or several sinks) from retrying in lock-step; a receiver's `Retry-After` is a
floor, never shortened, because PagerDuty throttles integrations that ignore it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from services.common.config.model import AlertsConfig


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt `n + 1` after `n` failed attempts."""

    initial_s: float
    """Delay after the first failure (before jitter)."""
    max_s: float
    """Cap of the exponential part."""
    multiplier: float = 2.0
    """Growth per failed attempt."""
    rng: random.Random = field(default_factory=random.Random, compare=False)
    """Source of jitter; seed it in tests that compare delays."""

    @classmethod
    def from_config(cls, cfg: AlertsConfig) -> Backoff:
        """The policy of `alerts.retry_initial_s` / `alerts.retry_max_s`."""
        return cls(initial_s=cfg.retry_initial_s, max_s=cfg.retry_max_s)

    def delay(self, attempts: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after `attempts` (>= 1) failures; at least `retry_after_s`.

        "Equal jitter": half the exponential delay is fixed, half random, so retries are
        spread out but never come back almost at once.
        """
        exponent = min(max(attempts - 1, 0), 60)  # 2**60 s is past any cap; no overflow
        base = min(self.max_s, self.initial_s * self.multiplier**exponent)
        jittered = base / 2 + self.rng.uniform(0, base / 2)
        return max(jittered, retry_after_s or 0.0)
