"""The durable outbox: alerts wait here, per sink, until that sink has taken them.

The router commits its Kafka offsets only after `enqueue` returns, so `enqueue` returns
only once the alerts are committed to SQLite (WAL, `synchronous=FULL`: a committed
transaction survives a process crash and a power cut). Bookkeeping after a delivery is
committed with `synchronous=NORMAL` (safe against a process crash, no fsync per commit;
the next FULL commit or checkpoint syncs it): losing it to a power cut only means an alert
is delivered twice, which every sink's receiver deduplicates. Delivery state is kept per
(alert, sink), so PagerDuty throttling never holds back the Kafka sink, and a refused
alert is kept as `dead` with the receiver's status and message instead of vanishing.

Tables:
    alerts(id, event_id, anomaly_type, body, enqueued_at)   one row per alert (JSON body)
    deliveries(alert_id, sink, state, attempts, ...)        pending | delivered | dead
    sink_state(sink, key, value)                            small durable state of sinks
                                                            (PagerDuty open incidents)
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from services.router.alerts.alert import Alert
from services.router.alerts.clock import Clock, system_clock
from services.router.alerts.metrics import AlertMetrics

log = logging.getLogger(__name__)

DeliveryState = Literal["pending", "delivered", "dead"]
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    anomaly_type TEXT NOT NULL,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    UNIQUE (event_id, anomaly_type)
);
CREATE TABLE IF NOT EXISTS deliveries (
    alert_id INTEGER NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
    sink TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    first_failure_at REAL,
    last_status INTEGER,
    last_error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (alert_id, sink)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_state
    ON deliveries (state, sink, next_attempt_at);
CREATE TABLE IF NOT EXISTS sink_state (
    sink TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (sink, key)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class OutboxEntry:
    """An alert due for one sink."""

    alert_id: int
    alert: Alert
    enqueued_at: float
    """Epoch seconds; delivery latency is measured from here."""
    attempts: int
    """Failed attempts so far (holds for grouping do not count)."""
    first_failure_at: float | None
    """When the first failed attempt happened; `give_up_after_s` counts from here."""


@dataclass(frozen=True)
class DeadEntry:
    """An alert a sink refused for good, with the receiver's answer."""

    alert_id: int
    sink: str
    event_id: str
    attempts: int
    last_status: int | None
    last_error: str | None
    updated_at: float


@dataclass(frozen=True)
class SinkStats:
    """Delivery states of one sink's alerts."""

    pending: int = 0
    delivered: int = 0
    dead: int = 0


class SinkStateStore:
    """A sink's small key -> text store inside the outbox database (same durability)."""

    def __init__(self, outbox: Outbox, sink: str) -> None:
        self._outbox = outbox
        self._sink = sink

    def load(self) -> dict[str, str]:
        """Every stored key and value of this sink."""
        return self._outbox.state_load(self._sink)

    def put(self, key: str, value: str) -> None:
        """Store (or replace) one value, durably."""
        self._outbox.state_put(self._sink, key, value)

    def delete(self, key: str) -> None:
        """Forget one key (missing keys are fine)."""
        self._outbox.state_delete(self._sink, key)


_ENTITY_IN = (
    "IFNULL(CASE WHEN json_valid(CAST(a.body AS TEXT))"
    " THEN json_extract(CAST(a.body AS TEXT), '$.entity_id') END, '')"
    " IN (SELECT value FROM json_each(?))"
)
"""The alert's entity is one of a JSON list. Read from the body (no column of its own, so
no schema change); an unreadable body counts as no entity, so that `due` still returns it
and marks it dead instead of failing the whole query."""


def _json_list(entities: Collection[str]) -> str:
    return json.dumps(sorted(entities))


def _entity_filter(entities: Collection[str]) -> tuple[str, tuple[str, ...]]:
    """SQL (and its argument) that leaves out alerts of `entities`; nothing for none."""
    if not entities:
        return "", ()
    return f" AND NOT {_ENTITY_IN}", (_json_list(entities),)


class Outbox:
    """SQLite-backed queue of alerts with per-sink delivery state; safe to share by threads.

    `sinks` names the sinks every enqueued alert must reach; an inspection tool may pass
    none. One connection guarded by a lock serves both the router's thread (enqueue) and
    the dispatcher's; every statement is short, network I/O never happens under the lock.
    """

    def __init__(
        self,
        path: str | Path,
        sinks: Sequence[str] = (),
        *,
        clock: Clock = system_clock,
        metrics: AlertMetrics | None = None,
    ) -> None:
        self.path = Path(path)
        self.sinks = tuple(sinks)
        self._clock = clock
        self._metrics = metrics
        self._lock = threading.RLock()
        self._listeners: list[Callable[[], None]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._synchronous = "NORMAL"
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    # ------------------------------------------------------------------ lifecycle

    def _migrate(self) -> None:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version not in (0, SCHEMA_VERSION):
            raise RuntimeError(
                f"{self.path}: outbox schema version {version}, this code knows "
                f"{SCHEMA_VERSION}; deliver or move the old outbox first"
            )
        with self._lock:  # executescript manages its own transaction: BEGIN ... COMMIT
            self._conn.executescript(
                f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            )

    def close(self) -> None:
        """Close the database; pending alerts stay on disk for the next process."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback` after each enqueue that stored something (wakes the dispatcher)."""
        self._listeners.append(callback)

    @contextlib.contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (IMMEDIATE) so that it never deadlocks.

        `durable` commits with an fsync (survives a power cut), for what the router's
        offset commit depends on; other bookkeeping can be redone and skips it.
        """
        with self._lock:
            wanted = "FULL" if durable else "NORMAL"
            if self._synchronous != wanted:  # a pragma, so only outside a transaction
                self._conn.execute(f"PRAGMA synchronous={wanted}")
                self._synchronous = wanted
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ enqueue

    def enqueue(self, alerts: Sequence[Alert]) -> int:
        """Store alerts for every sink; returns once committed. Returns how many were new.

        An alert whose (event_id, anomaly_type) is already in the outbox is skipped: after a
        crash the router re-reads uncommitted offsets and re-decides the same events.
        """
        if not alerts:
            return 0
        now = self._clock()
        inserted = 0
        with self._write(durable=True) as conn:
            for alert in alerts:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO alerts (event_id, anomaly_type, body, enqueued_at)"
                    " VALUES (?, ?, ?, ?)",
                    (alert.event_id, alert.type_name, alert.to_json(), now),
                )
                if cur.rowcount != 1:
                    continue
                inserted += 1
                conn.executemany(
                    "INSERT INTO deliveries (alert_id, sink, state, next_attempt_at, updated_at)"
                    " VALUES (?, ?, 'pending', ?, ?)",
                    [(cur.lastrowid, sink, now, now) for sink in self.sinks],
                )
        if self._metrics is not None and inserted:
            for sink in self.sinks:
                self._metrics.enqueued.labels(sink).inc(inserted)
        if inserted:
            for listener in self._listeners:
                listener()
        return inserted

    # ------------------------------------------------------------------ dispatch side

    def due(
        self, sink: str, limit: int, *, exclude_entities: Collection[str] = ()
    ) -> list[OutboxEntry]:
        """Up to `limit` pending alerts of `sink` whose next attempt time has come, oldest first.

        Alerts of `exclude_entities` (suppressed by the flags) are skipped in the query, not
        after it: a backlog of one suppressed entity must not fill every batch and hold back
        the alerts of the others.

        A row that no longer parses as an Alert (hand-edited, older schema) is marked dead
        with the reason rather than blocking the queue.
        """
        now = self._clock()
        skip, skip_args = _entity_filter(exclude_entities)
        with self._lock:
            rows = self._conn.execute(
                "SELECT d.alert_id, a.body, a.enqueued_at, d.attempts, d.first_failure_at"
                " FROM deliveries d JOIN alerts a ON a.id = d.alert_id"
                " WHERE d.state = 'pending' AND d.sink = ? AND d.next_attempt_at <= ?"
                f"{skip} ORDER BY d.alert_id LIMIT ?",
                (sink, now, *skip_args, limit),
            ).fetchall()
        entries: list[OutboxEntry] = []
        for alert_id, body, enqueued_at, attempts, first_failure_at in rows:
            try:
                alert = Alert.from_json(body)
            except ValidationError as exc:
                log.error("unreadable alert %s in the outbox: %s", alert_id, exc)
                self.mark_dead(sink, [alert_id], status=None, error=f"unreadable: {exc}")
                continue
            entries.append(OutboxEntry(alert_id, alert, enqueued_at, attempts, first_failure_at))
        return entries

    def mark_delivered(self, sink: str, alert_ids: Sequence[int]) -> None:
        """The sink accepted these alerts."""
        now = self._clock()
        with self._write() as conn:
            conn.executemany(
                "UPDATE deliveries SET state = 'delivered', updated_at = ?, last_error = NULL"
                " WHERE alert_id = ? AND sink = ?",
                [(now, alert_id, sink) for alert_id in alert_ids],
            )

    def mark_held(self, sink: str, alert_ids: Sequence[int], until: float) -> None:
        """Keep these alerts pending until `until` without counting an attempt (grouping)."""
        now = self._clock()
        with self._write() as conn:
            conn.executemany(
                "UPDATE deliveries SET next_attempt_at = ?, updated_at = ?"
                " WHERE alert_id = ? AND sink = ?",
                [(until, now, alert_id, sink) for alert_id in alert_ids],
            )

    def mark_retry(
        self,
        sink: str,
        alert_ids: Sequence[int],
        *,
        next_attempt_at: float,
        status: int | None,
        error: str,
    ) -> None:
        """A failed attempt that will be repeated at `next_attempt_at`."""
        now = self._clock()
        with self._write() as conn:
            conn.executemany(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?,"
                " first_failure_at = COALESCE(first_failure_at, ?), last_status = ?,"
                " last_error = ?, updated_at = ? WHERE alert_id = ? AND sink = ?",
                [
                    (next_attempt_at, now, status, error[:2000], now, alert_id, sink)
                    for alert_id in alert_ids
                ],
            )

    def mark_dead(
        self, sink: str, alert_ids: Sequence[int], *, status: int | None, error: str
    ) -> None:
        """The sink refused these alerts for good; they stay, visible, until retried by hand."""
        now = self._clock()
        with self._write() as conn:
            conn.executemany(
                "UPDATE deliveries SET state = 'dead', attempts = attempts + 1,"
                " first_failure_at = COALESCE(first_failure_at, ?), last_status = ?,"
                " last_error = ?, updated_at = ? WHERE alert_id = ? AND sink = ?",
                [(now, status, error[:2000], now, alert_id, sink) for alert_id in alert_ids],
            )

    def next_due_at(self, sink: str, *, exclude_entities: Collection[str] = ()) -> float | None:
        """Earliest next attempt time of the sink's pending alerts (None when none).

        `exclude_entities` as in `due`: a suppressed entity's alert, due long ago, would
        otherwise wake the dispatcher at once, again and again.
        """
        skip, skip_args = _entity_filter(exclude_entities)
        with self._lock:
            row = self._conn.execute(
                "SELECT MIN(d.next_attempt_at) FROM deliveries d JOIN alerts a ON a.id = d.alert_id"
                f" WHERE d.state = 'pending' AND d.sink = ?{skip}",
                (sink, *skip_args),
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def pending_of_entities(self, entities: Collection[str]) -> dict[str, int]:
        """Pending alerts of `entities` per sink (what entity suppression holds back)."""
        if not entities:
            return {}
        with self._lock:
            rows = self._conn.execute(
                "SELECT d.sink, COUNT(*) FROM deliveries d JOIN alerts a ON a.id = d.alert_id"
                f" WHERE d.state = 'pending' AND {_ENTITY_IN} GROUP BY d.sink",
                (_json_list(entities),),
            ).fetchall()
        return {sink: n for sink, n in rows}

    def prune(self, retention_s: float) -> int:
        """Delete deliveries delivered more than `retention_s` ago and alerts left with none.

        The alert row itself is kept for the same retention so that a replay within it is
        still recognised as a duplicate. Returns the number of alerts deleted.
        """
        cutoff = self._clock() - retention_s
        with self._write() as conn:
            conn.execute(
                "DELETE FROM deliveries WHERE state = 'delivered' AND updated_at < ?", (cutoff,)
            )
            cur = conn.execute(
                "DELETE FROM alerts WHERE enqueued_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM deliveries d WHERE d.alert_id = alerts.id)",
                (cutoff,),
            )
            return cur.rowcount

    # ------------------------------------------------------------------ inspection

    def stats(self, *, delivered: bool = True) -> dict[str, SinkStats]:
        """Delivery states per sink name (every sink that has rows, configured or not).

        `delivered=False` leaves the (large, retained) delivered rows uncounted: cheap
        enough for a gauge updated on every dispatch pass.
        """
        states = ("pending", "dead", "delivered") if delivered else ("pending", "dead")
        marks = ", ".join("?" * len(states))
        with self._lock:
            rows = self._conn.execute(
                "SELECT sink, state, COUNT(*) FROM deliveries"
                f" WHERE state IN ({marks}) GROUP BY sink, state",
                states,
            ).fetchall()
        counts: dict[str, dict[str, int]] = {}
        for sink, state, n in rows:
            counts.setdefault(sink, {})[state] = n
        return {sink: SinkStats(**by_state) for sink, by_state in counts.items()}

    def dead(self, sink: str | None = None, limit: int = 100) -> list[DeadEntry]:
        """The most recently refused alerts, newest first."""
        where, args = ("AND d.sink = ?", (sink,)) if sink else ("", ())
        with self._lock:
            rows = self._conn.execute(
                "SELECT d.alert_id, d.sink, a.event_id, d.attempts, d.last_status, d.last_error,"
                " d.updated_at FROM deliveries d JOIN alerts a ON a.id = d.alert_id"
                f" WHERE d.state = 'dead' {where} ORDER BY d.updated_at DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [DeadEntry(*row) for row in rows]

    def retry_dead(self, sink: str | None = None) -> int:
        """Make dead alerts pending again (after fixing the cause); returns how many."""
        now = self._clock()
        where, args = ("AND sink = ?", (sink,)) if sink else ("", ())
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, first_failure_at = NULL,"
                f" next_attempt_at = ?, updated_at = ? WHERE state = 'dead' {where}",
                (now, now, *args),
            )
            count = cur.rowcount
        if count:
            for listener in self._listeners:
                listener()
        return count

    def reassign(self, old: str, new: str) -> tuple[int, int]:
        """Hand the undelivered alerts of sink name `old` to sink `new`; returns (moved,
        left): `left` counts alerts that already have a delivery for `new`, which stay as
        they are under `old`.

        For a sink renamed or removed from the configuration: its rows would otherwise wait
        for a sink that no longer exists. Pending rows start afresh (no attempts), dead ones
        stay dead (`retry_dead` makes them pending); the sink's durable state (PagerDuty's
        open incidents) moves too, unless `new` has its own. Delivered rows stay as history.
        """
        if old == new:
            raise ValueError("reassigning a sink to itself")
        now = self._clock()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE OR IGNORE deliveries SET sink = ?, attempts ="
                " CASE state WHEN 'pending' THEN 0 ELSE attempts END,"
                " first_failure_at = CASE state WHEN 'pending' THEN NULL ELSE first_failure_at"
                " END, next_attempt_at = ?, updated_at = ?"
                " WHERE sink = ? AND state IN ('pending', 'dead')",
                (new, now, now, old),
            )
            moved = cur.rowcount
            (left,) = conn.execute(
                "SELECT COUNT(*) FROM deliveries WHERE sink = ? AND state IN ('pending', 'dead')",
                (old,),
            ).fetchone()
            conn.execute("UPDATE OR IGNORE sink_state SET sink = ? WHERE sink = ?", (new, old))
        if moved:
            for listener in self._listeners:
                listener()
        return moved, int(left)

    # ------------------------------------------------------------------ sink state

    def state_for(self, sink: str) -> SinkStateStore:
        """The durable key -> text store of one sink."""
        return SinkStateStore(self, sink)

    def state_load(self, sink: str) -> dict[str, str]:
        """Every stored key and value of `sink`."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, value FROM sink_state WHERE sink = ?", (sink,)
            ).fetchall()
        return dict(rows)

    def state_put(self, sink: str, key: str, value: str) -> None:
        """Store (or replace) one value of `sink`."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO sink_state (sink, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (sink, key) DO UPDATE SET value = excluded.value",
                (sink, key, value),
            )

    def state_delete(self, sink: str, key: str) -> None:
        """Forget one key of `sink`."""
        with self._write() as conn:
            conn.execute("DELETE FROM sink_state WHERE sink = ? AND key = ?", (sink, key))
