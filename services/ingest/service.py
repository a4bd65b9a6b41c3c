"""The ingest loop: consume a micro-batch, compute features, make outputs durable, then commit.

Per batch (at-least-once end to end):
1. consume up to `batch_max_events` or `batch_timeout_ms`;
2. parse and validate; rejected events to the dead-letter topic with their reason;
3. window features for the valid events (the compiled engine);
4. one `features` message per event; the latest row of each touched entity is queued for
   the Feast online store (written in the background, merged per entity, see online_writer);
5. commit the batch's offsets once every message of it (and of every batch before it) is
   acknowledged by the broker and its rows are in the online store. Batches are pipelined:
   the next one is processed while the broker acknowledges the previous ones, at most
   `max_in_flight_batches` unacknowledged; batches that only wait for the online store are
   bounded by its writer (a few write durations, see online_writer).

Acknowledgements are tracked without a Python call per message (~0.7 µs each): the producer
reports failures only, and when its queue (`len(producer)`: messages not yet acknowledged,
failure reports not yet served) is empty, every batch produced so far is durable.

A crash re-delivers the uncommitted batches; the engine recognises re-delivered events by
offset, so window state is not double counted.
Every `checkpoint_interval_s` the changed state is exported (a snapshot: the state as of the
batches processed so far), and written to the changelog, with its markers, once the offsets it
covers are committed: the loop never waits for the online store or the broker to checkpoint
(it waited for both, 1-4 s every interval in the main job, the p99 of its event-to-features
latency). On a rebalance revoked partitions are checkpointed synchronously before they are
released, and at shutdown everything is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from services.common.config import PlatformConfig
from services.common.events.columnar import ParsedBatch, parse_columns
from services.common.features.columns import columns_from_parsed
from services.common.features.engine import EngineSettings, FeatureEngine
from services.common.features.messages import encode_feature_messages
from services.common.kafka.clients import consumed_columns, make_consumer, make_producer
from services.common.kafka.dead_letters import send_dead_letter
from services.ingest.changelog import Snapshot, StateChangelog
from services.ingest.metrics import IngestMetrics, dead_letter_field
from services.ingest.online_writer import CoalescingOnlineWriter, OnlineSink

log = logging.getLogger(__name__)


FETCH_MIN_BYTES = 256 * 1024
"""About 1,200 events: at 50k/s a fetch waits ~25 ms at most for it (`fetch.wait.max.ms` caps)."""


class DeliveryError(RuntimeError):
    """Outputs of a batch were not acknowledged; its offsets must not be committed."""


class _Acks:
    """Which batches the broker has acknowledged, from failure reports and the queue length."""

    __slots__ = ("acked_seq", "failed", "produced_seq")

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.produced_seq = -1
        """Last batch whose outputs are all handed to the producer."""
        self.acked_seq = -1
        """Every batch up to this one is acknowledged."""

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        """The producer's only delivery report: called for failed messages."""
        if err is not None:
            self.failed.append(err.str())

    def refresh(self, producer: Producer) -> int:
        """Serve reports; raise on a failure; returns the acknowledged batch sequence."""
        producer.poll(0)
        if self.failed:
            raise DeliveryError(
                f"{len(self.failed)} outputs failed (first: {self.failed[0]}); not committing"
            )
        if len(producer) == 0:
            self.acked_seq = self.produced_seq
        return self.acked_seq


class IngestService:
    """One ingest instance: a member of the `events` consumer group."""

    def __init__(
        self,
        config: PlatformConfig,
        *,
        online_sink: OnlineSink | None = None,
        metrics: IngestMetrics | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.config = config
        self.topics = config.kafka.topics
        ing = config.ingest
        self.engine = FeatureEngine(
            EngineSettings(
                allowed_lateness_ms=ing.allowed_lateness_ms,
                idle_ttl_ms=round(ing.idle_state_ttl_s * 1000),
            )
        )
        self.metrics = metrics or IngestMetrics()
        self.online = (
            CoalescingOnlineWriter(
                online_sink,
                self.metrics,
                min_interval_s=ing.online_write_interval_s,
                retry_for_s=ing.online_write_retry_s,
            )
            if online_sink is not None
            else None
        )
        self._clock_ms = clock_ms
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._acks = _Acks()
        self._producer: Producer = make_producer(
            config.kafka,
            "ingest",
            **{"delivery.report.only.error": True, "on_delivery": self._acks.on_delivery},
        )
        self._consumer: Consumer = make_consumer(
            config.kafka,
            "ingest",
            ing.group_id,
            instance_id=ing.group_instance_id,
            **{
                "statistics.interval.ms": 5000,
                "stats_cb": self._on_stats,
                "session.timeout.ms": ing.session_timeout_ms,
                # Fewer, fuller fetches: with 1 byte the broker answers every fetch at once
                # with whatever arrived, hundreds of tiny responses a second under load, and
                # the broker shares the cores. The wait still bounds the added latency.
                "fetch.min.bytes": FETCH_MIN_BYTES,
            },
        )
        restore_settings: dict[str, Any] = {"enable.partition.eof": False}
        self.changelog = StateChangelog(
            self._producer,
            lambda: make_consumer(
                config.kafka, "ingest-restore", f"{ing.group_id}-restore", **restore_settings
            ),
            self.topics.changelog.name,
            self.topics.events.name,
        )
        self._assigned: set[int] = set()
        self._positions: dict[int, int] = {}
        """Next offset to consume per owned partition, as of the last commit."""
        self._processed: dict[int, int] = {}
        """Next offset per owned partition after the batches processed (committed or not)."""
        self._dirty: set[int] = set()
        self._snapshot: Snapshot | None = None
        """Taken, not yet written: waits for the commit of the offsets it covers."""
        self._tombstones: list[tuple[str, int]] = []
        """Expired entities of an abandoned snapshot, for the next checkpoint to write."""
        self._last_checkpoint = time.monotonic()
        self._error: str | None = None
        self._seq = 0
        self._uncommitted: list[tuple[int, dict[int, int]]] = []
        """(batch sequence, partition -> next offset) of batches not committed yet."""
        self.batches = 0
        self._misrouted_warned_at = -math.inf

    # ------------------------------------------------------------------ health

    def live(self) -> tuple[bool, str]:
        """Alive unless the loop died on an error (a restart then re-delivers the batch)."""
        if self._error is not None:
            return False, f"failed: {self._error}"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Ready once subscribed and through the first assignment's restore."""
        if self._ready.is_set():
            return True, f"ready; partitions={sorted(self._assigned)}"
        return False, "starting: joining the consumer group / restoring state"

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish its batch, checkpoint and leave the group."""
        self._stop.set()

    def run(self) -> None:
        """Consume until `stop()`; raises if outputs cannot be made durable."""
        ing = self.config.ingest
        self._consumer.subscribe(
            [self.topics.events.name],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        timeout = ing.batch_timeout_ms / 1000.0
        try:
            while not self._stop.is_set():
                msgs = self._consumer.consume(num_messages=ing.batch_max_events, timeout=timeout)
                if msgs:
                    self.process(msgs)
                self.changelog.raise_if_failed()
                if self._snapshot is not None:
                    self._publish_when_committed()
                elif time.monotonic() - self._last_checkpoint >= ing.checkpoint_interval_s and (
                    not (self.online is not None and self.online.failing)
                ):
                    # While the online store fails nothing is committed, so no snapshot
                    # could be written: none is taken (a restore then replays a little more).
                    self._take_snapshot()
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            if self._assigned and self._error is None:
                self.checkpoint()  # writes the online store and commits everything first
        finally:
            self._consumer.close()  # leaves the group; revoke callback checkpoints the rest
            self._producer.flush(30.0)
            if self.online is not None:
                self.online.close()
            self._ready.clear()

    # ------------------------------------------------------------------ one batch

    def process(self, msgs: list[Message]) -> int:
        """Handle one consumed batch end to end (through the commit); returns valid events."""
        m = self.metrics
        started = time.perf_counter()
        consumed = consumed_columns(msgs, log)
        if not consumed.values:
            return 0
        partitions, offsets = consumed.partitions, consumed.offsets

        parsed = self._bound_clock(parse_columns(consumed.values), consumed.values)
        for r in parsed.rejected:
            send_dead_letter(
                self._producer,
                self.topics.dlq.name,
                r,
                key=consumed.messages[r.index].key(),
                source_topic=self.topics.events.name,
                partition=int(partitions[r.index]),
                offset=int(offsets[r.index]),
            )
            m.dead_letters.labels(field=dead_letter_field(r.field)).inc()
            log.warning(
                "event rejected to the dead-letter topic",
                extra={
                    "reason": r.reason,
                    "partition": int(partitions[r.index]),
                    "offset": int(offsets[r.index]),
                },
            )
        parsed_at = time.perf_counter()
        m.batch_seconds.labels(stage="parse").observe(parsed_at - started)

        seq = self._seq
        self._seq += 1
        if len(parsed):
            cols = columns_from_parsed(parsed, partitions, offsets)
            result = self.engine.process(cols)
            self._dirty.update(result.touched_slots.tolist())
            computed = time.perf_counter()
            m.batch_seconds.labels(stage="features").observe(computed - parsed_at)

            # Acknowledgements of earlier batches, taken before this one joins the queue.
            self._acks.refresh(self._producer)
            self._produce_features(
                cols.event_ids, cols.entity_ids, cols.ts, result.late, result.matrix
            )
            produced = time.perf_counter()
            m.batch_seconds.labels(stage="produce").observe(produced - computed)

            rows = np.flatnonzero(~result.late)
            m.late_events.inc(int(result.late.sum()))
            if result.misrouted:
                self._report_misrouted(result.misrouted)
        else:
            rows = np.empty(0, dtype=np.int64)
        self._acks.produced_seq = seq

        flush_started = time.perf_counter()
        if self.online is not None:
            if rows.size:
                self.online.add(
                    seq, cols.entity_ids, cols.ts, result.matrix, take=rows, groups=result.slots
                )
            else:
                self.online.mark_empty(seq)
        self._uncommitted.append((seq, consumed.commit_to))
        processed = self._processed
        for partition, offset in consumed.commit_to.items():
            processed[partition] = max(offset, processed.get(partition, 0))
        self._commit_durable()
        self._bound_in_flight()
        done = time.perf_counter()
        m.batch_seconds.labels(stage="flush_commit").observe(done - flush_started)
        m.batch_seconds.labels(stage="total").observe(done - started)
        m.batch_events.observe(len(consumed))
        m.events.inc(len(parsed))
        m.entities.set(len(self.engine))
        self.batches += 1
        return len(parsed)

    def _report_misrouted(self, count: int) -> None:
        """Count events off their entity's partition; warn at most once a minute."""
        self.metrics.misrouted_events.inc(count)
        now = time.monotonic()
        if now - self._misrouted_warned_at >= 60.0:
            self._misrouted_warned_at = now
            log.warning(
                "events arrived on another partition than their entity's: key events by "
                "entity_id with one partitioner (murmur2, as the Java client)",
                extra={"events": count, "metric": "anomaly_ingest_misrouted_events_total"},
            )

    def _bound_clock(self, parsed: ParsedBatch, raws: list[bytes]) -> ParsedBatch:
        """Events stamped more than `ingest.max_future_ms` ahead of now, rejected."""
        bound = self.config.ingest.max_future_ms
        if not bound or not len(parsed):
            return parsed
        now = self._clock_ms()
        ahead = np.flatnonzero(parsed.ts > now + bound)
        if not ahead.size:
            return parsed
        reasons = [
            f"field 'ts' is {ts}, {ts - now} ms ahead of the ingest clock (at most {bound} "
            "allowed, ingest.max_future_ms): is the producer's clock or unit wrong?"
            for ts in parsed.ts[ahead].tolist()
        ]
        return parsed.reject(ahead, reasons, "ts", raws)

    def _produce_features(
        self,
        event_ids: list[str],
        entity_ids: list[str],
        ts: npt.NDArray[np.int64],
        late: npt.NDArray[np.bool_],
        matrix: npt.NDArray[np.float32],
    ) -> None:
        values = encode_feature_messages(event_ids, ts, self._clock_ms(), late, matrix)
        produce = self._producer.produce
        topic = self.topics.features.name
        for key, value in zip(map(str.encode, entity_ids), values, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:
                self._produce_when_room(topic, value, key)

    def _produce_when_room(self, topic: str, value: bytes, key: bytes) -> None:
        """The local queue is full: serve the broker's acknowledgements until it takes it."""
        while True:
            self._producer.poll(0.01)
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                continue

    def _commit_durable(self, *, wait: bool = False) -> int:
        """Commit the offsets of every batch whose outputs are all durable (Kafka and store).

        Commits are asynchronous on the hot path (a lost commit only means re-delivery, which
        at-least-once allows) and synchronous when `wait` (checkpoints, rebalances, shutdown).
        """
        if not self._uncommitted:
            return 0
        durable = self._acks.refresh(self._producer)
        if self.online is not None:
            durable = min(durable, self.online.durable_seq)
        ready = [c for s, c in self._uncommitted if s <= durable]
        if not ready:
            return 0
        self._uncommitted = [u for u in self._uncommitted if u[0] > durable]
        offsets: dict[int, int] = {}
        for commit_to in ready:
            for partition, offset in commit_to.items():
                offsets[partition] = max(offset, offsets.get(partition, 0))
        if not offsets:
            # Every partition of these batches was lost since (`_release`): nothing is ours
            # to commit, and librdkafka refuses an empty synchronous commit (_NO_OFFSET).
            return len(ready)
        tps = [TopicPartition(self.topics.events.name, p, o) for p, o in offsets.items()]
        if wait:
            self._consumer.commit(offsets=tps, asynchronous=False)
        else:
            self._consumer.commit(offsets=tps, asynchronous=True)
        self._positions.update(offsets)
        return len(ready)

    def _bound_in_flight(self) -> None:
        """At most `max_in_flight_batches` batches unacknowledged by the broker: wait for it.

        Batches waiting only for the online store do not count: its writer bounds them (it
        writes at least every few write durations), and forcing a write here instead would
        keep the writer busy holding the GIL (see online_writer).
        """
        limit = self.config.ingest.max_in_flight_batches
        while self._acks.produced_seq - self._acks.refresh(self._producer) > limit:
            self._producer.poll(0.01)
        self._commit_durable()

    def _commit_all(self) -> None:
        """Make every processed batch durable (broker acks and online store) and commit."""
        remaining = self._producer.flush(60.0)
        if remaining:
            raise DeliveryError(f"{remaining} outputs unacknowledged after 60 s; not committing")
        self._acks.refresh(self._producer)
        if self.online is not None:
            self.online.flush()
        self._commit_durable(wait=True)

    # ------------------------------------------------------------------ state

    def checkpoint(self, partitions: set[int] | None = None) -> int:
        """Write changed state (of `partitions`, or all owned) and markers to the changelog,
        and wait until it is written (rebalances, shutdown)."""
        self._abandon_snapshot()  # its state is older than what is written now
        owned = self._assigned if partitions is None else partitions & self._assigned
        if not owned:
            self._last_checkpoint = time.monotonic()
            return 0
        started = time.perf_counter()
        # The state about to be written holds every processed event: commit them all first,
        # so that the marker positions equal the commits and a restore replays nothing twice.
        self._commit_all()
        slots, expired = self._changed_state(owned)
        positions = {p: self._positions[p] for p in owned if p in self._positions}
        written = self.changelog.checkpoint(self.engine, slots, positions, expired)
        self._dirty.difference_update(slots)
        self._last_checkpoint = time.monotonic()
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        return written

    def _changed_state(self, owned: set[int]) -> tuple[list[int], list[tuple[str, int]]]:
        """Slots of `owned` partitions changed since their last checkpoint, and the entities
        of those partitions to write tombstones for (expired now or left by an abandoned
        snapshot). Tombstones go before the markers: a restore from those markers must not
        bring the entities back."""
        expired = self.engine.expire_idle(owned)
        self.metrics.expired_entities.inc(len(expired))
        self.metrics.entities.set(len(self.engine))
        part_of = self.engine.partition_of
        if expired:
            self._dirty = {s for s in self._dirty if part_of[s] >= 0}  # released slots
        if self._tombstones:
            # One that came back since holds a slot again: its new record supersedes.
            expired += [
                t for t in self._tombstones if t[1] in owned and self.engine.slot(t[0]) is None
            ]
            self._tombstones = [t for t in self._tombstones if t[1] not in owned]
        return [s for s in self._dirty if int(part_of[s]) in owned], expired

    def _take_snapshot(self) -> None:
        """Export the changed state as of the batches processed so far (no wait)."""
        started = time.perf_counter()
        owned = set(self._assigned)
        self._last_checkpoint = time.monotonic()
        if not owned:
            return
        slots, expired = self._changed_state(owned)
        positions = {p: self._processed[p] for p in owned if p in self._processed}
        self._snapshot = Snapshot.take(self.engine, slots, positions, expired, self._seq - 1)
        self._dirty.difference_update(slots)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        self._publish_when_committed()

    def _publish_when_committed(self) -> None:
        """Write the snapshot once every batch it holds is durable, and committed for sure.

        Its markers must not name positions beyond the group's committed offsets: a restore
        would then skip the events between (the consumer resumes at the commit and finds
        them already in the state, described against it instead of applied). So the offsets
        are committed synchronously first; that is one round trip per interval, the only wait.
        """
        snapshot = self._snapshot
        if snapshot is None:
            return
        durable = self._acks.refresh(self._producer)
        if self.online is not None:
            durable = min(durable, self.online.durable_seq)
        if durable < snapshot.seq:
            return
        started = time.perf_counter()
        self._commit_durable()
        committed = [
            TopicPartition(self.topics.events.name, p, self._positions[p])
            for p in snapshot.positions
            if p in self._positions
        ]
        if committed:
            try:
                self._consumer.commit(offsets=committed, asynchronous=False)
            except KafkaException as exc:
                # A rebalance in progress, a coordinator moving: the next interval tries again.
                log.warning("checkpoint postponed: commit failed", extra={"error": str(exc)})
                self._abandon_snapshot()
                return
        self.changelog.publish(snapshot)
        self._snapshot = None
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)

    def _abandon_snapshot(self) -> None:
        """Drop an unwritten snapshot; its entities are changed again for the next checkpoint."""
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None:
            return
        part_of = self.engine.partition_of
        self._dirty.update(s for s in snapshot.slots if part_of[s] >= 0)
        self._tombstones.extend(snapshot.expired)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.perf_counter()
        committed = {
            tp.partition: (tp.offset if tp.offset >= 0 else 0)
            for tp in consumer.committed(partitions, timeout=30.0)
        }
        restored = self.changelog.restore(self.engine, committed, touched=self._dirty)
        self.metrics.restore_seconds.observe(time.perf_counter() - started)
        self.metrics.replayed_events.inc(sum(r for _, r in restored.values()))
        self._assigned.update(committed)
        self._positions.update(committed)
        self._processed.update(committed)
        log.info(
            "partitions assigned",
            extra={
                "partitions": sorted(committed),
                "entities": sum(e for e, _ in restored.values()),
                "replayed": sum(r for _, r in restored.values()),
            },
        )
        self._update_scale()
        # Ready only now: before its first assignment (and that assignment's restore) the
        # member computes nothing, and a rollout that took it for ready would stop the old
        # pod early. An empty assignment (more members than partitions) counts too.
        self._ready.set()
        # Returning without assign() lets the client apply the (incremental) assignment itself.

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions} & self._assigned
        if revoked:
            try:
                self.checkpoint(revoked)
            except Exception:
                log.exception("checkpoint of revoked partitions failed; next owner replays more")
            self._release(revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions lost without a clean revoke: another member may own them already."""
        self._release({tp.partition for tp in partitions} & self._assigned)

    def _release(self, partitions: set[int]) -> None:
        # A snapshot must not be written for a partition another member may own by now.
        self._abandon_snapshot()
        self._tombstones = [t for t in self._tombstones if t[1] not in partitions]
        # Batches of a lost partition can no longer be committed by this member.
        self._uncommitted = [
            (s, {p: o for p, o in c.items() if p not in partitions}) for s, c in self._uncommitted
        ]
        part_of = self.engine.partition_of
        self._dirty = {s for s in self._dirty if int(part_of[s]) not in partitions}
        for p in partitions:
            released = self.engine.release_partition(p)
            self._assigned.discard(p)
            self._positions.pop(p, None)
            self._processed.pop(p, None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(str(p))
            log.debug("partition released", extra={"partition": p, "entities": released})
        self._update_scale()

    def _update_scale(self) -> None:
        owned = len(self._assigned)
        total = self.topics.events.partitions
        self.engine.rate_scale = total / owned if owned else 1.0
        self.metrics.assigned_partitions.set(owned)

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka statistics (every 5 s): consumer lag per partition, at no extra request."""
        stats: dict[str, Any] = orjson.loads(stats_json)
        topic = stats.get("topics", {}).get(self.topics.events.name, {})
        for pid, part in topic.get("partitions", {}).items():
            if pid == "-1" or int(pid) not in self._assigned:
                continue
            lag = part.get("consumer_lag", -1)
            if lag >= 0:
                self.metrics.consumer_lag.labels(partition=pid).set(lag)
