"""Window state that survives restarts and moves with its partitions, as Kafka Streams does it.

State of every entity is checkpointed to a compacted *changelog* topic partitioned like
`events` (entity record: key = entity id, value = the engine's state blob, on the same
partition number as the entity's events). After the entity records of a checkpoint, a
*marker* record per partition holds the `events` position the checkpoint covers.

Restore on assignment of partition p:
1. read changelog partition p to its end; the latest record per entity is its state (none
   when it is a tombstone: the entity expired, `idle_state_ttl_s`), the latest marker is
   position S (or the start of the partition when there is none);
2. replay `events` of p from S up to the group's committed offset C into the engine, without
   publishing anything: that brings the state to exactly where the outputs stopped. An entity
   whose record is newer than S (a checkpoint that crashed before its marker) skips the events
   it already holds, through the `last_offset` inside its state.

Cost: one changelog read (compaction keeps it at one record per entity) plus a replay of at
most one checkpoint interval of the partition's events.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from services.common.events.columnar import parse_columns
from services.common.features.columns import columns_from_parsed
from services.common.features.engine import FeatureEngine
from services.common.kafka.clients import coordinates

log = logging.getLogger(__name__)

MARKER_KEY = b"\x00checkpoint"
"""Key of the per-partition marker; entity ids cannot start with NUL in practice."""


class ChangelogError(RuntimeError):
    """The changelog could not be written or read; the service must not commit past it."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Window state of some entities as of `positions`, exported but not yet written.

    Taking one costs the export only (a copy of each slot's row); writing it can wait until
    the offsets it covers are committed (`IngestService`), so the ingest loop never waits for
    the online store or the broker to checkpoint.
    """

    records: list[tuple[str, int, bytes]]
    """(entity id, partition, state blob)."""
    expired: list[tuple[str, int]]
    """(entity id, partition) of entities whose state was dropped: tombstones."""
    positions: dict[int, int]
    """Partition -> next `events` offset; the state holds every event before it, none after."""
    seq: int
    """Last ingest batch the state includes (-1 when not tracked)."""
    slots: tuple[int, ...] = ()
    """Engine slots exported, to mark changed again if the snapshot is abandoned."""

    @classmethod
    def take(
        cls,
        engine: FeatureEngine,
        slots: Iterable[int],
        positions: dict[int, int],
        expired: Iterable[tuple[str, int]],
        seq: int,
    ) -> Snapshot:
        """Export `slots` now (the state must hold exactly the events before `positions`)."""
        slot_arr = np.fromiter(slots, dtype=np.int64)
        return cls(
            engine.export_state(slot_arr), list(expired), dict(positions), seq,
            tuple(slot_arr.tolist()),
        )  # fmt: skip


class StateChangelog:
    """Checkpoints and restores the window state of the partitions this instance owns."""

    def __init__(
        self,
        producer: Producer,
        consumer_factory: Callable[[], Consumer],
        changelog_topic: str,
        events_topic: str,
    ) -> None:
        self._producer = producer
        self._consumer_factory = consumer_factory
        self.changelog_topic = changelog_topic
        self.events_topic = events_topic
        self._failures: list[str] = []

    # ------------------------------------------------------------------ writing

    def checkpoint(
        self,
        engine: FeatureEngine,
        slots: Iterable[int],
        positions: dict[int, int],
        expired: Iterable[tuple[str, int]] = (),
    ) -> int:
        """Write the state of `slots`, a tombstone per `expired` (entity, partition), then a
        marker per partition in `positions`; wait for acks (rebalances, shutdown).

        `positions` maps partition -> next `events` offset; every event before it must already
        be applied to the state being written. A tombstone (null value) is how a compacted
        topic deletes a key: compaction drops the entity's older records, then the tombstone
        itself after `delete.retention.ms`.
        """
        snapshot = Snapshot.take(engine, slots, positions, expired, seq=-1)
        self.publish(snapshot)
        remaining = self._producer.flush(60.0)
        if remaining:
            raise ChangelogError(f"changelog checkpoint incomplete: {remaining} unacknowledged")
        self.raise_if_failed()
        return len(snapshot.records)

    def publish(self, snapshot: Snapshot) -> None:
        """Hand a snapshot's records, tombstones and then markers to the producer; no wait.

        Order within a partition is the producer's (idempotent) order, so a reader that sees
        a marker sees every record before it. A failed delivery is kept for `raise_if_failed`:
        the service must stop rather than go on checkpointing over a hole.
        """
        produce = self._producer.produce
        on_delivery = self._on_delivery
        for entity, partition, blob in snapshot.records:
            self._produce(produce, partition, entity.encode(), blob, on_delivery)
        for entity, partition in snapshot.expired:
            self._produce(produce, partition, entity.encode(), None, on_delivery)
        for partition, position in snapshot.positions.items():
            self._produce(produce, partition, MARKER_KEY, str(position).encode(), on_delivery)

    def raise_if_failed(self) -> None:
        """Raise if any changelog record handed to the producer was refused."""
        if self._failures:
            raise ChangelogError(
                f"{len(self._failures)} changelog records failed (first: {self._failures[0]})"
            )

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._failures.append(err.str())

    def _produce(
        self,
        produce: Callable[..., None],
        partition: int,
        key: bytes,
        value: bytes | None,
        on_delivery: Callable[[KafkaError | None, object], None],
    ) -> None:
        while True:
            try:
                produce(
                    self.changelog_topic,
                    value=value,
                    key=key,
                    partition=partition,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:
                self._producer.poll(0.05)

    # ------------------------------------------------------------------ restoring

    def restore(
        self, engine: FeatureEngine, committed: dict[int, int], touched: set[int]
    ) -> dict[int, tuple[int, int]]:
        """Restore the state of newly assigned partitions and replay each up to its commit.

        `committed` maps partition -> committed `events` offset. All partitions are read
        with one consumer in one pass (an assignment of 32 partitions must not cost 32 round
        trips). Returns partition -> (entities restored, events replayed). The engine slots
        the replay changed are added to `touched`: their state is newer than the changelog's,
        so the next checkpoint must write them before it moves the marker past the replay
        (else the events replayed are lost from their state at the following restore).
        """
        started = time.monotonic()
        stale_before = engine.stale_states
        records, markers = self._read_changelog(sorted(committed))
        out: dict[int, tuple[int, int]] = {}
        for partition in sorted(committed):
            entities = records.get(partition, {})
            out[partition] = (
                engine.import_state([(k, partition, v) for k, v in entities.items()]),
                0,
            )
        starts = {p: markers.get(p, 0) for p in committed}
        replayed = self._replay(engine, {p: (starts[p], c) for p, c in committed.items()}, touched)
        for partition, count in replayed.items():
            out[partition] = (out[partition][0], count)
        if stale := engine.stale_states - stale_before:
            # Entities not seen since an upgrade changed the state layout keep their old
            # record in the compacted changelog until they are seen again: one line per
            # restore, not one per partition on every start.
            log.warning(
                "%d entities' window state was written by an older engine layout: they "
                "start from empty state", stale,
            )  # fmt: skip
        log.info(
            "restored partition state",
            extra={
                "partitions": len(committed),
                "entities": sum(e for e, _ in out.values()),
                "replayed_events": sum(r for _, r in out.values()),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return out

    def _read_changelog(
        self, partitions: list[int]
    ) -> tuple[dict[int, dict[str, bytes]], dict[int, int]]:
        """Latest record per entity and the latest marker, per partition."""
        consumer = self._consumer_factory()
        records: dict[int, dict[str, bytes]] = {p: {} for p in partitions}
        markers: dict[int, int] = {}
        try:
            remaining: dict[int, int] = {}
            assignment = []
            for p in partitions:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.changelog_topic, p), timeout=30.0
                )
                if high > low:
                    remaining[p] = high
                    assignment.append(TopicPartition(self.changelog_topic, p, OFFSET_BEGINNING))
            if not assignment:
                return records, markers
            consumer.assign(assignment)
            idle = 0
            while remaining and idle < 20:
                msgs = consumer.consume(num_messages=10_000, timeout=0.2)
                idle = 0 if msgs else idle + 1
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise ChangelogError(f"reading changelog: {err.str()}")
                    partition, offset = coordinates(msg)
                    key, value = msg.key(), msg.value()
                    if key == MARKER_KEY:
                        if value:
                            markers[partition] = int(value)
                    elif key is not None and value is not None:
                        records[partition][key.decode()] = value
                    elif key is not None:  # a tombstone not yet compacted away: expired
                        records[partition].pop(key.decode(), None)
                    if offset + 1 >= remaining.get(partition, 0):
                        remaining.pop(partition, None)
            if remaining:
                raise ChangelogError(
                    f"changelog partitions {sorted(remaining)} not read to their end"
                )
            return records, markers
        finally:
            consumer.close()

    def _replay(
        self,
        engine: FeatureEngine,
        ranges: dict[int, tuple[int, int]],
        touched: set[int],
    ) -> dict[int, int]:
        """Re-apply events [start, end) of each partition; outputs are not produced again."""
        replayed = dict.fromkeys(ranges, 0)
        consumer = self._consumer_factory()
        try:
            todo: dict[int, int] = {}
            assignment = []
            for p, (start, committed) in ranges.items():
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.events_topic, p), timeout=30.0
                )
                end = min(committed, high)
                if end > start:
                    todo[p] = end
                    assignment.append(TopicPartition(self.events_topic, p, start))
            if not assignment:
                return replayed
            consumer.assign(assignment)
            idle = 0
            while todo and idle < 20:
                msgs = consumer.consume(num_messages=10_000, timeout=0.2)
                idle = 0 if msgs else idle + 1
                values: list[bytes] = []
                parts: list[int] = []
                offsets: list[int] = []
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    partition, offset = coordinates(msg)
                    stop = todo.get(partition)
                    if stop is None or offset >= stop:
                        continue
                    values.append(msg.value() or b"")
                    parts.append(partition)
                    offsets.append(offset)
                    if offset + 1 >= stop:
                        del todo[partition]
                if not values:
                    continue
                # The same parser as the live path, so a replay rebuilds exactly its state.
                parsed = parse_columns(values)
                part_arr = np.asarray(parts, dtype=np.int32)
                result = engine.process(columns_from_parsed(parsed, part_arr, np.asarray(offsets)))
                touched.update(result.touched_slots.tolist())
                for partition, count in zip(
                    *np.unique(part_arr[parsed.positions], return_counts=True), strict=True
                ):
                    replayed[int(partition)] += int(count)
            return replayed
        finally:
            consumer.close()
