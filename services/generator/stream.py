"""Assembling the stream chunk by chunk: population, normal draw, anomalies, encoding.

Everything is drawn from one PCG64 generator in a fixed order, so the stream is a pure
function of its `StreamSpec`. The last chunk of a run is drawn in full and cut, so a
shorter run is an exact prefix of a longer one with the same spec.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray

from services.common.anomaly_types import AnomalyType
from services.generator.anomalies import TYPES, Injector
from services.generator.columns import Columns
from services.generator.encoding import EventEncoder, LabelRecord
from services.generator.history import UsageHistory
from services.generator.population import Population, build_population, sample_normal
from services.generator.spec import StreamSpec


class Chunk:
    """A run of consecutive events with their encodings, computed on first use."""

    __slots__ = ("_labels", "columns", "encoder")

    def __init__(self, columns: Columns, encoder: EventEncoder) -> None:
        self.columns = columns
        self.encoder = encoder
        self._labels: list[LabelRecord] | None = None

    def __len__(self) -> int:
        return len(self.columns)

    def slice(self, start: int, stop: int) -> Chunk:
        """Rows [start, stop) as views: pacing sends a chunk in small slices."""
        if start == 0 and stop >= len(self.columns):
            return self
        return Chunk(self.columns.slice(start, stop), self.encoder)

    def values(self) -> list[bytes]:
        """Event JSON, in stream order."""
        return self.encoder.values(self.columns)

    def keys(self) -> list[bytes]:
        """Kafka keys (entity ids), in stream order."""
        return self.encoder.keys(self.columns)

    def labels(self) -> list[LabelRecord]:
        """Ground truth of the anomalous events (absent = normal)."""
        if self._labels is None:
            self._labels = self.encoder.labels(self.columns)
        return self._labels

    def anomaly_counts(self) -> NDArray[np.int64]:
        """Labelled events per type, indexed like `anomalies.TYPES`."""
        label = self.columns.label
        counts: NDArray[np.int64] = np.bincount(label[label >= 0], minlength=len(TYPES))
        return counts


class EventStream:
    """The seeded stream; iterate `chunks()` for its events."""

    def __init__(self, spec: StreamSpec) -> None:
        self.spec = spec
        self._rng = np.random.Generator(np.random.PCG64(spec.seed))
        self.population: Population = build_population(self._rng, spec.entities, spec.payment_share)
        self._history = UsageHistory(self.population)
        self._injector = Injector(spec, self.population, self._history, self._rng)
        self.encoder = EventEncoder(self.population, spec.event_id_prefix)
        self._next = 0

    @property
    def anomaly_types(self) -> tuple[AnomalyType, ...]:
        """Types this population can carry (trade-only ones need trade entities)."""
        return self._injector.types

    def _next_chunk(self) -> Columns:
        spec, pop, rng = self.spec, self.population, self._rng
        size = spec.effective_chunk_size
        first = self._next
        position = np.arange(first, first + size, dtype=np.int64)
        ts = spec.ts_ms(position)
        entity = pop.sample_entities(rng, (int(ts[0]) + int(ts[-1])) / 2000.0, size)
        self._injector.start_episodes(first, size)
        placements, taken = self._injector.place(first, entity)
        draw = sample_normal(pop, rng, position, ts, entity)
        cols = draw.columns
        self._history.record(
            cols.entity, cols.counterparty, cols.country, draw.new_counterparty, draw.new_country
        )
        self._injector.inject(cols, placements, taken)
        cols.round_values()
        self._next += size
        return cols

    def chunks(self, max_events: int | None = None) -> Iterator[Chunk]:
        """Chunks in order, endless unless `max_events` is given (the last one is cut)."""
        left = max_events
        while left is None or left > 0:
            cols = self._next_chunk()
            if left is not None:
                if left < len(cols):
                    cols = cols.slice(0, left)
                left -= len(cols)
            yield Chunk(cols, self.encoder)
