"""What defines a stream: the parameters whose values fix every byte of it.

Anything that may differ between two runs meant to be identical (wall clock, output,
pacing) is deliberately absent here, so "same spec" is exactly "same events and labels".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import numpy as np
from numpy.typing import NDArray

from services.common.events.schema import MAX_TS_MS, MIN_TS_MS

FILE_START_TS_MS: Final = 1_767_571_200_000
"""2026-01-05T00:00:00Z, a Monday: the default event time of file outputs, so files repeat."""

UNPACED_TIMELINE_RATE: Final = 100_000.0
"""Events per simulated second when no rate is given (`--rate 0`)."""

DEFAULT_CHUNK_SIZE: Final = 10_000
"""Events per vectorised step: large enough that numpy's per-call overhead vanishes,
small enough to pace smoothly and keep a chunk's columns in cache."""

MAX_CHUNK_SPAN_S: Final = 600.0
"""A chunk never covers more event time than this, so the hour-of-day profile applied per
chunk stays accurate at low rates."""


class GeneratorError(ValueError):
    """A request the generator cannot honour; the message says which value to change."""


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """The seeded description of a synthetic stream."""

    seed: int = 42
    """Seed of the one PCG64 generator everything is drawn from."""
    entities: int = 5_000
    """Number of distinct entities (payment accounts and trade instruments)."""
    anomaly_rate: float = 0.01
    """Target fraction of events that carry an anomaly label."""
    payment_share: float = 0.5
    """Fraction of entities that are payment accounts; the rest are trade instruments."""
    rate: float = 1_000.0
    """Events per second of event time: event i is stamped about i / rate seconds after start."""
    start_ts_ms: int = FILE_START_TS_MS
    """Event time of the first event (ms since the Unix epoch)."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Events generated per vectorised step; part of the spec because it orders the draws."""

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise GeneratorError(f"seed must be between 0 and 2^63-1, got {self.seed}")
        if not 1 <= self.entities <= 10_000_000:
            raise GeneratorError(f"entities must be between 1 and 10,000,000, got {self.entities}")
        if not 0.0 <= self.anomaly_rate <= 0.5:
            raise GeneratorError(f"anomaly rate must be within [0, 0.5], got {self.anomaly_rate}")
        if not 0.0 <= self.payment_share <= 1.0:
            raise GeneratorError(f"payment share must be within [0, 1], got {self.payment_share}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise GeneratorError(f"timeline rate must be a positive number, got {self.rate}")
        if not MIN_TS_MS <= self.start_ts_ms <= MAX_TS_MS:
            raise GeneratorError(
                f"start timestamp {self.start_ts_ms} is outside 2000-01-01..2100-01-01 "
                "(it is in milliseconds since the epoch)"
            )
        if not 1 <= self.chunk_size <= 1_000_000:
            raise GeneratorError(f"chunk size must be within [1, 1000000], got {self.chunk_size}")

    @property
    def effective_chunk_size(self) -> int:
        """Chunk length actually used: shorter at low rates (see MAX_CHUNK_SPAN_S)."""
        return max(1, min(self.chunk_size, math.ceil(self.rate * MAX_CHUNK_SPAN_S)))

    @property
    def event_id_prefix(self) -> str:
        """Prefix of every event id; the start time makes ids unique across live runs."""
        return f"g{self.seed}-{self.start_ts_ms}-"

    def ts_ms(self, positions: NDArray[np.int64]) -> NDArray[np.int64]:
        """Event time of stream positions: integer ms, non-decreasing by construction."""
        offsets: NDArray[np.int64] = np.floor(positions * (1000.0 / self.rate)).astype(np.int64)
        return offsets + np.int64(self.start_ts_ms)

    def positions_in(self, seconds: float) -> int:
        """How many positions `seconds` of event time hold (at least one second's worth)."""
        return max(1, round(seconds * self.rate))


def parse_timestamp(text: str) -> int:
    """Milliseconds since the epoch, from either an integer (ms) or an ISO-8601 time.

    A naive ISO time is taken as UTC: the stream is in UTC everywhere.
    """
    value = text.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise GeneratorError(
            f"start timestamp {text!r} is neither milliseconds since the epoch "
            "nor an ISO-8601 time such as 2026-01-05T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)
