"""The ingest service against a real broker: outputs, dead letters, commits, state restore."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.common.config import PlatformConfig
from services.common.config.model import IngestConfig
from services.common.features.columns import columns_from_events
from services.common.features.definition import FEATURE_NAMES
from services.common.features.engine import FeatureEngine
from services.common.features.messages import decode_feature_messages
from services.common.kafka.dead_letters import HEADER_PREFIX, MAX_VALUE_BYTES
from services.ingest.metrics import IngestMetrics
from services.ingest.service import DeliveryError, IngestService
from tests.integration.kafka_io import (
    committed_offsets,
    create_topics,
    end_offsets,
    produce,
    read_all,
    read_until,
)

pytestmark = pytest.mark.integration

T0 = 1_767_571_200_000
PER_EVENT = [i for i, name in enumerate(FEATURE_NAMES) if name != "global_rate_1m"]


def make_events(n: int, entities: int = 12, start: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(11)
    out = []
    for i in range(start, start + n):
        out.append(
            {
                "event_id": f"ev-{i}",
                "entity_id": f"acct-{i % entities}",
                "ts": T0 + i * 700,
                "kind": "payment",
                "amount": round(float(rng.lognormal(3, 0.5)), 2),
                "counterparty": f"cp-{rng.integers(0, 6)}",
                "country": "DE",
            }
        )
    return out


def encoded(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    return [(e["entity_id"].encode(), orjson.dumps(e)) for e in events]


@pytest.fixture
def config(platform_config: Callable[[], PlatformConfig]) -> PlatformConfig:
    cfg = platform_config()
    cfg = cfg.model_copy(
        update={
            "ingest": IngestConfig(
                group_id=f"{cfg.kafka.topics.events.name}-ingest",
                batch_timeout_ms=50,
                checkpoint_interval_s=0.5,
                ops_port=0,
            )
        }
    )
    create_topics(cfg)
    return cfg


class Running:
    """An IngestService on a thread; stopped (cleanly) by the context manager's exit."""

    def __init__(self, config: PlatformConfig) -> None:
        self.service = IngestService(config, metrics=IngestMetrics(CollectorRegistry()))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> IngestService:
        self.thread.start()
        return self.service

    def __exit__(self, *exc: object) -> None:
        self.service.stop()
        self.thread.join(60)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


@pytest.fixture
def running() -> Callable[[PlatformConfig], Running]:
    return Running


def offline_features(events: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The same events through the same engine, in one process: the reference result."""
    matrix = FeatureEngine().process(columns_from_events(events)).matrix
    return {e["event_id"]: matrix[i] for i, e in enumerate(events)}


def test_every_event_gets_features_bad_ones_go_to_dlq_offsets_committed(
    config: PlatformConfig, running: Callable[[PlatformConfig], Running]
) -> None:
    topics = config.kafka.topics
    good = make_events(600)
    bad = [
        (b"acct-1", b"{not json"),
        (b"acct-2", orjson.dumps({**good[0], "event_id": "bad-1", "amount": "12"})),
        (b"acct-3", orjson.dumps({**good[0], "event_id": "bad-2", "ts": 1_700_000_000})),
        (None, b""),
        # Valid by the contract (before 2100), but stamped 2096 by a broken producer clock:
        # taken in, it would make every later event of acct-0 late (windows frozen).
        (b"acct-0", orjson.dumps({**good[0], "event_id": "bad-3", "ts": 4_000_000_000_000})),
        (b"acct-5", orjson.dumps({**good[0], "event_id": "bad-4", "utm_campaign_8f3e": "x"})),
    ]
    records = encoded(good[:300]) + bad + encoded(good[300:])
    produce(config, topics.events.name, records)

    with running(config) as service:
        features = read_all(config, topics.features.name, expected=len(good))
        dead = read_all(config, topics.dlq.name, expected=len(bad))
    assert service.metrics.events._value.get() == len(good)

    decoded = decode_feature_messages(
        [r.value for r in features], [(r.key or b"").decode() for r in features]
    )
    assert sorted(decoded.event_ids) == sorted(e["event_id"] for e in good)
    # Keys are entity ids, and each feature message sits on its entity's partition.
    by_id = {e["event_id"]: e for e in good}
    assert all(
        by_id[eid]["entity_id"] == ent
        for eid, ent in zip(decoded.event_ids, decoded.entity_ids, strict=True)
    )

    reference = offline_features(good)
    for eid, row in zip(decoded.event_ids, decoded.matrix, strict=True):
        np.testing.assert_allclose(row[PER_EVENT], reference[eid][PER_EVENT], rtol=1e-6)

    assert sorted(r.value for r in dead) == sorted(v for _, v in bad)
    reasons = {r.value: r.headers[HEADER_PREFIX + "reason"].decode() for r in dead}
    assert "not valid JSON" in reasons[b"{not json"]
    assert "must be a number, got string" in reasons[bad[1][1]]
    assert "was it sent in seconds?" in reasons[bad[2][1]]
    assert reasons[b""] == "empty payload"
    assert "ms ahead of the ingest clock (at most 600000 allowed" in reasons[bad[4][1]]
    assert "unknown field 'utm_campaign_8f3e'" in reasons[bad[5][1]]
    # Series by contract field; a producer's own field names do not become label values.
    by_field = {
        s.labels["field"]: s.value
        for metric in service.metrics.dead_letters.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }
    assert by_field == {"payload": 2, "amount": 1, "ts": 2, "unknown_field": 1}
    for r in dead:
        assert r.headers[HEADER_PREFIX + "source.topic"].decode() == topics.events.name
        assert int(r.headers[HEADER_PREFIX + "source.offset"]) >= 0

    assert committed_offsets(config, config.ingest.group_id, topics.events.name) == end_offsets(
        config, topics.events.name
    )


def test_a_record_too_large_for_a_dead_letter_is_cut_and_the_service_goes_on(
    config: PlatformConfig, running: Callable[[PlatformConfig], Running]
) -> None:
    """~1 MB of junk (key and value): accepted by the broker, but with the dead-letter
    headers over the producer's 1,000,000-byte limit. It used to stop the service before its
    commit, so the service met it again on every restart."""
    topics = config.kafka.topics
    good = make_events(50)
    junk_key, junk = b"k" * 300_000, b"x" * 699_800
    produce(config, topics.events.name, [(junk_key, junk), *encoded(good)])
    with running(config) as service:
        read_all(config, topics.features.name, expected=len(good))
        [dead] = read_all(config, topics.dlq.name, expected=1)
    assert service.metrics.events._value.get() == len(good)
    assert dead.value == junk[:MAX_VALUE_BYTES]
    assert dead.key == junk_key[:MAX_VALUE_BYTES]
    assert dead.headers[HEADER_PREFIX + "value.truncated.from"] == b"699800"
    assert dead.headers[HEADER_PREFIX + "key.truncated.from"] == b"300000"
    assert "exceeds the 4096-byte limit" in dead.headers[HEADER_PREFIX + "reason"].decode()
    assert committed_offsets(config, config.ingest.group_id, topics.events.name) == end_offsets(
        config, topics.events.name
    )


def test_restarted_service_restores_window_state_from_the_changelog(
    config: PlatformConfig, running: Callable[[PlatformConfig], Running]
) -> None:
    topics = config.kafka.topics
    events = make_events(800)
    first, second = events[:500], events[500:]
    produce(config, topics.events.name, encoded(first))
    with running(config) as service:
        read_all(config, topics.features.name, expected=len(first))
        assert len(service.engine) == 12
    changelog = read_all(config, topics.changelog.name, expected=12)
    assert {r.key for r in changelog} >= {f"acct-{i}".encode() for i in range(12)}

    produce(config, topics.events.name, encoded(second))
    with running(config) as restarted:
        deadline = time.monotonic() + 30
        while not restarted.ready()[0]:
            assert time.monotonic() < deadline, restarted.ready()
            time.sleep(0.005)
        # Ready means assigned and restored, not merely polling (a rollout trusts it).
        assert len(restarted.engine) == 12
        assert restarted.ready()[1] != "ready; partitions=[]"
        features = read_all(config, topics.features.name, expected=len(events))
    assert restarted.metrics.events._value.get() == len(second)  # nothing re-processed

    decoded = decode_feature_messages([r.value for r in features])
    assert len(set(decoded.event_ids)) == len(events)
    reference = offline_features(events)
    second_ids = {e["event_id"] for e in second}
    checked = 0
    for eid, row in zip(decoded.event_ids, decoded.matrix, strict=True):
        if eid in second_ids:
            # 1 h window counts, baselines and novelty all continue from before the restart.
            np.testing.assert_allclose(row[PER_EVENT], reference[eid][PER_EVENT], rtol=1e-6)
            checked += 1
    assert checked == len(second)


def test_state_of_an_older_layout_is_one_warning_per_restore(
    config: PlatformConfig,
    running: Callable[[PlatformConfig], Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Entities not seen since an upgrade keep their old-layout record in the compacted
    changelog, spread over many partitions; a restore counts them and says so once (it
    said so once per partition, 32 lines on every start of the main job)."""
    topics = config.kafka.topics
    produce(config, topics.events.name, encoded(make_events(100)))
    with running(config) as service:
        read_all(config, topics.features.name, expected=100)
        assert len(service.engine) == 12
    stale = [(f"acct-old-{i}".encode(), b"FE1:" + bytes(64)) for i in range(40)]
    produce(config, topics.changelog.name, stale)
    partitions = {r.partition for r in read_all(config, topics.changelog.name, 12 + 40)}
    assert len(partitions) > 2
    caplog.set_level(logging.WARNING)
    with running(config) as restarted:
        deadline = time.monotonic() + 30
        while not restarted.ready()[0]:
            assert time.monotonic() < deadline, restarted.ready()
            time.sleep(0.005)
        assert len(restarted.engine) == 12  # the current ones restored, the old ones not
        assert restarted.engine.stale_states == 40
    warnings = [r.getMessage() for r in caplog.records if "older engine layout" in r.getMessage()]
    assert warnings == [
        "40 entities' window state was written by an older engine layout: they start from "
        "empty state"
    ]


def test_entities_idle_past_the_ttl_leave_the_changelog_and_stay_gone_after_a_restart(
    config: PlatformConfig, running: Callable[[PlatformConfig], Running]
) -> None:
    """Twelve entities, then two hours of event time without them (one event of another):
    the next checkpoint frees them and writes a tombstone each, after their records, so a
    restart, reading a changelog that compaction has not cleaned yet, does not bring them
    back (before the TTL a restart restored every entity ever seen, for good)."""
    config = config.model_copy(
        update={"ingest": config.ingest.model_copy(update={"idle_state_ttl_s": 3_600.0})}
    )
    topics = config.kafka.topics
    events = make_events(120)
    later = dict(make_events(1)[0], event_id="ev-late", entity_id="acct-new", ts=T0 + 7_200_000)
    produce(config, topics.events.name, encoded([*events, later]))
    with running(config) as service:
        read_all(config, topics.features.name, expected=len(events) + 1)
        deadline = time.monotonic() + 30
        while service.metrics.expired_entities._value.get() < 12:
            assert time.monotonic() < deadline, service.metrics.expired_entities._value.get()
            time.sleep(0.05)
        assert len(service.engine) == 1 and service.engine.slot("acct-new") is not None
        assert service.metrics.entities._value.get() == 1
    changelog = read_all(config, topics.changelog.name, expected=12 + 1 + 12)
    latest = {r.key: r.value for r in changelog}  # in partition order, as compaction keeps it
    assert {k for k, v in latest.items() if v == b""} == {f"acct-{i}".encode() for i in range(12)}
    # No periodic checkpoint (which would expire them again) before the restore is looked at.
    slow = config.ingest.model_copy(update={"checkpoint_interval_s": 600.0})
    with running(config.model_copy(update={"ingest": slow})) as restarted:
        deadline = time.monotonic() + 30
        while not restarted.ready()[0]:
            assert time.monotonic() < deadline, restarted.ready()
            time.sleep(0.005)
        assert len(restarted.engine) == 1 and restarted.engine.slot("acct-new") is not None


def test_state_rebuilt_by_a_replay_is_written_to_the_changelog(
    config: PlatformConfig, running: Callable[[PlatformConfig], Running]
) -> None:
    """An owner that died after committing but before checkpointing leaves the next one a
    replay (changelog marker < committed offset). The entities the replay rebuilt must reach
    the next checkpoint: it used to move the marker past the replay without their state, so
    a later restore lost those events for good. A changelog topic that is still empty (as
    if no checkpoint ever ran) makes the second run replay everything committed."""
    topics = config.kafka.topics
    events = make_events(500)
    produce(config, topics.events.name, encoded(events))
    with running(config) as service:
        read_all(config, topics.features.name, expected=len(events))
        assert len(service.engine) == 12
    fresh = topics.model_copy(
        update={
            "changelog": topics.changelog.model_copy(update={"name": f"{topics.changelog.name}.b"})
        }
    )
    replaying = config.model_copy(
        update={"kafka": config.kafka.model_copy(update={"topics": fresh})}
    )
    create_topics(replaying)
    with running(replaying) as second:
        deadline = time.monotonic() + 30
        while not second.metrics.replayed_events._value.get():
            assert time.monotonic() < deadline, "no replay"
            time.sleep(0.05)
    assert second.metrics.replayed_events._value.get() == len(events)
    assert second.metrics.events._value.get() == 0  # nothing new: only the replay
    wanted = {f"acct-{i}".encode() for i in range(12)}
    records = read_until(
        replaying, fresh.changelog.name, lambda rs: {r.key for r in rs} >= wanted, 20.0
    )
    assert {r.key for r in records} >= wanted


def test_outputs_the_broker_refuses_stop_the_service_before_any_commit(
    config: PlatformConfig, running: Callable[[PlatformConfig], Running]
) -> None:
    """Successful deliveries are not reported one by one; a failed one still stops the loop."""
    topics = config.kafka.topics
    produce(config, topics.events.name, encoded(make_events(50)))
    missing = topics.features.model_copy(update={"name": f"{topics.features.name}.missing"})
    broken = config.model_copy(
        update={
            "kafka": config.kafka.model_copy(
                update={
                    # Messages for a topic that does not exist fail once they time out.
                    "extra": {"message.timeout.ms": 2_000},
                    "topics": topics.model_copy(update={"features": missing}),
                }
            )
        }
    )
    refused = pytest.raises(DeliveryError, match="not committing")
    with refused, running(broken) as service:
        deadline = time.monotonic() + 60
        while service.live()[0] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not service.live()[0]
    assert all(
        o < 0
        for o in committed_offsets(config, config.ingest.group_id, topics.events.name).values()
    )


def test_a_checkpoint_after_partitions_were_lost_mid_batch_commits_only_what_is_still_owned(
    config: PlatformConfig,
) -> None:
    """`on_lost` (session timed out) takes away a partition whose batch is processed but not
    yet committed. That batch's commit then covers nothing, and the next periodic checkpoint
    used to hand librdkafka an empty synchronous commit, which raises _NO_OFFSET and stopped
    the service. Now it commits nothing for the lost partition (its new owner re-reads it)
    and goes on with the partitions it still owns."""
    from confluent_kafka import Producer, TopicPartition

    topics = config.kafka.topics
    # A long linger keeps the batch's feature messages unacknowledged through process(), so
    # its offsets are still waiting for their commit when the partition is lost.
    slow_acks = config.kafka.producer.model_copy(update={"linger_ms": 1_500})
    cfg = config.model_copy(
        update={"kafka": config.kafka.model_copy(update={"producer": slow_acks})}
    )
    events = make_events(40)
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    for e in events[:20]:
        producer.produce(topics.events.name, orjson.dumps(e), e["entity_id"].encode(), partition=0)
    assert producer.flush(30) == 0

    service = IngestService(cfg, metrics=IngestMetrics(CollectorRegistry()))
    consumer = service._consumer
    consumer.subscribe(
        [topics.events.name],
        on_assign=service._on_assign,
        on_revoke=service._on_revoke,
        on_lost=service._on_lost,
    )
    try:
        msgs: list[Any] = []
        deadline = time.monotonic() + 60
        while len(msgs) < 20 and time.monotonic() < deadline:
            msgs += consumer.consume(num_messages=20 - len(msgs), timeout=1.0)
        assert len(msgs) == 20 and {m.partition() for m in msgs} == {0}
        assert service._assigned == {0, 1, 2, 3}
        assert service.process(msgs) == 20
        assert service._uncommitted, "precondition: the batch waits for its acknowledgements"

        service._on_lost(consumer, [TopicPartition(topics.events.name, 0)])
        service.checkpoint()  # what run() does every checkpoint_interval_s

        assert committed_offsets(cfg, cfg.ingest.group_id, topics.events.name).get(0, 0) <= 0, (
            "the lost partition's offsets are its new owner's to commit"
        )
        for e in events[20:]:
            producer.produce(
                topics.events.name, orjson.dumps(e), e["entity_id"].encode(), partition=1
            )
        assert producer.flush(30) == 0
        msgs = []
        deadline = time.monotonic() + 60
        while len(msgs) < 20 and time.monotonic() < deadline:
            msgs += consumer.consume(num_messages=20 - len(msgs), timeout=1.0)
        assert service.process(msgs) == 20
        service.checkpoint()
        assert committed_offsets(cfg, cfg.ingest.group_id, topics.events.name).get(1) == 20
    finally:
        service._shutdown()
