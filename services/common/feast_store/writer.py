"""Writing the latest feature row of each touched entity to the Feast online store, fast.

Feast's `write_to_online_store`/`push` go through pandas, pyarrow and a generic value
conversion (5-9k rows/s here, SQLite to Redis). The ingest service already holds a float32
matrix, so this writer builds the rows the online store's own batched interface takes
(`Provider.online_write_batch`: EntityKey proto, {feature: Value proto}, event time) and
hands them over in one call. The store then writes them in its own format, so Feast's
`get_online_features` and our reader see exactly the same data as after a Feast push.

Where the time goes (see `loadtest/bench_online_store.py`): most of it is inside the store
(SQLite: one UPSERT statement per feature value; Redis: a murmur3 hash per feature name
per row and, by default, a read of the stored timestamps before writing). Our part is kept
small by building the protos in bulk (`protos.py`, ~4x cheaper than one constructor call
per value) and by pausing the cyclic garbage collector while the batch is built and
written: the batch allocates ~25 objects per row, which triggers collections that walk
every object the imports left behind (Feast's import alone leaves ~150k) and made building
the rows ~2.5x slower. Services should also `gc.freeze()` after start-up for that reason.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from feast import FeatureStore, FeatureView
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from services.common.config.model import FeastConfig
from services.common.feast_store.definitions import JOIN_KEY
from services.common.feast_store.protos import entity_keys, float_values
from services.common.feast_store.store import (
    describe_online_store,
    enable_sqlite_wal,
    registered_feature_view,
    translate_exception,
)
from services.common.features.definition import FEATURE_NAMES

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

Row = tuple[EntityKeyProto, dict[str, ValueProto], datetime, None]


def latest_positions(entity_ids: Sequence[str], event_ts_ms: npt.NDArray[np.int64]) -> list[int]:
    """Positions of the newest row per entity (ties: the later position), in input order.

    A micro-batch may touch an entity several times; only its latest row is worth
    writing, and writing one row per entity keeps SQLite (last write wins) and Redis
    (newest event time wins) in agreement.
    """
    n = len(entity_ids)
    order = np.lexsort((np.arange(n), event_ts_ms)).tolist()
    newest = {entity_ids[i]: i for i in order}
    return sorted(newest.values())


class OnlineFeatureWriter:
    """Writes feature rows for `FEATURE_NAMES` to the online store in one batched call.

    One writer per thread: the SQLite connection of a `FeatureStore` is shared by
    everything using that store object.
    """

    def __init__(self, store: FeatureStore, cfg: FeastConfig) -> None:
        """Bind to the registered feature view; fails now if it was never applied.

        An SQLite store is (re)put in WAL mode, in case it was applied by a plain
        `feast apply` (see `store.apply` for why readers need it).
        """
        self._store = store
        self._view: FeatureView = registered_feature_view(store, cfg)
        self._where = describe_online_store(store.config)
        self._write: Callable[..., Any] = store.provider.online_write_batch
        if store.config.online_store.type == "sqlite":
            enable_sqlite_wal(Path(store.config.online_store.path))

    @property
    def feature_view(self) -> FeatureView:
        """The registered view the rows are written to."""
        return self._view

    def write_latest(
        self,
        entity_ids: Sequence[str],
        event_ts_ms: npt.NDArray[np.int64],
        matrix: npt.NDArray[np.float32],
    ) -> None:
        """Write the latest row of each entity: `matrix[i]` is `entity_ids[i]` at `event_ts_ms[i]`.

        Columns follow FEATURE_NAMES; NaN is written as Feast's null (read back as NaN).
        Duplicate ids are allowed; the row with the newest event time wins. Raises
        `FeatureStoreUnavailable` when the store cannot be reached; nothing is retried
        here (the caller's offsets stay uncommitted, so the batch is replayed).
        """
        n = len(entity_ids)
        if matrix.ndim != 2 or matrix.shape != (n, len(FEATURE_NAMES)):
            raise ValueError(
                f"matrix must have shape ({n}, {len(FEATURE_NAMES)}), got {matrix.shape}"
            )
        if event_ts_ms.shape != (n,):
            raise ValueError(f"event_ts_ms must have shape ({n},), got {event_ts_ms.shape}")
        if n == 0:
            return
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            rows = self.build_rows(entity_ids, event_ts_ms, matrix)
            self._write(self._store.config, self._view, rows, None)
        except Exception as exc:
            ours = translate_exception(exc, self._where)
            if ours is None:
                raise
            raise ours from exc
        finally:
            if gc_was_enabled:
                gc.enable()

    def build_rows(
        self,
        entity_ids: Sequence[str],
        event_ts_ms: npt.NDArray[np.int64],
        matrix: npt.NDArray[np.float32],
    ) -> list[Row]:
        """The `online_write_batch` rows for one batch (public for profiling and tests)."""
        if len(set(entity_ids)) != len(entity_ids):
            keep = latest_positions(entity_ids, event_ts_ms)
            entity_ids = [entity_ids[i] for i in keep]
            event_ts_ms = event_ts_ms[keep]
            matrix = matrix[keep]
        values = float_values(matrix)  # row-major: row i is values[22*i : 22*(i+1)]
        remaining = iter(values)
        names = FEATURE_NAMES
        epoch = _EPOCH
        # `names` is zipped first: zip stops when it runs out, having taken exactly one row
        # (22 values) from `remaining`, so strict=False is intended.
        return [
            (
                key,
                dict(zip(names, remaining, strict=False)),
                epoch + timedelta(milliseconds=ts),
                None,
            )
            for key, ts in zip(entity_keys(JOIN_KEY, entity_ids), event_ts_ms.tolist(), strict=True)
        ]
