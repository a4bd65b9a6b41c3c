"""Creating the pipeline's topics with their retention and compaction settings.

Idempotent on purpose: `anomaly topics create` runs at every start of the local platform
and in Helm hooks, so an existing topic is reported, not treated as an error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from services.common.config.model import TopicsConfig, TopicSpec


class TopicAdminError(RuntimeError):
    """The broker refused or did not answer a topic operation."""


@dataclass(frozen=True, slots=True)
class TopicOutcome:
    """What `ensure_topics` did for one topic."""

    name: str
    status: Literal["created", "exists", "exists-fewer-partitions"]
    partitions: int
    detail: str = ""


def pipeline_topics(topics: TopicsConfig) -> list[TopicSpec]:
    """The topics of the pipeline, in data-flow order, then the generator's ground truth."""
    return [
        topics.events,
        topics.features,
        topics.scores,
        topics.alerts,
        topics.dlq,
        topics.labels,
        topics.changelog,
    ]


def _new_topic(spec: TopicSpec, replication: int, partitions: int | None) -> NewTopic:
    config = {"retention.ms": str(spec.retention_ms), "cleanup.policy": spec.cleanup_policy}
    config.update(spec.extra)
    return NewTopic(
        spec.name,
        num_partitions=partitions or spec.partitions,
        replication_factor=replication,
        config=config,
    )


def existing_partitions(admin: AdminClient, timeout_s: float = 10.0) -> dict[str, int]:
    """Partition count of every topic on the broker."""
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise TopicAdminError(f"cannot list topics: {exc.args[0]}") from None
    return {name: len(t.partitions) for name, t in metadata.topics.items()}


def ensure_topics(
    admin: AdminClient,
    specs: list[TopicSpec],
    *,
    replication_factor: int = 1,
    partitions: int | None = None,
    timeout_s: float = 30.0,
) -> list[TopicOutcome]:
    """Create missing topics; report existing ones (and a partition shortfall) without failing.

    `partitions` overrides every spec's count (handy for tests and small local runs).
    """
    have = existing_partitions(admin, timeout_s)
    outcomes: dict[str, TopicOutcome] = {}
    to_create = []
    for spec in specs:
        wanted = partitions or spec.partitions
        if spec.name in have:
            got = have[spec.name]
            if got < wanted:
                outcomes[spec.name] = TopicOutcome(
                    spec.name,
                    "exists-fewer-partitions",
                    got,
                    f"has {got} partitions, configuration asks for {wanted}",
                )
            else:
                outcomes[spec.name] = TopicOutcome(spec.name, "exists", got)
        else:
            to_create.append(_new_topic(spec, replication_factor, partitions))
    if to_create:
        futures = admin.create_topics(
            to_create, operation_timeout=timeout_s, request_timeout=timeout_s
        )
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == err.TOPIC_ALREADY_EXISTS:
                    outcomes[name] = TopicOutcome(name, "exists", have.get(name, 0))
                    continue
                raise TopicAdminError(f"cannot create topic {name}: {err.str()}") from None
            created = next(t for t in to_create if t.topic == name)
            outcomes[name] = TopicOutcome(name, "created", created.num_partitions)
        _wait_visible(admin, [t.topic for t in to_create], timeout_s)
    return [outcomes[s.name] for s in specs]


def _wait_visible(admin: AdminClient, names: list[str], timeout_s: float) -> None:
    """Block until new topics appear in metadata with leaders for every partition.

    The create call returns when the controller accepted it; a client that asks for metadata
    a moment later can still be told the topic does not exist. Callers of `ensure_topics`
    (a generator about to produce, a test) should not have to know that.
    """
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending and time.monotonic() < deadline:
        topics = admin.list_topics(timeout=max(deadline - time.monotonic(), 0.1)).topics
        pending = {
            n
            for n in pending
            if n not in topics
            or topics[n].error is not None
            or any(p.leader < 0 for p in topics[n].partitions.values())
        }
        if pending:
            time.sleep(0.05)
    if pending:
        raise TopicAdminError(
            f"topics {sorted(pending)} created but not visible after {timeout_s} s"
        )
