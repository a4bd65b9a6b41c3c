"""Window features of a replayed stream: the ingest service's engine, fed in stream order.

One `FeatureEngine` holds the state of every entity for the whole replay (ingest splits it by
partition; the features of an event depend only on its own entity's history, so the result is
the same), with the ingest configuration's lateness bound and idle-state TTL. Events go
through it the way training fed it (`models.dataset.feature_batches`), so the one
batch-granular feature (`global_rate_1m`) is computed as the models were trained on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.dataset import feature_batches
from services.common.events import Event
from services.common.features.definition import FEATURE_NAMES, IDLE_TTL_MS_DEFAULT
from services.common.features.engine import EngineSettings, FeatureEngine


@dataclass(frozen=True, slots=True)
class FeatureRows:
    """Feature vectors of consecutive events, with their identities."""

    event_ids: list[str]
    entity_ids: list[str]
    ts: npt.NDArray[np.int64]
    matrix: npt.NDArray[np.float32]
    late: npt.NDArray[np.bool_]
    """Events past the lateness bound: featurized against current state, state unchanged."""


class StreamFeatures:
    """Turns the events of one stream, batch after batch, into feature rows."""

    def __init__(self, allowed_lateness_ms: int, idle_ttl_ms: int = IDLE_TTL_MS_DEFAULT) -> None:
        self._engine = FeatureEngine(
            EngineSettings(allowed_lateness_ms=allowed_lateness_ms, idle_ttl_ms=idle_ttl_ms)
        )

    def rows(self, events: Sequence[Event]) -> FeatureRows:
        """Features of the next events of the stream (in their order)."""
        matrices, late, ts = [], [], []
        event_ids: list[str] = []
        entity_ids: list[str] = []
        for cols, out in feature_batches(self._engine, events):
            matrices.append(out.matrix)
            late.append(out.late)
            ts.append(cols.ts)
            event_ids.extend(cols.event_ids)
            entity_ids.extend(cols.entity_ids)
        if not matrices:
            empty = np.empty(0, np.int64)
            return FeatureRows([], [], empty, np.empty((0, len(FEATURE_NAMES)), np.float32),
                               np.empty(0, np.bool_))  # fmt: skip
        return FeatureRows(
            event_ids=event_ids,
            entity_ids=entity_ids,
            ts=np.concatenate(ts).astype(np.int64),
            matrix=np.ascontiguousarray(np.concatenate(matrices), dtype=np.float32),
            late=np.concatenate(late).astype(np.bool_),
        )
