"""Building confluent-kafka clients from the typed configuration.

All services get their librdkafka settings here so that security, client ids and the
throughput tuning are set once, and so that at-least-once consumers are built the same way
everywhere (manual commits, no auto offset store).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from services.common.config.model import KafkaConfig


def common_config(cfg: KafkaConfig, role: str) -> dict[str, Any]:
    """Settings every client shares: bootstrap, identity, security, and the escape hatch."""
    conf: dict[str, Any] = {
        "bootstrap.servers": cfg.bootstrap_servers,
        "client.id": f"{cfg.client_id}-{role}",
        "security.protocol": cfg.security_protocol,
    }
    if cfg.sasl_mechanism:
        conf["sasl.mechanism"] = cfg.sasl_mechanism
        conf["sasl.username"] = cfg.sasl_username
        conf["sasl.password"] = cfg.sasl_password.get_secret_value() if cfg.sasl_password else ""
    conf.update(cfg.extra)
    return conf


def producer_config(cfg: KafkaConfig, role: str, **overrides: Any) -> dict[str, Any]:
    """A throughput-tuned, idempotent producer configuration."""
    tuning = cfg.producer
    conf = common_config(cfg, role)
    conf.update(
        {
            "linger.ms": tuning.linger_ms,
            "batch.size": tuning.batch_size,
            "compression.type": tuning.compression_type,
            "acks": tuning.acks,
            "enable.idempotence": tuning.enable_idempotence and tuning.acks == "all",
            "queue.buffering.max.messages": tuning.queue_buffering_max_messages,
            "queue.buffering.max.kbytes": 1_048_576,
            # Java clients' partitioner: a key lands on the same partition whichever client
            # wrote it, so an entity's events, features and state share one partition number.
            "partitioner": "murmur2_random",
        }
    )
    conf.update(overrides)
    return conf


def consumer_config(cfg: KafkaConfig, role: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    """An at-least-once consumer: offsets are committed explicitly, after outputs are durable."""
    conf = common_config(cfg, role)
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.min.bytes": 1,
            "fetch.wait.max.ms": 50,
            "queued.max.messages.kbytes": 262_144,
        }
    )
    conf.update(overrides)
    return conf


def make_producer(cfg: KafkaConfig, role: str, **overrides: Any) -> Producer:
    """A producer built from `producer_config`."""
    return Producer(producer_config(cfg, role, **overrides))


def make_consumer(cfg: KafkaConfig, role: str, group_id: str, **overrides: Any) -> Consumer:
    """A consumer built from `consumer_config`."""
    return Consumer(consumer_config(cfg, role, group_id, **overrides))


def make_admin(cfg: KafkaConfig) -> AdminClient:
    """An admin client for topic management and health checks."""
    return AdminClient(common_config(cfg, "admin"))


def coordinates(msg: Message) -> tuple[int, int]:
    """(partition, offset) of a consumed message; both are always set when it has no error."""
    partition, offset = msg.partition(), msg.offset()
    if partition is None or offset is None:
        raise ValueError("message has no partition/offset (not a consumed message?)")
    return partition, offset


@dataclass(slots=True)
class ConsumedBatch:
    """The usable messages of one `consume()` call, column-wise, and the offsets to commit."""

    values: list[bytes] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    commit_to: dict[int, int] = field(default_factory=dict)
    """partition -> next offset: what committing this batch means."""


def split_consumed(msgs: list[Message], log: logging.Logger) -> ConsumedBatch:
    """Separate records from the error events librdkafka delivers in the same list.

    A fatal error (the client cannot continue) raises, so the service stops before committing;
    partition-EOF notices are ignored; other errors are transient and logged.
    """
    batch = ConsumedBatch()
    for msg in msgs:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error", extra={"error": err.str()})
            continue
        partition, offset = coordinates(msg)
        batch.values.append(msg.value() or b"")
        batch.keys.append(msg.key())
        batch.partitions.append(partition)
        batch.offsets.append(offset)
        batch.commit_to[partition] = offset + 1
    return batch
