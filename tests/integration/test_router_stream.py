"""The pipelined stream door as a process (`anomaly router --no-doors`) on real parts: the
broker, the session's model server, feature vectors from the shared engine.

Every event gets its decision on `scores`, on the partition of its entity (as `features`
has it); a clean stop commits everything; and a kill -9 mid-stream, then a restart, loses
nothing, and never had an offset committed whose decisions were not on `scores` yet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
import yaml
from local_kafka import free_port

from models.dataset import features_from_events, parse_raw_events
from services.common.config import PlatformConfig, dump_config
from services.common.features.messages import HEADER_SIZE, MAGIC, encode_feature_messages
from services.common.kafka.dead_letters import HEADER_PREFIX
from services.generator import StreamSpec, generate_batch
from tests.integration.conftest import ModelServer
from tests.integration.kafka_io import (
    Record,
    committed_offsets,
    create_topics,
    end_offsets,
    produce,
    read_all,
    read_until,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 12_000


@pytest.fixture(scope="module")
def feature_records() -> list[tuple[bytes, bytes]]:
    """(key, value) of `features` messages for a generated stream, as ingest encodes them."""
    batch = generate_batch(StreamSpec(seed=21, entities=60, anomaly_rate=0.02), EVENTS)
    data = features_from_events([parse_raw_events(batch.values)])
    values = encode_feature_messages(
        list(data.event_ids), data.ts, int(time.time() * 1000), np.zeros(len(data), np.bool_),
        data.matrix,
    )  # fmt: skip
    keys = [data.entity_names[c].encode() for c in data.entity.tolist()]
    return list(zip(keys, values, strict=True))


def router_config(cfg: PlatformConfig, model_server: ModelServer, work: Path) -> Path:
    data = dump_config(cfg)
    endpoint = {"rest_url": "http://127.0.0.1:1", "grpc_target": model_server.grpc,
                "timeout_ms": 10_000}  # fmt: skip
    data["serving"]["endpoints"] = {m: endpoint for m in ("isolation_forest", "xgboost",
                                                          "transformer")}  # fmt: skip
    data["router"]["http_port"] = free_port()  # the ops server of a doorless router
    data["alerts"]["outbox_path"] = str(work / "outbox.db")
    data["ensemble"]["strategy"] = "cascade"
    path = work / "platform.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_router(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "router", "-c", str(config), "--no-doors",
         "--group-id", f"{config.parent.name}-router", *extra],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
    )  # fmt: skip


def kill_after_decisions(
    cfg: PlatformConfig, proc: subprocess.Popen[bytes], log: Path, decisions: int
) -> None:
    """SIGKILL the router once `decisions` are on `scores` (mid-stream: no clean stop)."""
    try:
        deadline = time.monotonic() + 120
        while sum(end_offsets(cfg, cfg.kafka.topics.scores.name).values()) < decisions:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def stream(
    platform_config: Callable[[], PlatformConfig],
    model_server: ModelServer,
    feature_records: list[tuple[bytes, bytes]],
    tmp_path: Path,
) -> tuple[PlatformConfig, Path]:
    cfg = platform_config()
    create_topics(cfg)
    produce(cfg, cfg.kafka.topics.features.name, feature_records)
    return cfg, router_config(cfg, model_server, tmp_path)


def event_ids(records: list[Record]) -> list[str]:
    return [orjson.loads(r.value)["event_id"] for r in records]


@pytest.mark.parametrize("depth", [1, 3])
def test_every_event_is_decided_on_its_entity_partition_and_a_clean_stop_commits_all(
    stream: tuple[PlatformConfig, Path], tmp_path: Path, depth: int
) -> None:
    cfg, config = stream
    topics = cfg.kafka.topics
    log = tmp_path / "router.log"
    proc = start_router(
        config, log, "--batch-max", "700", "--max-in-flight", "3", "--scoring-depth", str(depth)
    )
    try:
        scores = read_all(cfg, topics.scores.name, EVENTS, timeout_s=120)
        assert len(scores) == EVENTS, log.read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]

    features = read_all(cfg, topics.features.name, EVENTS)
    wanted = {r.value[HEADER_SIZE:].decode() for r in features}
    decided = event_ids(scores)
    assert set(decided) == wanted and len(decided) == len(wanted)
    partition_of = {r.key: r.partition for r in features}
    for r in scores:  # keyed by entity, partitioned like the Java clients (murmur2)
        d = orjson.loads(r.value)
        assert r.key == d["entity_id"].encode()
        assert r.partition == partition_of[r.key]
        assert d["strategy"] == "cascade" and isinstance(d["explanation"], str)
    # However many batches are scored at once, each partition's decisions come out in the
    # order of its feature vectors (batches are finished oldest first).
    for partition in {r.partition for r in features}:
        assert event_ids([r for r in scores if r.partition == partition]) == [
            r.value[HEADER_SIZE:].decode() for r in features if r.partition == partition
        ]
    group = f"{config.parent.name}-router"
    assert committed_offsets(cfg, group, topics.features.name) == end_offsets(
        cfg, topics.features.name
    ), "a clean stop commits every scored batch"


def test_unusable_features_messages_go_to_the_dead_letter_topic_and_the_rest_is_decided(
    platform_config: Callable[[], PlatformConfig],
    model_server: ModelServer,
    feature_records: list[tuple[bytes, bytes]],
    tmp_path: Path,
) -> None:
    cfg = platform_config()
    topics = cfg.kafka.topics
    create_topics(cfg)
    good = feature_records[:2_000]
    other_schema = good[0][1][:4] + b"v0000000" + good[0][1][12:]
    header = good[0][1][:HEADER_SIZE]
    bad: list[tuple[bytes | None, bytes]] = [
        (b"e-bad-1", b"not a features message"),
        (b"e-bad-2", other_schema),
        (b"e-bad-\xff", header + b"evt-key-not-utf8"),
        (b"e-bad-4", header + b"evt-\xff\xfe"),
        (None, header + b"evt-without-key"),
        (b"e-bad-6", header),
    ]
    records = [*good[:700], bad[0], *good[700:1_500], bad[1], *bad[2:], *good[1_500:]]
    produce(cfg, topics.features.name, records)
    config = router_config(cfg, model_server, tmp_path)
    log = tmp_path / "router.log"
    proc = start_router(config, log, "--batch-max", "500")
    try:
        scores = read_all(cfg, topics.scores.name, len(good), timeout_s=120)
        dead = read_all(cfg, topics.dlq.name, len(bad), timeout_s=60)
        assert proc.poll() is None, "the router keeps running past unusable messages"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]

    assert sorted(event_ids(scores)) == sorted(v[HEADER_SIZE:].decode() for _, v in good)
    assert sorted((r.value, r.key or b"") for r in dead) == sorted((v, k or b"") for k, v in bad)
    reasons = {r.value: r.headers[HEADER_PREFIX + "reason"].decode() for r in dead}
    assert reasons[bad[0][1]].startswith(f"not a features message (expected {HEADER_SIZE}+")
    assert other_schema[:4] == MAGIC and "feature schema 'v0000000'" in reasons[other_schema]
    assert reasons[bad[2][1]].startswith("features message key is not valid UTF-8")
    assert reasons[bad[3][1]].startswith("features message event id is not valid UTF-8")
    assert reasons[bad[4][1]] == "features message has no key (the entity id)"
    assert reasons[bad[5][1]].startswith("features message has no event id")
    for r in dead:
        assert r.headers[HEADER_PREFIX + "source.topic"].decode() == topics.features.name
    group = f"{config.parent.name}-router"
    assert committed_offsets(cfg, group, topics.features.name) == end_offsets(
        cfg, topics.features.name
    ), "batches holding a dead letter are committed once it is acknowledged"


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing_and_commits_only_what_was_decided(
    stream: tuple[PlatformConfig, Path], tmp_path: Path
) -> None:
    cfg, config = stream
    topics = cfg.kafka.topics
    batch, in_flight = 60, 2
    log = tmp_path / "router.log"
    first = start_router(config, log, "--batch-max", str(batch), "--max-in-flight",
                         str(in_flight))  # fmt: skip
    kill_after_decisions(cfg, first, log, 1_500)
    group = f"{config.parent.name}-router"
    committed = committed_offsets(cfg, group, topics.features.name)
    assert sum(max(o, 0) for o in committed.values()) < EVENTS, "killed after the work"

    # Everything below a committed offset had its decision on `scores` when the process died.
    before_restart = set(event_ids(read_all(cfg, topics.scores.name, 10**9, timeout_s=5)))
    features = read_all(cfg, topics.features.name, EVENTS)
    covered = [
        r.value[HEADER_SIZE:].decode() for r in features if r.offset < committed[r.partition]
    ]
    assert covered, "nothing was committed before the kill"
    assert set(covered) <= before_restart, "an offset was committed before its decision"

    second = start_router(config, log, "--batch-max", str(batch), "--max-in-flight",
                          str(in_flight))  # fmt: skip
    wanted = {r.value[HEADER_SIZE:].decode() for r in features}
    try:
        scores = read_until(
            cfg, topics.scores.name, lambda rs: set(event_ids(rs)) >= wanted, timeout_s=120
        )
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        assert second.wait(60) == 0, log.read_text()[-3000:]
    decided = event_ids(scores)
    assert set(decided) == wanted, "an event was lost"
    # Re-scored after the restart: what was produced but not committed when it died: the
    # batches waiting for acks, the one being scored, the one just consumed, and one whose
    # asynchronous commit had not reached the broker. A re-scored event gets the same
    # decision (the XGBoost score depends only on its features).
    duplicates = len(decided) - len(set(decided))
    bound = batch * (in_flight + 3)
    assert duplicates <= bound, f"{duplicates} duplicates, more than the {bound} in flight"
    by_event: dict[str, set[float | None]] = {}
    for r in scores:
        d = orjson.loads(r.value)
        by_event.setdefault(d["event_id"], set()).add(d["model_scores"]["xgboost"])
    assert all(len(v) == 1 for v in by_event.values())


def test_a_flag_change_in_the_file_takes_effect_without_a_restart(
    platform_config: Callable[[], PlatformConfig],
    model_server: ModelServer,
    feature_records: list[tuple[bytes, bytes]],
    tmp_path: Path,
) -> None:
    """The doorless stream router used to read its configuration once: a rollback or a
    threshold change in the ConfigMap waited for a restart."""
    import urllib.request

    cfg = platform_config()
    topics = cfg.kafka.topics
    create_topics(cfg)
    config = router_config(cfg, model_server, tmp_path)
    log = tmp_path / "router.log"
    proc = start_router(config, log)
    data = yaml.safe_load(config.read_text())
    metrics_url = f"http://127.0.0.1:{data['router']['http_port']}/metrics"

    def reloads_applied() -> float:
        try:
            with urllib.request.urlopen(metrics_url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return -1.0
        for line in text.splitlines():
            if line.startswith('anomaly_router_config_reloads_total{outcome="applied"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    try:
        deadline = time.monotonic() + 60
        while reloads_applied() < 0:  # the ops server answers once the router is up
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        data["ensemble"]["strategy"] = "weighted"
        config.write_text(yaml.safe_dump(data))
        while reloads_applied() < 1:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        produce(cfg, topics.features.name, feature_records[:500])
        scores = read_all(cfg, topics.scores.name, 500, timeout_s=120)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    assert {orjson.loads(r.value)["strategy"] for r in scores} == {"weighted"}
    assert "ensemble.strategy: 'cascade' -> 'weighted'" in log.read_text()


def test_the_router_with_its_doors_stops_cleanly_on_sigterm(
    stream: tuple[PlatformConfig, Path], tmp_path: Path
) -> None:
    """uvicorn re-raised SIGTERM after closing its sockets and Python's default handler ended
    the process there: no last commit, no leaving the consumer group (the next router waited
    out the session timeout, ~30 s without decisions in the main job's second run)."""
    cfg, config = stream
    data = yaml.safe_load(config.read_text())
    data["router"]["grpc_port"] = free_port()
    config.write_text(yaml.safe_dump(data))
    topics = cfg.kafka.topics
    log = tmp_path / "router.log"
    group = f"{config.parent.name}-router"
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "router", "-c", str(config),
         "--group-id", group],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        scores = read_all(cfg, topics.scores.name, EVENTS, timeout_s=120)
        assert len(scores) == EVENTS, log.read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-3000:]
    assert '"msg":"router stopped"' in log.read_text()
    assert committed_offsets(cfg, group, topics.features.name) == end_offsets(
        cfg, topics.features.name
    ), "the shutdown commits every scored batch"


@pytest.mark.slow
def test_a_static_member_killed_hard_is_replaced_at_once(
    stream: tuple[PlatformConfig, Path], tmp_path: Path
) -> None:
    """With `router.group_instance_id` (the main job sets one), the router started after a
    SIGKILL takes the partitions back at once; without it the group keeps them with the
    dead member until its 45 s session ends (the main job's next run waited that long)."""
    cfg, config = stream
    data = yaml.safe_load(config.read_text())
    data["router"]["group_instance_id"] = "router-under-test-0"
    static = config.with_name("static.yaml")  # same folder: the same consumer group
    static.write_text(yaml.safe_dump(data))
    scores = cfg.kafka.topics.scores.name
    log = tmp_path / "router.log"
    first = start_router(static, log, "--batch-max", "60", "--max-in-flight", "2")
    kill_after_decisions(cfg, first, log, 1_500)
    time.sleep(1.0)  # the last produce requests of the dead process have landed
    before = sum(end_offsets(cfg, scores).values())
    started = time.monotonic()
    second = start_router(static, log, "--batch-max", "60", "--max-in-flight", "2")
    try:
        while sum(end_offsets(cfg, scores).values()) <= before:
            assert second.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - started < 30, (
                "no decision 30 s after the restart: the partitions waited for the dead "
                "member's session to end"
            )
            time.sleep(0.1)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        assert second.wait(60) == 0, log.read_text()[-3000:]
    print(f"first decision {time.monotonic() - started:.1f} s after the restart")
