"""Rejected records go to the dead-letter topic with the reason, never silently dropped.

One topic (`kafka.topics.dlq`) for the pipeline: ingest sends events that fail validation,
the router `features` messages it cannot decode; the `source.topic` header tells them apart.

The original bytes are the record's value, untouched, so a fixed producer (or an operator)
can replay them; the reason and the source coordinates travel as headers, the convention
Kafka Connect uses for its DLQs, so tools that understand those need no new format. A value
over `MAX_VALUE_BYTES` is cut to that length (header `anomaly.dlq.value.truncated.from` =
its length): a record the broker just accepts plus our headers can exceed the producer's
`message.max.bytes`, and a dead letter the producer refuses stopped the service before any
commit, so it met the same record on every restart (the source coordinates still locate
the whole record while the topic retains it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from services.common.events import Rejected

HEADER_PREFIX = "anomaly.dlq."
MAX_VALUE_BYTES = 256 * 1024
"""Longest value a dead letter carries whole (events are a few hundred bytes)."""


def dead_letter_headers(
    rejected: Rejected, topic: str, partition: int, offset: int
) -> list[tuple[str, str | bytes | None]]:
    """Headers naming why and where a record was rejected."""
    headers: list[tuple[str, str | bytes | None]] = [
        (HEADER_PREFIX + "reason", rejected.reason.encode()),
        (HEADER_PREFIX + "source.topic", topic.encode()),
        (HEADER_PREFIX + "source.partition", str(partition).encode()),
        (HEADER_PREFIX + "source.offset", str(offset).encode()),
        (HEADER_PREFIX + "rejected.at", str(int(time.time() * 1000)).encode()),
    ]
    if rejected.field is not None:
        headers.append((HEADER_PREFIX + "field", rejected.field.encode()))
    return headers


def send_dead_letter(
    producer: Producer,
    dlq_topic: str,
    rejected: Rejected,
    *,
    key: bytes | None,
    source_topic: str,
    partition: int,
    offset: int,
    on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
) -> None:
    """Produce one dead letter; the batch is committed only once the broker acknowledged it.

    Without `on_delivery` the producer's own delivery callback reports a failure (the ingest
    service's producer reports failures only and counts acknowledgements by its queue).
    """
    callback: dict[str, Any] = {"on_delivery": on_delivery} if on_delivery is not None else {}
    value = rejected.raw
    headers = dead_letter_headers(rejected, source_topic, partition, offset)
    if len(value) > MAX_VALUE_BYTES:
        headers.append((HEADER_PREFIX + "value.truncated.from", str(len(value)).encode()))
        value = value[:MAX_VALUE_BYTES]
    if key is not None and len(key) > MAX_VALUE_BYTES:
        headers.append((HEADER_PREFIX + "key.truncated.from", str(len(key)).encode()))
        key = key[:MAX_VALUE_BYTES]
    while True:
        try:
            producer.produce(dlq_topic, value=value, key=key, headers=headers, **callback)
            return
        except BufferError:
            producer.poll(0.01)
