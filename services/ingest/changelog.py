"""Window state that survives restarts and moves with its partitions, as Kafka Streams does it.

State of every entity is checkpointed to a compacted *changelog* topic partitioned like
`events` (entity record: key = entity id, value = the engine's state blob, on the same
partition number as the entity's events). After the entity records of a checkpoint, a
*marker* record per partition holds the `events` position the checkpoint covers.

Restore on assignment of partition p:
1. read changelog partition p to its end; the latest record per entity is its state, the
   latest marker is position S (or the start of the partition when there is none);
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

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from services.common.events import parse_batch
from services.common.features.columns import columns_from_events
from services.common.features.engine import FeatureEngine
from services.common.kafka.clients import coordinates

log = logging.getLogger(__name__)

MARKER_KEY = b"\x00checkpoint"
"""Key of the per-partition marker; entity ids cannot start with NUL in practice."""


class ChangelogError(RuntimeError):
    """The changelog could not be written or read; the service must not commit past it."""


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

    # ------------------------------------------------------------------ writing

    def checkpoint(
        self, engine: FeatureEngine, slots: Iterable[int], positions: dict[int, int]
    ) -> int:
        """Write the state of `slots`, then a marker per partition in `positions`; wait for acks.

        `positions` maps partition -> next `events` offset; every event before it must already
        be applied to the state being written.
        """
        import numpy as np

        records = engine.export_state(np.fromiter(slots, dtype=np.int64))
        failures: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                failures.append(err.str())

        produce = self._producer.produce
        for entity, partition, blob in records:
            self._produce(produce, partition, entity.encode(), blob, on_delivery)
        for partition, position in positions.items():
            self._produce(produce, partition, MARKER_KEY, str(position).encode(), on_delivery)
        remaining = self._producer.flush(60.0)
        if remaining or failures:
            raise ChangelogError(
                f"changelog checkpoint incomplete: {remaining} unacknowledged, "
                f"{len(failures)} failed ({failures[:1]})"
            )
        return len(records)

    def _produce(
        self,
        produce: Callable[..., None],
        partition: int,
        key: bytes,
        value: bytes,
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

    def restore(self, engine: FeatureEngine, partition: int, committed: int) -> tuple[int, int]:
        """Restore one partition's state and replay it up to `committed`.

        Returns (entities restored, events replayed).
        """
        started = time.monotonic()
        records, marker = self._read_changelog(partition)
        restored = engine.import_state([(k, partition, v) for k, v in records.items()])
        start = marker if marker is not None else 0
        replayed = self._replay(engine, partition, start, committed) if committed > start else 0
        log.info(
            "restored partition state",
            extra={
                "partition": partition,
                "entities": restored,
                "replayed_events": replayed,
                "from_offset": start,
                "to_offset": committed,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return restored, replayed

    def _read_changelog(self, partition: int) -> tuple[dict[str, bytes], int | None]:
        consumer = self._consumer_factory()
        try:
            tp = TopicPartition(self.changelog_topic, partition)
            low, high = consumer.get_watermark_offsets(tp, timeout=30.0)
            records: dict[str, bytes] = {}
            marker: int | None = None
            if high <= low:
                return records, marker
            consumer.assign([TopicPartition(self.changelog_topic, partition, OFFSET_BEGINNING)])
            position = low
            while position < high:
                for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise ChangelogError(f"reading changelog: {err.str()}")
                    position = coordinates(msg)[1] + 1
                    key, value = msg.key(), msg.value()
                    if key == MARKER_KEY:
                        marker = int(value) if value else None
                    elif key is not None and value is not None:
                        records[key.decode()] = value
            return records, marker
        finally:
            consumer.close()

    def _replay(self, engine: FeatureEngine, partition: int, start: int, end: int) -> int:
        """Re-apply events [start, end) to the state; outputs are not produced again."""
        consumer = self._consumer_factory()
        replayed = 0
        try:
            tp = TopicPartition(self.events_topic, partition)
            _low, high = consumer.get_watermark_offsets(tp, timeout=30.0)
            end = min(end, high)
            consumer.assign([TopicPartition(self.events_topic, partition, start)])
            position = start
            idle = 0
            while position < end and idle < 10:
                msgs = consumer.consume(num_messages=10_000, timeout=1.0)
                idle = 0 if msgs else idle + 1
                batch = []
                offsets = []
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    offset = coordinates(msg)[1]
                    if offset >= end:
                        continue
                    batch.append(msg.value() or b"")
                    offsets.append(offset)
                    position = offset + 1
                if not batch:
                    continue
                events, positions, _rejected = parse_batch(batch)
                cols = columns_from_events(
                    events, [partition] * len(events), [offsets[i] for i in positions]
                )
                engine.process(cols)
                replayed += len(events)
            return replayed
        finally:
            consumer.close()
