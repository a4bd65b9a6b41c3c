"""Coalesced, background writes of the latest feature rows to the Feast online store.

Measured on this machine (loadtest/bench_online_store.py), Feast's online stores take
~5.9k rows/s (SQLite: one UPSERT per feature value) and ~14k rows/s (Redis: Python work per
row inside Feast) even through their lower-level batched interface. Writing every touched
entity of every micro-batch would cap ingestion near those figures. But the online store
only has to hold each entity's *latest* row: rows that arrive while a write is in progress
are merged per entity (newest event time wins), so the store is written at the rate of
distinct entities per write interval, not at the event rate, and ingestion keeps its pace
while the store stays at most one write behind (about a second).

The writer's share of the process is bounded too (`max_busy_fraction`). Feast's stores spend
Python time per value (SQLite ~170 µs per 22-feature row, Redis ~70 µs), so with thousands of
hot entities a write takes most of a second, and writing back to back kept one thread busy
holding the GIL that the ingest loop needs: measured under the 50k/s benchmark, the writer
thread took more samples than the loop itself. After a write of d seconds the next one starts
no sooner than d * (1 - f) / f later (3 d at f = 0.25), so the store falls at most about 4 d
behind and each write covers that many more events per entity (merged, latest wins). A
flush (checkpoint, shutdown) writes at once.

A failed write is retried, with backoff, for `retry_for_s` (30 s by default): a Redis
failover or restart takes seconds, and stopping the service for it would make every
replica restore its state from the changelog at once. The rows of the failed write go back
into the pending map (rows that arrived meanwhile are newer and win), nothing is committed
past them, and only a store still failing after the window stops the service.

Delivery: a row is durable when the write that contains it returned. `durable_seq` is the
highest batch sequence number whose rows are all written; the service commits Kafka offsets
only up to that batch, so "offsets after outputs are durable" still holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from services.ingest.metrics import IngestMetrics

log = logging.getLogger(__name__)


class OnlineSink(Protocol):
    """Where the latest features of each entity go (the Feast online store)."""

    def write_latest(
        self,
        entity_ids: Sequence[str],
        event_ts_ms: npt.NDArray[np.int64],
        matrix: npt.NDArray[np.float32],
    ) -> None:
        """Write one row per entity in one batched call."""


RETRY_FOR_S = 30.0
"""Default time a failing online store is retried before the service stops."""
_FIRST_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 5.0

MAX_BUSY_FRACTION = 0.25
"""Default bound on the share of time the writer spends writing (see the module docstring)."""


class OnlineWriteError(RuntimeError):
    """The online store refused a write; the service stops before committing past it."""


class CoalescingOnlineWriter:
    """Merges rows per entity and writes them from one background thread."""

    def __init__(
        self,
        sink: OnlineSink,
        metrics: IngestMetrics,
        *,
        min_interval_s: float = 0.5,
        max_busy_fraction: float = MAX_BUSY_FRACTION,
        retry_for_s: float = RETRY_FOR_S,
    ) -> None:
        if not 0 < max_busy_fraction <= 1:
            raise ValueError(f"max_busy_fraction must be in (0, 1], got {max_busy_fraction}")
        if retry_for_s < 0:
            raise ValueError(f"retry_for_s must be >= 0, got {retry_for_s}")
        self._retry_for_s = retry_for_s
        self._failing_since: float | None = None
        self._failures = 0
        self._sink = sink
        self._metrics = metrics
        self._min_interval_s = min_interval_s
        self._idle_per_busy = (1.0 - max_busy_fraction) / max_busy_fraction
        self._interval_s = min_interval_s
        """Current least time between the end of a write and the start of the next one."""
        self._lock = threading.Condition()
        self._pending: dict[str, tuple[int, npt.NDArray[np.float32]]] = {}
        self._pending_seq = -1
        self._durable_seq = -1
        self._error: BaseException | None = None
        self._stopping = False
        self._flush_requested = False
        self._writing = False
        self._thread = threading.Thread(target=self._run, name="online-writer", daemon=True)
        self._thread.start()

    @property
    def durable_seq(self) -> int:
        """Every batch with a sequence number up to this one is in the online store."""
        with self._lock:
            self._raise_if_failed()
            return self._durable_seq

    @property
    def failing(self) -> bool:
        """True while writes fail and are being retried (see the module docstring)."""
        return self._failing_since is not None

    def add(
        self,
        seq: int,
        entity_ids: Sequence[str],
        event_ts_ms: npt.NDArray[np.int64],
        rows: npt.NDArray[np.float32],
        take: npt.NDArray[np.int64] | None = None,
        groups: npt.NDArray[np.int64] | None = None,
    ) -> None:
        """Queue the latest row of each entity of batch `seq` (rows in batch order).

        `take` picks the rows to queue (default all); `groups` (an integer per row, equal for
        rows of one entity, such as the engine's slots) lets the newest row per entity be
        found with NumPy first, so the per-entity merge below runs once per distinct entity
        of the batch instead of once per event.
        """
        picked = np.arange(len(entity_ids)) if take is None else take
        if groups is not None and picked.size > 1:
            g = groups[picked]
            order = np.lexsort((picked, event_ts_ms[picked], g))  # newest, then last, per group
            sorted_groups = g[order]
            newest = np.flatnonzero(np.append(sorted_groups[1:] != sorted_groups[:-1], True))
            picked = np.sort(picked[order[newest]])
        ts = event_ts_ms[picked].tolist()
        positions = picked.tolist()
        with self._lock:
            self._raise_if_failed()
            pending = self._pending
            for t, i in zip(ts, positions, strict=True):
                entity = entity_ids[i]
                current = pending.get(entity)
                if current is None or t >= current[0]:
                    pending[entity] = (t, rows[i])
            self._pending_seq = seq
            self._metrics.online_pending_entities.set(len(pending))
            self._lock.notify_all()

    def mark_empty(self, seq: int) -> None:
        """A batch without rows for the store (all rejected or late) is durable once
        everything before it is."""
        with self._lock:
            self._pending_seq = max(self._pending_seq, seq)
            self._settle()
            self._lock.notify_all()

    def _settle(self) -> None:
        """With nothing pending and nothing being written, every batch so far is durable."""
        if not self._pending and not self._writing:
            self._durable_seq = max(self._durable_seq, self._pending_seq)

    def flush(self, timeout_s: float | None = None) -> int:
        """Write what is pending now and wait for it; returns the durable sequence number.

        The default wait outlasts the retry window, so a flush during an outage ends with
        the store back or with the writer's own error, not with a shorter timeout of its own.
        """
        if timeout_s is None:
            timeout_s = self._retry_for_s + 60.0
        deadline = time.monotonic() + timeout_s
        with self._lock:
            target = self._pending_seq
            self._settle()
            self._flush_requested = True
            self._lock.notify_all()
            while self._durable_seq < target and self._error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OnlineWriteError(f"online store write not done after {timeout_s} s")
                self._lock.wait(remaining)
            self._raise_if_failed()
            return self._durable_seq

    def close(self) -> None:
        """Stop the thread (pending rows are not written: call flush() first)."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(30)

    def _retry_later(
        self, batch: dict[str, tuple[int, npt.NDArray[np.float32]]], exc: Exception
    ) -> bool:
        """Put a failed write's rows back and wait out the backoff; False once the retry
        window is spent (the caller then stops the service)."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failing_since >= self._retry_for_s:
            return False
        self._failures += 1
        delay = min(_FIRST_BACKOFF_S * 2 ** (self._failures - 1), _MAX_BACKOFF_S)
        log.warning(
            "online store write failed (%s: %s); retry %d in %.1f s, nothing is committed "
            "past these rows meanwhile",
            type(exc).__name__, exc, self._failures, delay,
        )  # fmt: skip
        self._metrics.online_write_retries.inc()
        with self._lock:
            pending = self._pending
            for entity, row in batch.items():
                newer = pending.get(entity)
                if newer is None or newer[0] < row[0]:
                    pending[entity] = row
            self._writing = False
            self._metrics.online_pending_entities.set(len(pending))
            deadline = now + delay
            while not self._stopping and (remaining := deadline - time.monotonic()) > 0:
                self._lock.wait(remaining)
        return True

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise OnlineWriteError(f"online store write failed: {self._error}") from self._error

    def _run(self) -> None:
        last_write = 0.0
        while True:
            with self._lock:
                while not self._stopping and (
                    not self._pending
                    or (
                        not self._flush_requested
                        and time.monotonic() - last_write < self._interval_s
                    )
                ):
                    timeout = None
                    if self._pending:
                        timeout = max(self._interval_s - (time.monotonic() - last_write), 0.0)
                    self._lock.wait(timeout)
                if self._stopping:
                    return
                batch, self._pending = self._pending, {}
                seq = self._pending_seq
                self._flush_requested = False
                self._writing = True
            started = time.perf_counter()
            try:
                entities = list(batch)
                ts = np.fromiter((batch[e][0] for e in entities), dtype=np.int64, count=len(batch))
                matrix = np.stack([batch[e][1] for e in entities])
                self._sink.write_latest(entities, ts, matrix)
            except BaseException as exc:
                if isinstance(exc, Exception) and self._retry_later(batch, exc):
                    continue
                log.exception("online store write failed; stopping before any commit past it")
                with self._lock:
                    self._error = exc
                    self._writing = False
                    self._lock.notify_all()
                return
            if self._failing_since is not None:
                log.info("online store write succeeded again after %d retries", self._failures)
                self._failing_since, self._failures = None, 0
            elapsed = time.perf_counter() - started
            last_write = time.monotonic()
            self._interval_s = max(self._min_interval_s, elapsed * self._idle_per_busy)
            self._metrics.online_write_seconds.observe(elapsed)
            self._metrics.online_rows.inc(len(entities))
            with self._lock:
                self._writing = False
                self._durable_seq = max(self._durable_seq, seq)
                self._settle()
                self._metrics.online_pending_entities.set(len(self._pending))
                self._lock.notify_all()
