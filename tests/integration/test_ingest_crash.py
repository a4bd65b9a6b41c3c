"""kill -9 of the ingest process mid-stream, then a restart: nothing lost, state exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from services.common.config import PlatformConfig, dump_config
from services.common.features.messages import HEADER_SIZE, decode_feature_messages
from tests.integration.kafka_io import (
    Record,
    committed_offsets,
    create_topics,
    produce,
    read_until,
)
from tests.integration.test_ingest import PER_EVENT, encoded, make_events, offline_features

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = 100
IN_FLIGHT = 2


def start_ingest(config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "ingest",
            "-c",
            str(config_file),
            "--no-online-store",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for_features(
    config: PlatformConfig, at_least: int, proc: subprocess.Popen[bytes], log: Path
) -> None:
    def done(records: list[Record]) -> bool:
        assert proc.poll() is None, f"ingest process died: {log.read_text()[-2000:]}"
        return len(records) >= at_least

    seen = read_until(config, config.kafka.topics.features.name, done, timeout_s=90)
    assert len(seen) >= at_least, f"only {len(seen)} features: {log.read_text()[-2000:]}"


def test_kill_9_mid_stream_loses_nothing(
    platform_config: Callable[[], PlatformConfig], tmp_path: Path
) -> None:
    cfg = platform_config()
    data = dump_config(cfg)
    data["ingest"].update(
        {
            "group_id": f"{cfg.kafka.topics.events.name}-crash",
            "batch_max_events": BATCH,
            "max_in_flight_batches": IN_FLIGHT,
            "batch_timeout_ms": 20,
            "checkpoint_interval_s": 0.3,
            "session_timeout_ms": 6_000,  # the broker's minimum: the dead member is evicted fast
            "ops_port": 0,
        }
    )
    config_file = tmp_path / "platform.yaml"
    config_file.write_text(yaml.safe_dump(data))
    create_topics(cfg)
    events = make_events(30_000, entities=40)
    produce(cfg, cfg.kafka.topics.events.name, encoded(events))
    log = tmp_path / "ingest.log"

    first = start_ingest(config_file, log)
    try:
        wait_for_features(cfg, 1_200, first, log)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
    committed = committed_offsets(cfg, data["ingest"]["group_id"], cfg.kafka.topics.events.name)
    assert sum(max(o, 0) for o in committed.values()) < len(events), "killed after the work"

    second = start_ingest(config_file, log)
    try:
        wanted = {e["event_id"] for e in events}

        def all_seen(records: list[Record]) -> bool:
            seen = {r.value[HEADER_SIZE:].decode() for r in records}
            return seen >= wanted

        features = read_until(cfg, cfg.kafka.topics.features.name, all_seen, 90)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        assert second.wait(60) == 0, log.read_text()[-3000:]

    decoded = decode_feature_messages([r.value for r in features])
    ids = decoded.event_ids
    assert set(ids) == {e["event_id"] for e in events}, "an event was lost"
    duplicates = len(ids) - len(set(ids))
    # Re-delivered: the batches in flight when the process died (acks or commit pending).
    bound = BATCH * (IN_FLIGHT + 1)
    assert duplicates <= bound, f"{duplicates} duplicates, more than the {bound} in flight"

    # The last message of each event (per partition, messages are in offset order) was computed
    # from restored state: identical to processing the stream once without a crash.
    order = np.lexsort(([r.offset for r in features], [r.partition for r in features]))
    last: dict[str, np.ndarray] = {}
    for i in order:
        last[ids[i]] = decoded.matrix[i]
    reference = offline_features(events)
    for eid, row in last.items():
        np.testing.assert_allclose(row[PER_EVENT], reference[eid][PER_EVENT], rtol=1e-6)
