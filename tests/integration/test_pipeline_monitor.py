"""The main job's live summary, read from a real broker: counts, rates, alerts, unreadable."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest
from pipeline_monitor import DecisionMonitor, DecisionSnapshot, format_decisions

from services.common.config import PlatformConfig
from services.router.decision_json import encode_decisions
from tests.integration.kafka_io import create_topics, produce
from tests.unit.test_router_stream_encoding import batch

pytestmark = pytest.mark.integration


def _wait_for(monitor: DecisionMonitor, decided: int, unreadable: int) -> DecisionSnapshot:
    deadline = time.monotonic() + 30
    while True:
        snap = monitor.snapshot()
        if (snap.decisions, snap.unreadable) == (decided, unreadable):
            return snap
        assert time.monotonic() < deadline, snap
        time.sleep(0.1)


def test_decision_monitor_counts_what_the_router_wrote(
    platform_config: Callable[[], PlatformConfig],
) -> None:
    cfg = platform_config()
    create_topics(cfg)
    topics = cfg.kafka.topics
    scored = batch("weighted", seed=3)
    messages = encode_decisions(scored)
    # Written before the monitor starts: a live summary reads from the end, so not counted.
    produce(cfg, topics.scores.name, [(b"old", messages[0])])

    monitor = DecisionMonitor(cfg).start()
    try:
        # start() read the ends: everything produced after it returns is counted.
        produce(cfg, topics.scores.name, [(b"k", m) for m in messages])
        produce(cfg, topics.scores.name, [(b"k", b"{not a decision")])
        records = [scored.record(i) for i in range(len(scored))]
        labelled = [r["event_id"] for r in records[::5]]
        produce(cfg, topics.labels.name,
                [(e.encode(), orjson.dumps({"event_id": e})) for e in labelled])  # fmt: skip
        produce(cfg, topics.labels.name, [(b"k", b"[]")])  # valid JSON, not a label
        snap = _wait_for(monitor, decided=len(messages), unreadable=2)
        time.sleep(0.5)  # labels come from another topic: let them arrive too
        snap = monitor.snapshot()
    finally:
        monitor.stop()

    assert snap.degraded == sum(r["degraded"] for r in records)
    alerts: dict[str, int] = {}
    for r in records:
        if r["alert"]:
            kind = r["anomaly_type"] or "unknown"
            alerts[kind] = alerts.get(kind, 0) + 1
    assert snap.alerts_by_type == alerts
    flagged = {r["event_id"] for r in records if r["anomalous"]}
    positives = set(labelled)
    assert snap.tpr == pytest.approx(len(flagged & positives) / len(positives))
    negatives = len(records) - len(positives)
    assert snap.fpr == pytest.approx(len(flagged - positives) / negatives)
    assert "UNREADABLE messages 2" in format_decisions(snap)
