"""Rolling per-entity window features, computed a micro-batch at a time.

Algorithm (design note: `services/common/features/README.md`):

* Every entity owns a *slot*: a row in a set of state arrays (panes, baselines, recent
  counterparties). Slots are allocated on first sight and released when the entity's
  Kafka partition is revoked, so memory is bounded by the entities of the partitions
  this process owns, times a fixed number of bytes per entity.
* Each window is a ring of panes (tumbling sub-buckets) holding count, sum of amounts and
  sums of log-amount and its square: a window read is a masked sum over a few panes.
* Baselines are exponentially weighted means/variances whose weight starts as a running
  mean (alpha = max(alpha, 1/(n+1))) so that young entities are not dominated by their
  first event.
* A batch is applied event by event in arrival order by a compiled kernel (kernel.py), so
  the result does not depend on how the stream was cut into batches (the one exception,
  `global_rate_1m`, is documented as batch-granular).

Event-time policy: an event whose `ts` is more than `allowed_lateness_ms` behind the
newest `ts` already seen for its entity is *late*. Late events still get a feature
vector (computed against current state, so they are scored and never dropped) but do not
change any state; they are counted. Events that are out of order but within the
lateness bound update the pane their own timestamp falls into, if it is still in the ring.
Windows always end at the newest time seen for the entity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat

import numpy as np
import numpy.typing as npt

from services.common.features.columns import I64, EventColumns
from services.common.features.definition import FEATURE_NAMES, IDLE_TTL_MS_DEFAULT, WINDOWS
from services.common.features.kernel import process_events

F32 = npt.NDArray[np.float32]
BoolArr = npt.NDArray[np.bool_]

_COL = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Tuning of the feature engine; part of the model's training contract."""

    allowed_lateness_ms: int = 60_000
    """How far behind its entity's newest event an event may be and still update state."""
    counterparty_memory: int = 16
    """Counterparties remembered per entity (least recently seen evicted first)."""
    country_memory: int = 8
    """Countries remembered per entity."""
    alpha_slow: float = 0.01
    """Long-run baseline (~100 events): z-scores and level shift."""
    alpha_medium: float = 0.1
    """Medium-run mean of log amount (~10 events): level shift (slow drift)."""
    alpha_fast: float = 0.2
    """Short moving average of the amount (~5 events): price deviation."""
    alpha_volume: float = 0.05
    """Log-quantity and log-spread baselines (~20 events)."""
    alpha_gap: float = 0.3
    """Recent mean of the log inter-arrival time (~3 events): bursts (`gap_shift`); its
    long-run counterpart uses `alpha_slow`."""
    idle_ttl_ms: int = IDLE_TTL_MS_DEFAULT
    """An entity silent for longer than this (event time) starts over: its next event finds
    empty state, and `expire_idle` frees its slot (0: never). Without it, state grows with
    every entity ever seen, not with the active ones (a card used once in March holds its
    slot and changelog record for good), as Flink's state TTL and Kafka Streams' store
    retention exist to prevent."""


@dataclass(slots=True)
class BatchFeatures:
    """Result of one micro-batch, rows in the batch's arrival order."""

    matrix: F32
    """(n, len(FEATURE_NAMES)) float32."""
    late: BoolArr
    """True where the event was late and left state untouched."""
    touched_slots: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    """Slots whose state changed (for checkpoints and the online store)."""
    slots: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    """Slot of each row's entity: an integer id per entity, for grouping rows without strings."""
    misrouted: int = 0
    """Events that came on another partition than their entity's (see `FeatureEngine.process`)."""


_SCALARS: tuple[tuple[str, type[np.generic], float], ...] = (
    ("last_ts", np.int64, -1),
    ("n_seen", np.int64, 0),
    ("last_offset", np.int64, -1),
    ("slow_mean", np.float64, 0.0),
    ("slow_var", np.float64, 0.0),
    ("medium_mean", np.float64, 0.0),
    ("fast_amount", np.float64, 0.0),
    ("logq_mean", np.float64, 0.0),
    ("nq", np.int64, 0),
    ("logspread_mean", np.float64, 0.0),
    ("nspread", np.int64, 0),
    ("gap_slow", np.float64, 0.0),
    ("gap_recent", np.float64, 0.0),
    ("last_cp", np.int64, 0),
    ("cp_streak", np.float64, 0.0),
)
_PANE_ARRAYS: tuple[tuple[str, type[np.generic], float], ...] = (
    ("pane_epoch", np.int64, -1),
    ("pane_count", np.float64, 0.0),
    ("pane_amount", np.float64, 0.0),
    ("pane_x", np.float64, 0.0),
    ("pane_x2", np.float64, 0.0),
)


class FeatureEngine:
    """Holds window state for many entities and turns micro-batches into feature rows."""

    def __init__(self, settings: EngineSettings | None = None, capacity: int = 1024) -> None:
        self.settings = settings or EngineSettings()
        st = self.settings
        self._capacity = capacity
        self._slot_of: dict[str, int] = {}
        self._entity_of: list[str | None] = [None] * capacity
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self.partition_of = np.full(capacity, -1, dtype=np.int32)
        total_panes = sum(w.panes for w in WINDOWS)
        widths: dict[str, int] = {name: 0 for name, _, _ in _SCALARS}
        widths.update({name: total_panes for name, _, _ in _PANE_ARRAYS})
        widths.update({"cp_values": st.counterparty_memory, "cp_seen": st.counterparty_memory})
        widths.update({"co_values": st.country_memory, "co_seen": st.country_memory})
        arrays: tuple[tuple[str, type[np.generic], float], ...] = (
            *_SCALARS,
            *_PANE_ARRAYS,
            ("cp_values", np.int64, 0),
            ("cp_seen", np.int64, -1),
            ("co_values", np.int64, 0),
            ("co_seen", np.int64, -1),
        )
        self._layout: list[tuple[str, type[np.generic], float, int]] = [
            (name, dtype, default, widths[name]) for name, dtype, default in arrays
        ]
        self.state: dict[str, npt.NDArray[np.generic]] = {
            name: self._blank(dtype, default, capacity, width)
            for name, dtype, default, width in self._layout
        }
        self._pane_start = np.cumsum([0] + [w.panes for w in WINDOWS[:-1]]).astype(np.int64)
        self._pane_n = np.array([w.panes for w in WINDOWS], dtype=np.int64)
        self._pane_ms = np.array([w.pane_ms for w in WINDOWS], dtype=np.int64)
        self._params = np.array(
            [
                st.allowed_lateness_ms,
                st.alpha_slow,
                st.alpha_medium,
                st.alpha_fast,
                st.alpha_volume,
                st.alpha_gap,
                st.idle_ttl_ms,
            ],
            dtype=np.float64,
        )
        self._global_epoch = np.full(WINDOWS[0].panes, -1, dtype=np.int64)
        self._global_count = np.zeros(WINDOWS[0].panes)
        self.late_events = 0
        """Late events seen since start (exported as a metric by the ingest service)."""
        self.stale_states = 0
        """Restored entities whose state had an older layout and so started empty."""
        self.rate_scale = 1.0
        """Total over owned partitions; scales `global_rate_1m` to the whole stream."""
        self.newest_ts = -1
        """Newest event time seen (or restored): the clock `expire_idle` measures idleness by."""

    @staticmethod
    def _blank(
        dtype: type[np.generic], default: float, rows: int, width: int
    ) -> npt.NDArray[np.generic]:
        shape: tuple[int, ...] = (rows,) if width == 0 else (rows, width)
        return np.full(shape, default, dtype=dtype)

    # ------------------------------------------------------------------ slots

    def __len__(self) -> int:
        return len(self._slot_of)

    def slot(self, entity_id: str) -> int | None:
        """Slot of a known entity."""
        return self._slot_of.get(entity_id)

    def entity(self, slot: int) -> str | None:
        """Entity held by a slot."""
        return self._entity_of[slot]

    def _grow(self) -> None:
        old = self._capacity
        new = old * 2
        for name, dtype, default, width in self._layout:
            self.state[name] = np.concatenate(
                [self.state[name], self._blank(dtype, default, new - old, width)]
            )
        self.partition_of = np.concatenate(
            [self.partition_of, np.full(new - old, -1, dtype=np.int32)]
        )
        self._entity_of.extend([None] * (new - old))
        self._free.extend(range(new - 1, old - 1, -1))
        self._capacity = new

    def slots_for(self, entity_ids: list[str], partition: npt.NDArray[np.int32]) -> I64:
        """Slot of each entity, allocating fresh (blank) slots for new ones.

        Known entities are looked up in one C-level pass (`map` over `dict.get`); only the
        rows of entities seen for the first time take the Python path that allocates.
        """
        slot_of = self._slot_of
        n = len(entity_ids)
        out = np.fromiter(map(slot_of.get, entity_ids, repeat(-1, n)), dtype=np.int64, count=n)
        for i in np.flatnonzero(out < 0).tolist():
            entity = entity_ids[i]
            slot = slot_of.get(entity)  # an entity new to this batch may occur twice in it
            if slot is None:
                if not self._free:
                    self._grow()
                slot = self._free.pop()
                slot_of[entity] = slot
                self._entity_of[slot] = entity
                self.partition_of[slot] = partition[i]
            out[i] = slot
        return out

    def slots_of_partition(self, partition: int) -> I64:
        """Occupied slots of one partition."""
        slots = np.flatnonzero(self.partition_of == partition)
        return np.array([s for s in slots if self._entity_of[s] is not None], dtype=np.int64)

    def release_partition(self, partition: int) -> int:
        """Forget every entity of a revoked partition; returns how many were released."""
        slots = self.slots_of_partition(partition)
        self._release(slots)
        return int(slots.size)

    def expire_idle(self, partitions: set[int] | None = None) -> list[tuple[str, int]]:
        """Release the entities (of `partitions`, or all) idle past `idle_ttl_ms`.

        Idle is measured against the newest event time seen, not the wall clock, so a replay
        or a backlog after an outage expires what the live stream would have. An expired
        entity's next event finds empty state either way (the kernel checks the same TTL
        against the entity's own gap), so when this runs changes memory, not features (short
        of an event out of order across entities by seconds at the TTL's edge). Returns
        (entity, partition) of each released entity, for the changelog's tombstones.
        """
        ttl = self.settings.idle_ttl_ms
        if ttl <= 0 or self.newest_ts < 0:
            return []
        last_ts: I64 = self.state["last_ts"].view(np.int64)
        slots = np.flatnonzero((last_ts >= 0) & (last_ts < self.newest_ts - ttl))
        if partitions is not None and slots.size:  # filter the few idle ones, not every slot
            slots = slots[np.isin(self.partition_of[slots], np.fromiter(partitions, np.int32))]
        if not slots.size:
            return []
        expired = [
            (entity, int(self.partition_of[s]))
            for s in slots.tolist()
            if (entity := self._entity_of[s]) is not None
        ]
        self._release(slots)
        return expired

    def _release(self, slots: I64) -> None:
        for s in slots.tolist():
            entity = self._entity_of[s]
            if entity is not None:
                del self._slot_of[entity]
            self._entity_of[s] = None
            self._free.append(s)
        if slots.size:
            for name, _dtype, default, _width in self._layout:
                self.state[name][slots] = default
            self.partition_of[slots] = -1

    # ------------------------------------------------------------------ processing

    def process(self, cols: EventColumns) -> BatchFeatures:
        """Feature rows for a micro-batch, updating state; rows follow the batch order."""
        n = len(cols)
        out = np.zeros((n, len(FEATURE_NAMES)), dtype=np.float32)
        late = np.zeros(n, dtype=np.bool_)
        if n == 0:
            return BatchFeatures(out, late)
        slots = self.slots_for(cols.entity_ids, cols.partition)
        offsets, misrouted = self._home_offsets(cols, slots)
        st = self.state
        process_events(
            slots, cols.ts, cols.amount, cols.quantity, cols.spread, cols.counterparty,
            cols.country, offsets,
            st["last_ts"], st["n_seen"], st["last_offset"], st["slow_mean"], st["slow_var"],
            st["medium_mean"], st["fast_amount"], st["logq_mean"], st["nq"],
            st["logspread_mean"], st["nspread"], st["gap_slow"], st["gap_recent"],
            st["last_cp"], st["cp_streak"],
            st["pane_epoch"], st["pane_count"], st["pane_amount"], st["pane_x"], st["pane_x2"],
            self._pane_start, self._pane_n, self._pane_ms,
            st["cp_values"], st["cp_seen"], st["co_values"], st["co_seen"],
            self._params, out, late,
        )  # fmt: skip
        self._global_rate(cols, late, out)
        self.newest_ts = max(self.newest_ts, int(cols.ts.max()))
        self.late_events += int(late.sum())
        return BatchFeatures(out, late, np.unique(slots[~late]), slots, misrouted)

    def _home_offsets(self, cols: EventColumns, slots: I64) -> tuple[I64, int]:
        """Offsets for the redelivery guard: -1 ("unknown") for events that came on another
        partition than their entity's first one.

        An entity's `last_offset` is a position in its own partition; compared with an
        offset of another partition it would call fresh events re-deliveries and leave them
        out of the state for good. That happens when producers do not key events by entity
        id, or two producers use different partitioners (librdkafka's default hashes keys
        with CRC32, the Java client with murmur2). Such events are applied (a re-delivery of
        one may then count twice, as at-least-once allows) and counted.
        """
        offsets = cols.offset
        foreign = (cols.partition != self.partition_of[slots]) & (cols.partition >= 0)
        if not foreign.any():
            return offsets, 0
        offsets = offsets.copy()
        offsets[foreign] = -1
        return offsets, int(foreign.sum())

    def _global_rate(self, cols: EventColumns, late: BoolArr, out: F32) -> None:
        """Batch-granular all-entity rate: the one feature that depends on batch boundaries.

        Each ingest replica sees only its partitions; `rate_scale` (total partitions over
        owned partitions, set on assignment) turns that into an estimate of the whole stream.
        """
        pane_ms, panes = WINDOWS[0].pane_ms, WINDOWS[0].panes
        epochs, counts = self._global_epoch, self._global_count
        ts = cols.ts[~late]
        newest = max(int(cols.ts.max()), int(epochs.max()) * pane_ms) // pane_ms
        if ts.size:
            uniq, per_pane = np.unique(ts // pane_ms, return_counts=True)
            for ep, count in zip(uniq.tolist(), per_pane.tolist(), strict=True):
                if ep <= newest - panes:
                    continue
                col = ep % panes
                if epochs[col] != ep:
                    epochs[col] = ep
                    counts[col] = 0.0
                counts[col] += count
        valid = (epochs > newest - panes) & (epochs <= newest)
        rate = float(counts[valid].sum()) / (WINDOWS[0].size_ms / 1000.0) * self.rate_scale
        out[:, _COL["global_rate_1m"]] = rate

    # ------------------------------------------------------------------ checkpoints

    def _slot_arrays(self) -> list[npt.NDArray[np.generic]]:
        return [self.state[name] for name, _, _, _ in self._layout]

    def export_state(self, slots: I64) -> list[tuple[str, int, bytes]]:
        """(entity id, partition, state blob) of each slot, for the changelog topic.

        The blob is the slot's row of every state array, concatenated in a fixed order,
        prefixed with a layout version; `last_offset` inside lets a restore skip events
        the state already contains.
        """
        held = [s for s in slots.tolist() if self._entity_of[s] is not None]
        if not held:
            return []
        rows = np.asarray(held, dtype=np.int64)
        # One gather per array, then one byte row per slot: a checkpoint of thousands of
        # entities runs on the ingest loop (a join of per-array slices cost ~45 us a slot).
        table = np.concatenate(
            [arr[rows].view(np.uint8).reshape(len(rows), -1) for arr in self._slot_arrays()],
            axis=1,
        )
        parts = self.partition_of[rows].tolist()
        return [
            (self._entity_of[s] or "", p, _STATE_VERSION + row.tobytes())
            for s, p, row in zip(held, parts, table, strict=True)
        ]

    def import_state(self, records: list[tuple[str, int, bytes]]) -> int:
        """Restore entities from changelog blobs (latest per entity); returns how many."""
        current = [r for r in records if not r[2].startswith(_OLDER_STATE_VERSIONS)]
        if stale := len(records) - len(current):
            # An upgrade changed the state's layout (new features): such entities start
            # cold, as new ones do, instead of the restore failing on every start. Counted,
            # not logged: a restore imports partition by partition, and its caller says once
            # how many there were (`stale_states`).
            self.stale_states += stale
            records = current
        if not records:
            return 0
        arrays = self._slot_arrays()
        expected = len(_STATE_VERSION) + sum(
            (arr.shape[1] if arr.ndim == 2 else 1) * arr.itemsize for arr in arrays
        )
        for entity, _partition, blob in records:
            if not blob.startswith(_STATE_VERSION):
                raise ValueError(f"state of {entity!r} has an unknown layout version")
            if len(blob) != expected:
                raise ValueError(
                    f"state of {entity!r} has {len(blob)} bytes, expected {expected} "
                    "(written with other engine settings?)"
                )
        slots = self.slots_for(
            [r[0] for r in records], np.array([r[1] for r in records], dtype=np.int32)
        )
        arrays = self._slot_arrays()  # slots_for may have grown (reallocated) the arrays
        for slot, (_entity, _partition, blob) in zip(slots.tolist(), records, strict=True):
            pos = len(_STATE_VERSION)
            for arr in arrays:
                width = arr.shape[1] if arr.ndim == 2 else 1
                chunk = np.frombuffer(blob, dtype=arr.dtype, count=width, offset=pos)
                arr[slot] = chunk if arr.ndim == 2 else chunk[0]
                pos += width * arr.itemsize
        self.newest_ts = max(self.newest_ts, int(self.state["last_ts"][slots].max()))
        return len(records)


_STATE_VERSION = b"FE3:"
_OLDER_STATE_VERSIONS = (b"FE1:", b"FE2:")
"""Layouts of earlier releases, skipped on restore (FE1: before the inter-arrival baselines;
FE2: before the counterparty streak)."""
