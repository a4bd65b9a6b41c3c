"""Validated events turned into the numeric columns the window engine consumes.

The engine never looks at dicts: it works on NumPy columns so that a micro-batch of
thousands of events costs a few dozen vector operations. Strings that the features only
compare for equality (counterparty, country) become stable 63-bit hashes here, stable
across processes (unlike `hash()`) because they are checkpointed in the state changelog.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.common.events import Event
from services.common.events.columnar import Categorical, ParsedBatch

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]


def stable_hash(text: str) -> int:
    """Non-zero 63-bit hash, identical in every process (0 means 'absent')."""
    data = text.encode()
    value = (zlib.crc32(data) << 31) ^ zlib.adler32(data)
    return (value & 0x7FFF_FFFF_FFFF_FFFF) or 1


@dataclass(frozen=True, slots=True)
class EventColumns:
    """One micro-batch, column-wise, in arrival order.

    `partition` and `offset` are the Kafka coordinates (or -1 for files); the engine
    needs them to checkpoint state per partition and to skip already-applied events
    when it replays after a restore.
    """

    entity_ids: list[str]
    event_ids: list[str]
    partition: I32
    offset: I64
    ts: I64
    amount: F64
    quantity: F64
    spread: F64
    counterparty: I64
    country: I64

    def __len__(self) -> int:
        return len(self.entity_ids)


_HASHES: dict[str, int] = {}
_HASH_CACHE_LIMIT = 1_000_000


def _hash_or_zero(value: object) -> int:
    """Cached: counterparties and countries repeat, and hashing is most of this column's cost."""
    if not isinstance(value, str):
        return 0
    cached = _HASHES.get(value)
    if cached is None:
        if len(_HASHES) >= _HASH_CACHE_LIMIT:
            _HASHES.clear()
        cached = _HASHES[value] = stable_hash(value)
    return cached


def columns_from_events(
    events: Sequence[Event],
    partitions: Sequence[int] | None = None,
    offsets: Sequence[int] | None = None,
) -> EventColumns:
    """Columns of validated events; metric samples put their `value` in the amount column."""
    n = len(events)
    nan = float("nan")
    return EventColumns(
        entity_ids=[e["entity_id"] for e in events],
        event_ids=[e["event_id"] for e in events],
        partition=(
            np.asarray(partitions, dtype=np.int32)
            if partitions is not None
            else np.full(n, -1, dtype=np.int32)
        ),
        offset=(
            np.asarray(offsets, dtype=np.int64)
            if offsets is not None
            else np.full(n, -1, dtype=np.int64)
        ),
        ts=np.fromiter((e["ts"] for e in events), dtype=np.int64, count=n),
        amount=np.fromiter(
            (e["amount"] if "amount" in e else e["value"] for e in events),
            dtype=np.float64,
            count=n,
        ),
        quantity=np.fromiter((e.get("quantity", nan) for e in events), dtype=np.float64, count=n),
        spread=np.fromiter((e.get("spread_bps", nan) for e in events), dtype=np.float64, count=n),
        counterparty=np.fromiter(
            (_hash_or_zero(e.get("counterparty")) for e in events), dtype=np.int64, count=n
        ),
        country=np.fromiter(
            (_hash_or_zero(e.get("country")) for e in events), dtype=np.int64, count=n
        ),
    )


def _hashed(column: Categorical) -> I64:
    """Hash of each row's string (0 where absent), each distinct string hashed once."""
    table = np.fromiter(map(_hash_or_zero, column.values), dtype=np.int64, count=len(column.values))
    # Code -1 (absent) picks the appended 0.
    return np.append(table, np.int64(0))[column.codes]


def columns_from_parsed(
    parsed: ParsedBatch,
    partitions: npt.NDArray[np.integer] | None = None,
    offsets: npt.NDArray[np.integer] | None = None,
) -> EventColumns:
    """Columns of a batch parsed by `parse_columns`; `partitions`/`offsets` are per message
    of the whole batch (rejected ones included), picked at the valid events' positions.

    The same columns `columns_from_events` builds from the same events (a test holds them
    together), without a dict per event.
    """
    n = len(parsed)
    pos = parsed.positions
    return EventColumns(
        entity_ids=parsed.entity_ids,
        event_ids=parsed.event_ids,
        partition=(
            np.asarray(partitions, dtype=np.int32)[pos]
            if partitions is not None
            else np.full(n, -1, dtype=np.int32)
        ),
        offset=(
            np.asarray(offsets, dtype=np.int64)[pos]
            if offsets is not None
            else np.full(n, -1, dtype=np.int64)
        ),
        ts=parsed.ts,
        amount=parsed.amount,
        quantity=parsed.quantity,
        spread=parsed.spread,
        counterparty=_hashed(parsed.counterparty),
        country=_hashed(parsed.country),
    )
