"""Alert delivery against real servers: the local PagerDuty receiver (uvicorn on a free port),
a plain HTTP webhook receiver, and the session's Kafka broker. No HTTP or Kafka mocks."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.common.anomaly_types import AnomalyType
from services.common.config import PlatformConfig
from services.common.config.model import (
    AlertsConfig,
    AlertSinkConfig,
    FeatureFlags,
    KafkaAlertSink,
    KafkaConfig,
    PagerDutySink,
    WebhookSink,
)
from services.common.kafka.clients import make_producer
from services.router.alerts import Alert, AlertDelivery, AlertMetrics, Dispatcher
from services.router.alerts.clock import Clock, ManualClock, system_clock
from services.router.alerts.outbox import Outbox, SinkStats
from services.router.alerts.pagerduty_receiver import Fault, ReceiverServer
from services.router.alerts.sinks.kafka import KafkaAlertWriter
from services.router.alerts.sinks.pagerduty import PagerDutyAlertSink
from tests.integration.kafka_io import create_topics, read_all

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "R" * 32
T0_MS = 1_767_571_200_000


def make_alert(i: int, entity: str = "acct-1", **changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "event_id": f"ev-{entity}-{i}",
        "entity_id": entity,
        "anomaly_type": AnomalyType.VELOCITY_BURST,
        "score": 0.95 + (i % 5) / 1000,
        "threshold": 0.9,
        "model_scores": {"xgboost": 0.97, "isolation_forest": 0.93},
        "severity": "error",
        "event_ts": T0_MS + i,
        "decided_at": T0_MS + i + 3,
        "explanation": {"top_features": [["count_1m_z", 5.1]]},
        "degraded": False,
    }
    fields.update(changes)
    return Alert(**fields)


@pytest.fixture
def receiver() -> Iterator[ReceiverServer]:
    with ReceiverServer() as server:
        yield server


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


Factory = Callable[..., AlertDelivery]


@pytest.fixture
def delivery(tmp_path: Path, registry: CollectorRegistry) -> Iterator[Factory]:
    """Builds AlertDelivery objects with test-sized retry settings; closes them at the end."""
    made: list[AlertDelivery] = []

    def make(
        *sinks: AlertSinkConfig,
        clock: Clock = system_clock,
        kafka: KafkaConfig | None = None,
        flags: Callable[[], FeatureFlags] | None = None,
        **settings: Any,
    ) -> AlertDelivery:
        cfg = AlertsConfig(
            sinks=list(sinks),
            outbox_path=str(tmp_path / "outbox.db"),
            routing_key=SecretStr(KEY),
            retry_initial_s=0.05,
            retry_max_s=0.2,
            dispatch_interval_s=0.05,
            **settings,
        )
        built = AlertDelivery.from_config(
            cfg,
            kafka or KafkaConfig(),
            metrics=AlertMetrics.bound_to(registry),
            clock=clock,
            flags=flags,
        )
        made.append(built)
        return built

    yield make
    for built in made:
        built.close()


def pagerduty(receiver: ReceiverServer, **settings: Any) -> PagerDutySink:
    return PagerDutySink(type="pagerduty", url=receiver.enqueue_url, **settings)


def received(receiver: ReceiverServer, path: str) -> list[dict[str, Any]]:
    body: dict[str, list[dict[str, Any]]] = httpx.get(f"{receiver.url}{path}").json()
    return next(iter(body.values()))


def triggers(receiver: ReceiverServer) -> list[dict[str, Any]]:
    return [
        e["event"]
        for e in received(receiver, "/v2/events")
        if e["event"]["event_action"] == "trigger"
    ]


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- PagerDuty


def test_throttled_and_failing_receiver_still_gets_every_alert_once_per_key(
    receiver: ReceiverServer, delivery: Factory, registry: CollectorRegistry
) -> None:
    faults = [{"status": 429, "count": 2, "retry_after": 1}, {"status": 500, "count": 2}]
    for fault in faults:
        httpx.post(f"{receiver.url}/control/faults", json=fault).raise_for_status()
    alerts = [make_alert(i, entity=f"acct-{i % 3}") for i in range(30)]
    pd = delivery(pagerduty(receiver, group_window_s=60, resolve_after_s=0))
    pd.enqueue(alerts)
    pd.start()
    wait_until(lambda: (s := pd.outbox.stats()["pagerduty"]).pending == 0 and s.delivered == 30)
    pd.stop()

    accepted = triggers(receiver)
    assert sorted(t["dedup_key"] for t in accepted) == [
        f"anomaly:acct-{k}:velocity_burst" for k in range(3)
    ], "one trigger per dedup_key"
    assert all(t["payload"]["custom_details"]["count"] == 10 for t in accepted)
    assert {i["trigger_count"] for i in received(receiver, "/v2/incidents")} == {1}

    requests = received(receiver, "/control/requests")
    assert [r["status"] for r in requests] == [429, 429, 500, 500, 202, 202, 202]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(requests)]
    assert gaps[0] >= 0.9 and gaps[1] >= 0.9, f"Retry-After not honoured: {gaps}"
    assert gaps[2] < 0.9, "5xx retries use the (short) exponential backoff"
    assert sample(registry, "anomaly_alerts_failed_total", sink="pagerduty", outcome="retry") > 0
    assert sample(registry, "anomaly_alerts_delivered_total", sink="pagerduty") == 30
    assert sample(registry, "anomaly_alerts_outbox_pending", sink="pagerduty") == 0


def test_burst_in_one_batch_pages_once_with_its_count_and_resolves(
    receiver: ReceiverServer, delivery: Factory
) -> None:
    clock = ManualClock()
    pd = delivery(pagerduty(receiver, group_window_s=60, resolve_after_s=120), clock=clock)
    pd.enqueue([make_alert(i) for i in range(100)])
    assert pd.dispatch_once().delivered == 100

    [trigger] = triggers(receiver)
    assert trigger["payload"]["custom_details"]["count"] == 100
    assert trigger["payload"]["custom_details"]["total_count"] == 100
    assert "(100 alerts)" in trigger["payload"]["summary"]

    clock.advance(119)
    pd.dispatch_once()
    assert received(receiver, "/v2/incidents")[0]["status"] == "triggered"
    clock.advance(1)
    pd.dispatch_once()
    [incident] = received(receiver, "/v2/incidents")
    assert (incident["status"], incident["trigger_count"], incident["resolve_count"]) == (
        "resolved",
        1,
        1,
    )
    assert pd.outbox.stats()["pagerduty"].pending == 0


def test_trickling_burst_is_one_trigger_plus_one_update_at_window_end(
    receiver: ReceiverServer, delivery: Factory, registry: CollectorRegistry
) -> None:
    clock = ManualClock()
    pd = delivery(pagerduty(receiver, group_window_s=60, resolve_after_s=120), clock=clock)
    pd.enqueue([make_alert(0)])
    pd.dispatch_once()
    for i in range(1, 100):  # the rest of the burst arrives over 30 s
        clock.advance(0.3)
        pd.enqueue([make_alert(i)])
        pd.dispatch_once()
    assert len(triggers(receiver)) == 1
    assert sample(registry, "anomaly_alerts_held_total", sink="pagerduty") >= 99
    assert pd.outbox.stats()["pagerduty"].pending == 99, "held alerts wait in the outbox"

    clock.advance(31)  # past the window that began with the first trigger
    pd.dispatch_once()
    first, update = triggers(receiver)
    assert first["payload"]["custom_details"]["count"] == 1
    assert update["payload"]["custom_details"]["count"] == 99
    assert update["payload"]["custom_details"]["total_count"] == 100
    assert update["dedup_key"] == first["dedup_key"]
    [incident] = received(receiver, "/v2/incidents")
    assert (incident["trigger_count"], incident["times_opened"]) == (2, 1), "an update, no page"

    clock.advance(120)
    pd.dispatch_once()
    assert received(receiver, "/v2/incidents")[0]["status"] == "resolved"
    assert pd.outbox.stats()["pagerduty"].pending == 0


def test_grouping_and_resolve_survive_a_restart(
    receiver: ReceiverServer, delivery: Factory
) -> None:
    clock = ManualClock()
    sink = pagerduty(receiver, group_window_s=60, resolve_after_s=120)
    first = delivery(sink, clock=clock)
    first.enqueue([make_alert(0)])
    first.dispatch_once()
    first.close()

    clock.advance(10)
    second = delivery(sink, clock=clock)
    second.enqueue([make_alert(1)])
    second.dispatch_once()
    assert len(triggers(receiver)) == 1, "still within the window after the restart"
    clock.advance(50)
    second.dispatch_once()
    clock.advance(120)
    second.dispatch_once()
    [incident] = received(receiver, "/v2/incidents")
    assert (incident["trigger_count"], incident["status"]) == (2, "resolved")


def test_an_incident_whose_new_alert_was_given_up_still_resolves(
    tmp_path: Path, receiver: ReceiverServer
) -> None:
    """A new alert of an open incident meets a PagerDuty outage longer than
    `give_up_after_s` and is marked dead; once PagerDuty is back the incident must still be
    resolved. It used to stay open for good: the sink still believed an alert was waiting."""
    clock = ManualClock()
    cfg = AlertsConfig(sinks=[], retry_initial_s=1, retry_max_s=4, give_up_after_s=30)
    pd = pagerduty(receiver, group_window_s=60, resolve_after_s=120)
    metrics = AlertMetrics(CollectorRegistry())
    with Outbox(tmp_path / "o.db", ["pagerduty"], clock=clock) as outbox:
        sink = PagerDutyAlertSink(
            "pagerduty", pd, KEY, state=outbox.state_for("pagerduty"), clock=clock,
            metrics=metrics,
        )  # fmt: skip
        dispatcher = Dispatcher(outbox, [sink], cfg, metrics=metrics, clock=clock)
        outbox.enqueue([make_alert(1)])
        assert dispatcher.dispatch_once().delivered == 1
        [incident] = receiver.state.incidents.values()
        clock.advance(70)  # past the grouping window: the next alert is sent at once
        receiver.state.faults.append(Fault(status=503, remaining=1_000, retry_after=None))
        outbox.enqueue([make_alert(2)])
        for _ in range(20):
            dispatcher.dispatch_once()
            clock.advance(4)
        assert outbox.stats()["pagerduty"].dead == 1
        receiver.state.faults.clear()
        for _ in range(5):
            clock.advance(60)
            dispatcher.dispatch_once()
        assert incident.status == "resolved" and incident.resolve_count == 1
        assert sink.open_keys == 0
        sink.close()


def test_kill_switch_and_entity_suppression_hold_alerts_already_queued(
    receiver: ReceiverServer, delivery: Factory, registry: CollectorRegistry
) -> None:
    """Alerts in the outbox when a flag is set (e.g. waiting out a PagerDuty 429) were
    still paged: only new alerts were stopped. They are now held, visible, and paged (one
    trigger per incident) once the flag is cleared."""
    clock = ManualClock()
    live = {"flags": FeatureFlags()}
    pd = delivery(
        pagerduty(receiver, group_window_s=60, resolve_after_s=120),
        clock=clock,
        flags=lambda: live["flags"],
    )
    pd.enqueue([make_alert(i, entity=f"acct-{i % 2}") for i in range(6)])
    live["flags"] = FeatureFlags(alerts_enabled=False)
    for _ in range(3):
        assert pd.dispatch_once().delivered == 0
        clock.advance(200)  # resolves are held too (none open here, nothing sent at all)
    assert received(receiver, "/control/requests") == []
    assert pd.outbox.stats()["pagerduty"].pending == 6, "held, not dropped"
    assert sample(registry, "anomaly_alerts_outbox_suppressed", sink="pagerduty") == 6

    live["flags"] = FeatureFlags(suppressed_entities=frozenset({"acct-0"}))
    assert pd.dispatch_once().delivered == 3
    assert [t["payload"]["source"] for t in triggers(receiver)] == ["acct-1"]
    assert sample(registry, "anomaly_alerts_outbox_suppressed", sink="pagerduty") == 3
    held = frozenset({"acct-0"})
    assert pd.outbox.next_due_at("pagerduty", exclude_entities=held) is None, "no busy wake-ups"

    live["flags"] = FeatureFlags()
    assert pd.dispatch_once().delivered == 3
    assert sorted(t["payload"]["source"] for t in triggers(receiver)) == ["acct-0", "acct-1"]
    assert triggers(receiver)[1]["payload"]["custom_details"]["count"] == 3
    assert pd.outbox.stats()["pagerduty"].pending == 0
    assert sample(registry, "anomaly_alerts_outbox_suppressed", sink="pagerduty") == 0


def test_receiver_refuses_invalid_events_with_errors(receiver: ReceiverServer) -> None:
    bad: dict[str, Any] = {
        "routing_key": KEY,
        "event_action": "trigger",
        "payload": {"summary": "x", "source": "acct-1", "severity": "fatal"},
    }
    response = httpx.post(receiver.enqueue_url, json=bad)
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "invalid event"
    assert any("severity" in e for e in body["errors"])
    assert httpx.post(receiver.enqueue_url, content=b"{not json").status_code == 400
    assert received(receiver, "/v2/events") == []
    ok = {**bad, "payload": {**bad["payload"], "severity": "warning"}}
    accepted = httpx.post(receiver.enqueue_url, json=ok)
    assert accepted.status_code == 202
    assert accepted.json()["status"] == "success" and accepted.json()["dedup_key"]
    assert httpx.get(f"{receiver.url}/healthz").json() == {"status": "ok"}
    assert "pagerduty_receiver_requests_total" in httpx.get(f"{receiver.url}/metrics").text


def test_refused_alert_is_dead_counted_and_not_retried(
    receiver: ReceiverServer, delivery: Factory, registry: CollectorRegistry
) -> None:
    httpx.post(f"{receiver.url}/control/faults", json={"status": 400, "count": 1})
    pd = delivery(pagerduty(receiver, group_window_s=0, resolve_after_s=0))
    pd.enqueue([make_alert(1)])
    assert pd.dispatch_once().dead == 1
    for _ in range(3):
        pd.dispatch_once()
    assert len(received(receiver, "/control/requests")) == 1, "a 400 is not retried"
    assert pd.outbox.stats()["pagerduty"].dead == 1
    [dead] = pd.outbox.dead()
    assert dead.last_status == 400
    assert sample(registry, "anomaly_alerts_failed_total", sink="pagerduty", outcome="dead") == 1
    assert sample(registry, "anomaly_alerts_outbox_dead", sink="pagerduty") == 1

    assert pd.outbox.retry_dead() == 1, "after fixing the cause, dead alerts can be retried"
    assert pd.dispatch_once().delivered == 1
    assert len(triggers(receiver)) == 1


def test_webhook_receiving_invalid_body_marks_alerts_dead(
    receiver: ReceiverServer, delivery: Factory
) -> None:
    """The receiver's real validation refuses a webhook body (no routing key): 400 -> dead."""
    hook = delivery(WebhookSink(type="webhook", url=receiver.enqueue_url))
    hook.enqueue([make_alert(1), make_alert(2)])
    report = hook.dispatch_once()
    assert (report.dead, report.delivered) == (2, 0)
    [dead, _] = hook.outbox.dead()
    assert dead.last_status == 400 and "routing_key" in (dead.last_error or "")


# --------------------------------------------------------------------------- durability


CRASHING_PRODUCER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pydantic import SecretStr
    from services.common.config.model import AlertsConfig, KafkaConfig, PagerDutySink
    from services.router.alerts import Alert, AlertDelivery

    outbox, url, alerts = sys.argv[1:]
    cfg = AlertsConfig(
        sinks=[PagerDutySink(type="pagerduty", url=url)],
        outbox_path=outbox,
        routing_key=SecretStr("R" * 32),
    )
    delivery = AlertDelivery.from_config(cfg, KafkaConfig())
    delivery.enqueue([Alert.from_json(line) for line in Path(alerts).read_text().splitlines()])
    print("enqueued", flush=True)
    time.sleep(60)
    """
)


def test_alerts_enqueued_before_a_crash_are_delivered_after_restart(
    tmp_path: Path, receiver: ReceiverServer, delivery: Factory
) -> None:
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_bytes(b"\n".join(make_alert(i, entity=f"acct-{i}").to_json() for i in range(5)))
    args = [str(tmp_path / "outbox.db"), receiver.enqueue_url, str(alerts)]
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_PRODUCER, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ANOMALY_")},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "enqueued"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown: nothing flushed or closed
        proc.wait()
    assert received(receiver, "/control/requests") == []

    restarted = delivery(pagerduty(receiver))
    assert restarted.outbox.stats()["pagerduty"].pending == 5
    assert restarted.dispatch_once().delivered == 5
    assert len(triggers(receiver)) == 5
    assert restarted.outbox.stats()["pagerduty"].pending == 0


# --------------------------------------------------------------------------- webhook


class WebhookRecorder:
    """A plain HTTP server that records POSTs and answers with queued statuses."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.statuses: list[int] = []
        self.max_body: int | None = None
        """Bodies longer than this are answered 413, as a proxy's size limit would."""
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = self.rfile.read(length)
                status = recorder.statuses.pop(0) if recorder.statuses else 200
                if recorder.max_body is not None and length > recorder.max_body:
                    status = 413
                if status == 200:
                    recorder.bodies.append(orjson.loads(body))
                    recorder.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_posts_batches_with_headers_and_retries_5xx(delivery: Factory) -> None:
    recorder = WebhookRecorder()
    try:
        recorder.statuses = [503]
        sink = WebhookSink(
            type="webhook", url=recorder.url, headers={"Authorization": SecretStr("Bearer t0k")}
        )
        hook = delivery(sink)
        alerts = [make_alert(i) for i in range(3)]
        hook.enqueue(alerts)
        assert hook.dispatch_once().retried == 3
        wait_until(lambda: hook.dispatch_once().delivered == 3, timeout_s=5)
        [body] = recorder.bodies
        assert [Alert.model_validate(a) for a in body["alerts"]] == alerts
        assert recorder.headers[0]["Authorization"] == "Bearer t0k"
    finally:
        recorder.close()


def test_webhook_413_splits_the_batch_and_refuses_only_the_alert_too_large_alone(
    delivery: Factory, registry: CollectorRegistry
) -> None:
    """A 413 (body too large) used to mark the whole batch dead."""
    recorder = WebhookRecorder()
    try:
        recorder.max_body = 1_500  # about three ordinary alerts
        hook = delivery(WebhookSink(type="webhook", url=recorder.url))
        alerts = [make_alert(i) for i in range(10)]
        alerts[6] = make_alert(6, explanation={"blob": "x" * 3_000})
        hook.enqueue(alerts)
        report = hook.dispatch_once()
        assert (report.delivered, report.dead, report.retried) == (9, 1, 0)
        posted = [Alert.model_validate(a) for body in recorder.bodies for a in body["alerts"]]
        assert sorted(a.event_id for a in posted) == sorted(
            a.event_id for i, a in enumerate(alerts) if i != 6
        ), "each delivered alert once"
        [dead] = hook.outbox.dead()
        assert (dead.event_id, dead.last_status) == (alerts[6].event_id, 413)
        assert "alone is too large" in (dead.last_error or "")
        assert sample(registry, "anomaly_alerts_failed_total", sink="webhook", outcome="dead") == 1
    finally:
        recorder.close()


def test_webhook_failing_after_a_split_keeps_what_was_accepted(delivery: Factory) -> None:
    recorder = WebhookRecorder()
    try:
        recorder.statuses = [413, 200, 503]  # whole batch, first half, second half
        hook = delivery(WebhookSink(type="webhook", url=recorder.url))
        hook.enqueue([make_alert(i) for i in range(4)])
        report = hook.dispatch_once()
        assert (report.delivered, report.retried, report.dead) == (2, 2, 0)
        [body] = recorder.bodies
        assert [a["event_id"] for a in body["alerts"]] == ["ev-acct-1-0", "ev-acct-1-1"]
        wait_until(lambda: hook.dispatch_once().delivered == 2, timeout_s=5)
        assert [a["event_id"] for a in recorder.bodies[1]["alerts"]] == [
            "ev-acct-1-2",
            "ev-acct-1-3",
        ]
    finally:
        recorder.close()


def test_alerts_queued_for_a_sink_survive_a_second_sink_of_its_type_and_orphans_are_shown(
    delivery: Factory, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Restarting with a second webhook used to rename the first to `webhook-1`: what was
    queued for `webhook` was never delivered, and nothing said so."""
    first, second = WebhookRecorder(), WebhookRecorder()
    try:
        before = delivery(WebhookSink(type="webhook", url=first.url))
        before.enqueue([make_alert(1)])
        before.close()  # restart with one more sink of the same type
        after = delivery(
            WebhookSink(type="webhook", url=first.url),
            WebhookSink(type="webhook", url=second.url),
        )
        assert [s.name for s in after.sinks] == ["webhook", "webhook-2"]
        after.enqueue([make_alert(2)])
        assert after.dispatch_once().delivered == 3
        assert [a["event_id"] for b in first.bodies for a in b["alerts"]] == [
            "ev-acct-1-1",
            "ev-acct-1-2",
        ]
        after.enqueue([make_alert(4)])
        after.close()  # restart with the sinks renamed: alert 4 waits for names now gone

        with caplog.at_level("WARNING", logger="services.router.alerts.delivery"):
            renamed = delivery(WebhookSink(type="webhook", url=first.url, name="primary"))
        renamed.enqueue([make_alert(3)])
        renamed.dispatch_once()
        assert any(
            "1 pending and 0 dead alert(s) for sink 'webhook-2'" in r.getMessage()
            for r in caplog.records
        ), caplog.text
        assert sample(registry, "anomaly_alerts_outbox_orphaned", sink="webhook-2") == 1
        assert sample(registry, "anomaly_alerts_outbox_orphaned", sink="webhook") == 1
        assert sample(registry, "anomaly_alerts_outbox_orphaned", sink="primary") == 0
        assert renamed.outbox.stats()["webhook"].pending == 1, "kept, not dropped"
    finally:
        first.close()
        second.close()


# --------------------------------------------------------------------------- Kafka


def test_kafka_sink_writes_alerts_to_the_alerts_topic(
    platform_config: Callable[[], PlatformConfig], delivery: Factory
) -> None:
    cfg = platform_config()
    create_topics(cfg)
    kafka = delivery(KafkaAlertSink(type="kafka"), kafka=cfg.kafka)
    alerts = [make_alert(i, entity=f"acct-{i % 4}") for i in range(8)]
    kafka.enqueue(alerts)
    assert kafka.dispatch_once().delivered == 8

    records = read_all(cfg, cfg.kafka.topics.alerts.name, expected=8, timeout_s=30)
    assert sorted(Alert.from_json(r.value).event_id for r in records) == sorted(
        a.event_id for a in alerts
    )
    for record in records:
        alert = Alert.from_json(record.value)
        assert record.key == alert.entity_id.encode()
        assert record.headers["event-id"] == alert.event_id.encode()
    assert kafka.outbox.stats()["kafka"].pending == 0


def test_kafka_record_too_large_is_dead_alone_and_the_others_are_written(
    platform_config: Callable[[], PlatformConfig], delivery: Factory
) -> None:
    """One record over `message.max.bytes` used to mark the whole batch dead, also the
    records produced before it (already in the topic) and those never tried after it."""
    cfg = platform_config()
    create_topics(cfg)
    small = cfg.kafka.model_copy(update={"extra": {"message.max.bytes": 4_000}})
    kafka = delivery(KafkaAlertSink(type="kafka"), kafka=small)
    alerts = [make_alert(i) for i in range(6)]
    alerts[2] = make_alert(2, explanation={"blob": "x" * 10_000})
    kafka.enqueue(alerts)
    report = kafka.dispatch_once()
    assert (report.delivered, report.dead, report.retried) == (5, 1, 0)

    records = read_all(cfg, cfg.kafka.topics.alerts.name, expected=5, timeout_s=30)
    assert sorted(Alert.from_json(r.value).event_id for r in records) == sorted(
        a.event_id for i, a in enumerate(alerts) if i != 2
    )
    [dead] = kafka.outbox.dead()
    assert dead.event_id == alerts[2].event_id
    assert "MSG_SIZE_TOO_LARGE" in (dead.last_error or "")
    assert kafka.outbox.stats()["kafka"] == SinkStats(pending=0, delivered=5, dead=1)


def small_queue_producer(kafka: KafkaConfig, flush_timeout_s: float) -> Producer:
    """The alert producer with a 1 KiB local queue: a 12 KB record never fits in it."""
    return make_producer(
        kafka,
        "alerts",
        **{
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": int(flush_timeout_s * 1000),
            "queue.buffering.max.kbytes": 1,
        },
    )


def test_kafka_full_local_queue_is_retried_not_dead_and_blocks_no_other_alert(
    platform_config: Callable[[], PlatformConfig], tmp_path: Path
) -> None:
    """A BufferError that draining the queue did not cure escaped `write` as a sink bug:
    the batch was retried whole, records already written went out again, and the alerts
    after it were not even tried. Now only that alert waits (retryable, never dead)."""
    cfg = platform_config()
    create_topics(cfg)
    clock = ManualClock()
    metrics = AlertMetrics(CollectorRegistry())
    settings = AlertsConfig(sinks=[], retry_initial_s=1, retry_max_s=1)
    sink = KafkaAlertWriter(
        "kafka", KafkaAlertSink(type="kafka", flush_timeout_s=5), cfg.kafka, small_queue_producer
    )
    alerts = [make_alert(i) for i in range(5)]
    alerts[1] = make_alert(1, explanation={"blob": "x" * 12_000})
    with Outbox(tmp_path / "o.db", ["kafka"], clock=clock) as outbox:
        dispatcher = Dispatcher(outbox, [sink], settings, metrics=metrics, clock=clock)
        outbox.enqueue(alerts)
        report = dispatcher.dispatch_once()
        assert (report.delivered, report.retried, report.dead) == (4, 1, 0)
        clock.advance(0.4)  # within that alert's backoff (0.5 s at least)
        outbox.enqueue([make_alert(9)])
        assert dispatcher.dispatch_once().delivered == 1, "the sink is not paused by one record"
        assert outbox.stats()["kafka"] == SinkStats(pending=1, delivered=5, dead=0)
        clock.advance(1)
        report = dispatcher.dispatch_once()
        assert (report.delivered, report.retried, report.dead) == (0, 1, 0)
        sink.close()
    records = read_all(cfg, cfg.kafka.topics.alerts.name, expected=5, timeout_s=30)
    assert len({r.value for r in records}) == len(records) == 5, "nothing written twice"
