"""Small helpers for tests that write to and read from the real broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from services.common.config import PlatformConfig
from services.common.kafka.clients import make_admin, make_producer
from services.common.kafka.topics import ensure_topics, pipeline_topics


@dataclass(frozen=True)
class Record:
    """A consumed record, detached from librdkafka."""

    key: bytes | None
    value: bytes
    partition: int
    offset: int
    headers: dict[str, bytes]


def _headers(msg: Message) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    headers: Any = msg.headers() or []  # the stubs allow a dict too; consumers get pairs
    for key, value in headers:
        out[str(key)] = value if isinstance(value, bytes) else str(value or "").encode()
    return out


def create_topics(cfg: PlatformConfig, timeout_s: float = 30.0) -> None:
    """Create the pipeline's topics and wait until every partition has a leader.

    A created topic is not yet writable: until the controller has elected its partitions'
    leaders, a producer's first records wait for metadata. On loaded CI cores that took
    longer than a four-second Locust run, which then reported nothing.
    """
    admin = make_admin(cfg.kafka)
    specs = pipeline_topics(cfg.kafka.topics)
    ensure_topics(admin, specs)
    names = [spec.name for spec in specs]
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=5).topics
        pending = [
            n
            for n in names
            if n not in topics
            or topics[n].error is not None
            or not topics[n].partitions
            or any(p.leader < 0 for p in topics[n].partitions.values())
        ]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"topics without a leader after {timeout_s:g} s: {pending}")
        time.sleep(0.1)


def produce(cfg: PlatformConfig, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
    """Produce (key, value) pairs and wait until every one is acknowledged."""
    producer = make_producer(cfg.kafka, "test")
    failures: list[str] = []
    for key, value in records:
        producer.produce(
            topic,
            key=key,
            value=value,
            on_delivery=lambda err, _m: failures.append(str(err)) if err else None,
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not failures, failures


def read_all(
    cfg: PlatformConfig, topic: str, expected: int, timeout_s: float = 60.0
) -> list[Record]:
    """Read a topic from the beginning until `expected` records arrived (or time runs out)."""
    return read_until(cfg, topic, lambda records: len(records) >= expected, timeout_s)


def read_until(
    cfg: PlatformConfig,
    topic: str,
    done: Callable[[list[Record]], bool],
    timeout_s: float = 60.0,
) -> list[Record]:
    """Read a topic from the beginning until `done(records)` holds (or time runs out)."""
    consumer = Consumer(
        {
            "bootstrap.servers": cfg.kafka.bootstrap_servers,
            "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        out: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while not done(out) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=0.5):
                if msg.error() is not None:
                    continue
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                out.append(
                    Record(
                        msg.key(),
                        msg.value() or b"",
                        partition,
                        offset,
                        _headers(msg),
                    )
                )
        return out
    finally:
        consumer.close()


def committed_offsets(cfg: PlatformConfig, group: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": group})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        tps = consumer.committed([TopicPartition(topic, p) for p in meta.partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def end_offsets(cfg: PlatformConfig, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": "x"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        }
    finally:
        consumer.close()
