"""Reading feature vectors of entities from the Feast online store, for the router.

Two Feast paths exist: `FeatureStore.get_online_features` (resolves feature references
against the registry, fans rows out into a response proto, then `to_dict()`), and the
online store's `online_read(config, view, entity_keys)`, which `get_online_features`
itself calls underneath. This reader uses `online_read` through the provider: same
store, same bytes, same semantics, minus the per-call reference resolution and the
response building, which are most of the time for one entity (measured by
`loadtest/bench_online_store.py`). The feature view is taken from the registry once, at
construction, and checked against FEATURE_NAMES.

Online reads, in Feast as here, return the latest row whatever its age (the view's TTL
only applies to historical retrieval); `read_with_event_ts` gives the row's event time
for callers that want to judge staleness. SQLite keeps that time in whole seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from feast import FeatureStore, FeatureView
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from services.common.config.model import FeastConfig
from services.common.feast_store.definitions import JOIN_KEY
from services.common.feast_store.store import (
    describe_online_store,
    registered_feature_view,
    translate_exception,
)
from services.common.features.definition import FEATURE_NAMES

_N: Final = len(FEATURE_NAMES)
_NAN: Final = math.nan
StoredRow = tuple[datetime | None, dict[str, ValueProto] | None]


def _key(entity_id: str) -> EntityKeyProto:
    return EntityKeyProto(join_keys=[JOIN_KEY], entity_values=[ValueProto(string_val=entity_id)])


def _encodable(entity_id: str) -> bool:
    try:
        entity_id.encode()
    except UnicodeEncodeError:
        return False
    return True


def _floats(values: dict[str, ValueProto]) -> list[float]:
    """Feature values in FEATURE_NAMES order; a null (or absent) value becomes NaN."""
    out: list[float] = []
    for name in FEATURE_NAMES:
        proto = values.get(name)
        out.append(proto.float_val if proto is not None and proto.HasField("float_val") else _NAN)
    return out


def _found(ts: datetime | None, values: dict[str, ValueProto] | None) -> bool:
    """Whether `online_read` found the entity.

    SQLite answers (None, None) for an unknown entity; Redis answers a dict of empty
    values with a zero timestamp (its `_ts` field is missing), so both are checked.
    """
    if not values:
        return False
    if ts is not None and ts.timestamp() > 0:
        return True
    return any(v.WhichOneof("val") is not None for v in values.values())


class OnlineFeatureReader:
    """Latest feature vectors of entities, in FEATURE_NAMES order.

    Safe to share between threads on Redis (redis-py pools connections); on SQLite,
    Feast keeps one connection per store object, so give each thread its own store.
    """

    def __init__(self, store: FeatureStore, cfg: FeastConfig) -> None:
        """Bind to the registered feature view; fails now if it was never applied."""
        self._store = store
        self._view: FeatureView = registered_feature_view(store, cfg)
        self._where = describe_online_store(store.config)
        self._online_read: Callable[..., Any] = store.provider.online_read

    @property
    def feature_view(self) -> FeatureView:
        """The registered view rows are read from."""
        return self._view

    def _read_rows(self, entity_ids: Sequence[str]) -> list[StoredRow]:
        try:
            keys = [_key(e) for e in entity_ids]
        except UnicodeEncodeError:
            return self._read_rows_of_storable(entity_ids)
        try:
            rows: list[StoredRow] = self._online_read(self._store.config, self._view, keys)
        except Exception as exc:
            ours = translate_exception(exc, self._where)
            if ours is None:
                raise
            raise ours from exc
        return rows

    def _read_rows_of_storable(self, entity_ids: Sequence[str]) -> list[StoredRow]:
        """Rows where ids with a lone surrogate (not UTF-8: undecodable bytes of a command
        line, or a JSON `\\ud800` escape) are unknown, as no write could store them."""
        storable = [i for i, e in enumerate(entity_ids) if _encodable(e)]
        rows: list[StoredRow] = [(None, None)] * len(entity_ids)
        if storable:
            read = self._read_rows([entity_ids[i] for i in storable])
            for i, row in zip(storable, read, strict=True):
                rows[i] = row
        return rows

    def read(self, entity_ids: Sequence[str]) -> npt.NDArray[np.float32]:
        """Matrix (len(entity_ids), len(FEATURE_NAMES)); an unknown entity's row is NaN."""
        return self.read_with_event_ts(entity_ids)[0]

    def read_with_event_ts(
        self, entity_ids: Sequence[str]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """`read` plus each row's event time in epoch ms (-1 for unknown entities)."""
        n = len(entity_ids)
        matrix = np.full((n, _N), np.nan, dtype=np.float32)
        event_ts = np.full(n, -1, dtype=np.int64)
        if n == 0:
            return matrix, event_ts
        for i, (ts, values) in enumerate(self._read_rows(entity_ids)):
            if values is not None and _found(ts, values):
                matrix[i] = _floats(values)
                if ts is not None:
                    event_ts[i] = round(ts.timestamp() * 1000)
        return matrix, event_ts

    def read_one(self, entity_id: str) -> dict[str, float] | None:
        """Feature name -> value for one entity (NaN for a null value), None if unknown.

        The router's per-request path; values are the stored float32 widened to float.
        """
        ((ts, values),) = self._read_rows([entity_id])
        if values is None or not _found(ts, values):
            return None
        return dict(zip(FEATURE_NAMES, _floats(values), strict=True))
