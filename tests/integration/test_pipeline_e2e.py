"""The whole pipeline on real parts: generator -> Kafka -> ingest -> router stream -> model
servers (V2 gRPC) -> decisions on `scores`, alerts through the outbox to the local PagerDuty
receiver. Counts must match (events in = decisions out) and injected anomalies must page."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from services.common.config import PlatformConfig
from services.common.config.model import IngestConfig
from services.generator import StreamSpec, generate_batch
from services.router.alerts import AlertDelivery, AlertMetrics
from services.router.alerts.pagerduty_receiver import ReceiverServer
from services.router.core import LiveConfig
from services.router.metrics import RouterMetrics
from services.router.runner import make_core
from services.router.stream import StreamScorer
from tests.integration.conftest import ModelServer
from tests.integration.kafka_io import create_topics, produce, read_until
from tests.integration.test_ingest import Running

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 6_000


def test_events_in_equal_decisions_out_and_anomalies_page(
    platform_config: Callable[[], PlatformConfig],
    model_server: ModelServer,
    tmp_path: Path,
) -> None:
    base = platform_config()
    endpoint = {"rest_url": "http://127.0.0.1:1", "grpc_target": model_server.grpc,
                "timeout_ms": 5_000}  # fmt: skip
    with ReceiverServer() as receiver:
        cfg = PlatformConfig(
            **{
                **base.model_dump(mode="json", exclude={"alerts", "serving", "ingest"}),
                "kafka": base.kafka.model_dump(),
                "serving": {"endpoints": {m: endpoint for m in
                                          ("isolation_forest", "xgboost", "transformer")}},
                "ingest": IngestConfig(group_id=f"{base.kafka.topics.events.name}-i",
                                       batch_timeout_ms=50, ops_port=0).model_dump(),
                "ensemble": {"strategy": "weighted", "default_threshold": 0.9},
                "alerts": {
                    "outbox_path": str(tmp_path / "outbox.db"),
                    "routing_key": "R" * 32,
                    "dispatch_interval_s": 0.1,
                    "sinks": [{"type": "pagerduty", "url": receiver.enqueue_url,
                               "group_window_s": 0, "resolve_after_s": 0}, {"type": "kafka"}],
                },
            }
        )  # fmt: skip
        create_topics(cfg)
        batch = generate_batch(StreamSpec(seed=9, entities=300, anomaly_rate=0.03), EVENTS)
        labelled = {label["event_id"] for label in batch.labels}
        produce(cfg, cfg.kafka.topics.events.name, list(zip(batch.keys, batch.values, strict=True)))

        live = LiveConfig(cfg)
        metrics = RouterMetrics(CollectorRegistry())
        delivery = AlertDelivery.from_config(
            cfg.alerts, cfg.kafka, metrics=AlertMetrics(CollectorRegistry())
        )
        delivery.start()
        scorer = StreamScorer(
            cfg, live, lambda: make_core(live, metrics), delivery, metrics,
            group_id=f"{cfg.kafka.topics.events.name}-router", batch_max=2_000,
            batch_timeout_s=0.05,
        )  # fmt: skip
        router = threading.Thread(target=scorer.run, daemon=True)
        router.start()
        try:
            with Running(cfg):
                scores = read_until(
                    cfg, cfg.kafka.topics.scores.name,
                    lambda r: len({orjson.loads(x.value)["event_id"] for x in r}) >= EVENTS, 120,
                )  # fmt: skip
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not _triggers(receiver):
                time.sleep(0.2)
        finally:
            scorer.stop()
            router.join(60)
            delivery.stop()
            delivery.close()
        assert scorer.error is None

        decisions = {orjson.loads(r.value)["event_id"]: orjson.loads(r.value) for r in scores}
        assert set(decisions) == {orjson.loads(v)["event_id"] for v in batch.values}
        assert all(not d["degraded"] for d in decisions.values()), "every model answered"
        assert all(set(d["model_scores"]) == {"isolation_forest", "xgboost", "transformer"}
                   for d in decisions.values())  # fmt: skip

        alerted = {e for e, d in decisions.items() if d["alert"]}
        assert alerted, "no decision crossed its threshold"
        precision = len(alerted & labelled) / len(alerted)
        base_rate = len(labelled) / EVENTS
        assert precision > 5 * base_rate, (precision, base_rate)

        paged = {e["payload"]["custom_details"]["event_id"] for e in _triggers(receiver)}
        assert paged, "nothing reached PagerDuty"
        assert paged <= alerted


def _triggers(receiver: ReceiverServer) -> list[dict[str, Any]]:
    received = httpx.get(f"{receiver.url}/v2/events").json()["events"]
    return [r["event"] for r in received if r["event"]["event_action"] == "trigger"]
