"""Ingest into the real Feast online store (SQLite and Redis): latest rows readable by Feast."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from local_process import free_port
from local_redis import LocalRedis
from prometheus_client import CollectorRegistry

from services.common.config import PlatformConfig
from services.common.config.model import FeastConfig, IngestConfig, RedisOnlineStore
from services.common.feast_store import OnlineFeatureReader, open_store
from services.ingest.changelog import MARKER_KEY
from services.ingest.metrics import IngestMetrics
from services.ingest.runner import build_online_sink
from services.ingest.service import IngestService
from tests.integration.kafka_io import (
    committed_offsets,
    create_topics,
    end_offsets,
    produce,
    read_all,
)
from tests.integration.test_ingest import PER_EVENT, Running, encoded, make_events, offline_features

pytestmark = pytest.mark.integration


def store_config(
    cfg: PlatformConfig, tmp_path: Path, online: dict[str, object], **ingest: float
) -> PlatformConfig:
    """`cfg` writing a private Feast project on `online`, with small ingest batches."""
    project = f"t{uuid.uuid4().hex[:10]}"
    feast = FeastConfig.model_validate(
        {
            "repo_path": str(Path(__file__).resolve().parents[2] / "feature_repo"),
            "project": project,
            "registry_path": str(tmp_path / "registry.db"),
            "online_store": online,
        }
    )
    settings = IngestConfig(
        group_id=f"{project}-ingest",
        batch_max_events=200,
        batch_timeout_ms=50,
        online_write_interval_s=0.2,
        ops_port=0,
        **ingest,
    )
    out = cfg.model_copy(update={"feast": feast, "ingest": settings})
    create_topics(out)
    return out


def redis_store(port: int) -> dict[str, object]:
    return RedisOnlineStore(type="redis", connection_string=f"127.0.0.1:{port}").model_dump()


@pytest.fixture(params=["sqlite", "redis"])
def config(
    request: pytest.FixtureRequest,
    platform_config: Callable[[], PlatformConfig],
    tmp_path: Path,
) -> PlatformConfig:
    if request.param == "redis":
        server: LocalRedis = request.getfixturevalue("redis_server")
        online = redis_store(server.port)
    else:
        online = {"type": "sqlite", "path": str(tmp_path / "online.db")}
    return store_config(platform_config(), tmp_path, online)


class RunningWithStore(Running):
    def __init__(self, config: PlatformConfig) -> None:
        self.service = IngestService(
            config,
            online_sink=build_online_sink(config),
            metrics=IngestMetrics(CollectorRegistry()),
        )
        self.error = None
        import threading

        self.thread = threading.Thread(target=self._run, daemon=True)


def test_latest_row_of_every_entity_lands_in_the_online_store(config: PlatformConfig) -> None:
    events = make_events(3_000, entities=30)
    produce(config, config.kafka.topics.events.name, encoded(events))
    with RunningWithStore(config) as service:
        read_all(config, config.kafka.topics.features.name, expected=len(events))
    # Stopping wrote the last rows and committed everything.
    assert committed_offsets(config, config.ingest.group_id, config.kafka.topics.events.name) == (
        end_offsets(config, config.kafka.topics.events.name)
    )
    rows_written = service.metrics.online_rows._value.get()
    assert 30 <= rows_written < len(events), "rows are merged per entity between writes"

    reference = offline_features(events)
    last_event = {e["entity_id"]: e["event_id"] for e in events}
    reader = OnlineFeatureReader(open_store(config.feast), config.feast)
    entities = sorted(last_event)
    stored = reader.read(entities)
    for entity, row in zip(entities, stored, strict=True):
        expected = reference[last_event[entity]]
        np.testing.assert_allclose(row[PER_EVENT], expected[PER_EVENT], rtol=1e-6)
    assert np.isnan(reader.read(["never-seen"])).all()


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 40.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_redis_restart_is_waited_out_and_nothing_is_committed_past_it(
    platform_config: Callable[[], PlatformConfig], tmp_path: Path
) -> None:
    """Redis went away for a few seconds (a failover, a pod restart): the service used to stop
    at the first refused write; it now keeps the rows, commits nothing past them, and
    writes them when Redis is back."""
    server = LocalRedis(port=free_port(), home=tmp_path / "redis", wipe_on_exit=True)
    cfg = store_config(
        platform_config(),
        tmp_path,
        redis_store(server.port),
        checkpoint_interval_s=0.5,
        # Longer than the outage takes on a loaded CI machine (the default 30 s was not).
        online_write_retry_s=300,
    )
    ingest = cfg.ingest
    topics = cfg.kafka.topics
    events = make_events(3_000, entities=30)
    first, second = events[:1_500], events[1_500:]

    def committed() -> dict[int, int]:
        return committed_offsets(cfg, ingest.group_id, topics.events.name)

    with server:
        produce(cfg, topics.events.name, encoded(first))
        with RunningWithStore(cfg) as service:
            read_all(cfg, topics.features.name, expected=len(first))
            _wait(lambda: committed() == end_offsets(cfg, topics.events.name), "first commit")
            server.stop()
            produce(cfg, topics.events.name, encoded(second[:750]))
            _wait(lambda: service.metrics.online_write_retries._value.get() >= 2, "retries")
            time.sleep(2 * ingest.checkpoint_interval_s)  # a checkpoint is due meanwhile
            produce(cfg, topics.events.name, encoded(second[750:]))
            # The Kafka side goes on: checkpoints (which wait for the store) are put off.
            read_all(cfg, topics.features.name, expected=len(events), timeout_s=60)
            assert service.live()[0], service.live()
            assert sum(committed().values()) == len(first), "committed past unwritten rows"
            server.start()
            _wait(lambda: committed() == end_offsets(cfg, topics.events.name), "last commit")
        reference = offline_features(events)
        last_event = {e["entity_id"]: e["event_id"] for e in events}
        entities = sorted(last_event)
        stored = OnlineFeatureReader(open_store(cfg.feast), cfg.feast).read(entities)
    for entity, row in zip(entities, stored, strict=True):
        expected = reference[last_event[entity]]
        np.testing.assert_allclose(row[PER_EVENT], expected[PER_EVENT], rtol=1e-6)


def test_a_checkpoint_does_not_stall_the_stream_behind_a_slow_online_store(
    platform_config: Callable[[], PlatformConfig], tmp_path: Path
) -> None:
    """A write that takes seconds (here: another connection holds SQLite's write lock) used
    to stop the whole loop at the next checkpoint, which waited for the store before writing
    the changelog (1-4 s every interval in the main job). Now the checkpoint's snapshot
    waits, not the stream; nothing is committed past the unwritten rows, and the snapshot is
    written once they are."""
    db = tmp_path / "online.db"
    cfg = store_config(
        platform_config(),
        tmp_path,
        {"type": "sqlite", "path": str(db)},
        checkpoint_interval_s=0.3,
    )
    topics, group = cfg.kafka.topics, cfg.ingest.group_id
    events = make_events(600, entities=30)
    first, second, third = events[:200], events[200:400], events[400:]

    def committed() -> int:
        return sum(committed_offsets(cfg, group, topics.events.name).values())

    with RunningWithStore(cfg) as service:
        produce(cfg, topics.events.name, encoded(first))
        read_all(cfg, topics.features.name, expected=len(first))
        _wait(lambda: committed() == len(first), "first commit")
        lock = sqlite3.connect(db, timeout=30)
        lock.execute("BEGIN EXCLUSIVE")  # the online write of `second` waits for this
        try:
            produce(cfg, topics.events.name, encoded(second))
            read_all(cfg, topics.features.name, expected=len(first) + len(second))
            time.sleep(4 * cfg.ingest.checkpoint_interval_s)  # checkpoints fall due meanwhile
            sent = time.monotonic()
            produce(cfg, topics.events.name, encoded(third))
            read_all(cfg, topics.features.name, expected=len(events), timeout_s=10.0)
            waited = time.monotonic() - sent
            assert committed() == len(first), "committed past rows not in the online store"
        finally:
            lock.rollback()
            lock.close()
        _wait(lambda: committed() == len(events), "commit once the rows are written")
        _wait(lambda: service.metrics.checkpoint_seconds._sum.get() > 0, "a checkpoint")
    # ~1 s here, most of it the reader's own start; the old loop waited for the locked write
    # to fail (SQLite's 5-s busy timeout), ~3.6 s.
    assert waited < 2.5, f"the stream waited {waited:.1f} s for the online store"
    markers = [r for r in read_all(cfg, topics.changelog.name, expected=1) if r.key == MARKER_KEY]
    assert markers, "no checkpoint reached the changelog"
