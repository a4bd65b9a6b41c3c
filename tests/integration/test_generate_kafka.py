"""The generator into a real broker: every event arrives valid, keyed, labelled out of band."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from services.cli.main import app
from services.common.config import PlatformConfig, dump_config
from services.common.config.model import ProducerTuning
from services.common.events import parse_event
from services.common.kafka.clients import make_admin
from services.common.kafka.topics import ensure_topics, pipeline_topics
from services.generator import (
    GenerateRequest,
    GeneratorError,
    Output,
    StreamSpec,
    generate,
    generate_batch,
)
from tests.integration.kafka_io import create_topics, read_all

pytestmark = pytest.mark.integration

SPEC = StreamSpec(seed=7, entities=400, anomaly_rate=0.02)
EVENTS = 20_000


def test_round_trip_through_the_broker(platform_config: Callable[[], PlatformConfig]) -> None:
    cfg = platform_config()
    create_topics(cfg)
    result = generate(GenerateRequest(spec=SPEC, output=Output.KAFKA, max_events=EVENTS), cfg.kafka)
    assert result.events == EVENTS
    assert result.delivery_errors == 0

    records = read_all(cfg, cfg.kafka.topics.events.name, EVENTS)
    labels = read_all(cfg, cfg.kafka.topics.labels.name, result.anomaly_total)
    assert len(records) == EVENTS

    events = [parse_event(r.value) for r in records]  # every event honours the contract
    assert all(r.key == e["entity_id"].encode() for r, e in zip(records, events, strict=True))
    partitions: dict[str, set[int]] = defaultdict(set)
    for r, e in zip(records, events, strict=True):
        partitions[e["entity_id"]].add(r.partition)
    assert all(len(p) == 1 for p in partitions.values()), "an entity's events share a partition"

    # Same bytes as the in-memory stream of the same spec (order kept within a partition).
    expected = generate_batch(SPEC, EVENTS)
    assert sorted(r.value for r in records) == sorted(expected.values)

    ids = {e["event_id"] for e in events}
    label_rows = [orjson.loads(r.value) for r in labels]
    assert len(label_rows) == result.anomaly_total > 0
    assert all(r.key == row["event_id"].encode() for r, row in zip(labels, label_rows, strict=True))
    assert {row["event_id"] for row in label_rows} <= ids
    assert Counter(row["label"] for row in label_rows) == {
        t.value: n for t, n in result.anomalies.items() if n
    }
    assert all("label" not in e for e in events)


def test_a_full_producer_queue_delays_but_never_drops(
    platform_config: Callable[[], PlatformConfig],
) -> None:
    cfg = platform_config()
    tiny_queue = cfg.kafka.model_copy(
        update={"producer": ProducerTuning(queue_buffering_max_messages=50, linger_ms=1)}
    )
    create_topics(cfg)
    result = generate(GenerateRequest(spec=SPEC, output=Output.KAFKA, max_events=3_000), tiny_queue)
    assert result.delivery_errors == 0
    assert len(read_all(cfg, cfg.kafka.topics.events.name, 3_000)) == 3_000


def test_broker_rejections_are_counted_not_ignored(
    platform_config: Callable[[], PlatformConfig],
) -> None:
    cfg = platform_config()
    topics = cfg.kafka.topics
    # A topic that refuses every batch: the broker answers MESSAGE_TOO_LARGE for each.
    tiny = topics.events.model_copy(update={"extra": {"max.message.bytes": "64"}})
    ensure_topics(make_admin(cfg.kafka), [tiny, *pipeline_topics(topics)[1:]])
    result = generate(GenerateRequest(spec=SPEC, output=Output.KAFKA, max_events=500), cfg.kafka)
    assert result.delivery_errors == 500
    assert result.first_error is not None and "too large" in result.first_error.lower()


def test_missing_topic_is_one_clear_error(platform_config: Callable[[], PlatformConfig]) -> None:
    cfg = platform_config()  # topics not created
    with pytest.raises(GeneratorError, match="anomaly topics create"):
        generate(GenerateRequest(spec=SPEC, output=Output.KAFKA, max_events=10), cfg.kafka)


def test_cli_generates_into_kafka_and_reports_the_rate(
    platform_config: Callable[[], PlatformConfig], tmp_path: Path
) -> None:
    cfg = platform_config()
    create_topics(cfg)
    config_file = tmp_path / "platform.yaml"
    config_file.write_text(yaml.safe_dump(dump_config(cfg)))
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "-c",
            str(config_file),
            "--to",
            "kafka",
            "--events",
            "5000",
            "--rate",
            "0",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "events/s" in result.output
    assert len(read_all(cfg, cfg.kafka.topics.events.name, 5_000)) == 5_000


def test_cli_unreachable_broker_exits_2_without_traceback(tmp_path: Path) -> None:
    config_file = tmp_path / "platform.yaml"
    config_file.write_text("kafka: {bootstrap_servers: '127.0.0.1:1'}\n")
    result = CliRunner().invoke(
        app, ["generate", "-c", str(config_file), "--to", "kafka", "--events", "10"]
    )
    assert result.exit_code == 2
    assert "cannot reach the Kafka broker" in result.output
    assert "Traceback" not in result.output
