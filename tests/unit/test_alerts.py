"""Alerts without servers: the model, severity, backoff, the Events v2 contract, the outbox,
grouping state and sink construction from configuration."""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from services.cli.alerts_cmd import alerts_app, pagerduty_receiver
from services.common.anomaly_types import AnomalyType
from services.common.config import ConfigError
from services.common.config.model import (
    AlertsConfig,
    KafkaConfig,
    PagerDutySink,
    WebhookSink,
)
from services.router.alerts import (
    Alert,
    AlertDelivery,
    AlertMetrics,
    Dispatcher,
    SinkConfigurationError,
    severity_for,
)
from services.router.alerts.backoff import Backoff
from services.router.alerts.clock import ManualClock
from services.router.alerts.outbox import Outbox
from services.router.alerts.pagerduty_events import validate_event
from services.router.alerts.sinks.base import AlertSink
from services.router.alerts.sinks.http_post import parse_retry_after
from services.router.alerts.sinks.incidents import Incident, IncidentBook, MemoryStore
from services.router.alerts.sinks.pagerduty import dedup_key_for, trigger_event
from services.router.alerts.sinks.webhook import webhook_body

KEY = "k" * 32
T0_MS = 1_767_571_200_000


def make_alert(i: int = 0, entity: str = "acct-1", **changes: Any) -> Alert:
    fields: dict[str, Any] = {
        "event_id": f"ev-{i}",
        "entity_id": entity,
        "anomaly_type": AnomalyType.PRICE_SPIKE,
        "score": 0.96,
        "threshold": 0.9,
        "model_scores": {"xgboost": 0.97, "isolation_forest": 0.91},
        "severity": "error",
        "event_ts": T0_MS + i,
        "decided_at": T0_MS + i + 5,
        "explanation": {"top_features": [["amount_z_1h", 4.2]]},
        "degraded": False,
    }
    fields.update(changes)
    return Alert(**fields)


def valid_trigger(**payload_changes: Any) -> dict[str, Any]:
    payload = {"summary": "s", "source": "acct-1", "severity": "error"}
    payload.update(payload_changes)
    return {"routing_key": KEY, "event_action": "trigger", "dedup_key": "d", "payload": payload}


# --------------------------------------------------------------------------- model


def test_alert_json_round_trip() -> None:
    alert = make_alert(7, degraded=True)
    assert Alert.from_json(alert.to_json()) == alert
    assert Alert.from_json(alert.to_json().decode()) == alert


def test_alert_refuses_scores_outside_unit_interval() -> None:
    with pytest.raises(ValidationError):
        make_alert(score=1.2)


@pytest.mark.parametrize(
    ("score", "kind", "expected"),
    [
        (0.995, AnomalyType.VOLUME_BURST, "critical"),
        (0.96, AnomalyType.VOLUME_BURST, "error"),
        (0.91, AnomalyType.VOLUME_BURST, "warning"),
        (0.5, AnomalyType.VOLUME_BURST, "info"),
        (0.5, AnomalyType.PRICE_SPIKE, "error"),  # floor of the type
        (0.995, AnomalyType.PRICE_SPIKE, "critical"),  # a floor never lowers
    ],
)
def test_severity_from_score_with_type_floor(
    score: float, kind: AnomalyType, expected: str
) -> None:
    cfg = AlertsConfig(severity_floor={AnomalyType.PRICE_SPIKE: "error"})
    assert severity_for(score, kind, cfg) == expected


# --------------------------------------------------------------------------- backoff


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0, rng=random.Random(3))
    for attempts, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0), (10_000, 8.0)]:
        delays = [backoff.delay(attempts) for _ in range(50)]
        assert all(base / 2 <= d <= base for d in delays)
        assert len(set(delays)) > 1, "no jitter"


def test_retry_after_is_a_floor() -> None:
    backoff = Backoff(initial_s=0.01, max_s=0.1)
    assert backoff.delay(1, retry_after_s=2.0) == 2.0
    assert backoff.delay(1, retry_after_s=0.0) <= 0.01


def test_retry_after_header_in_seconds_or_http_date() -> None:
    now = 1_767_571_200.0
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after("0.5", now) == 0.5
    date = format_datetime(datetime.fromtimestamp(now + 30, tz=UTC), usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(30.0)
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None


# --------------------------------------------------------------------------- Events v2 contract


def test_valid_events_pass() -> None:
    assert validate_event(valid_trigger(timestamp="2026-01-05T00:00:00.000+00:00")) == []
    assert validate_event({"routing_key": KEY, "event_action": "resolve", "dedup_key": "d"}) == []


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        ({**valid_trigger(), "routing_key": ""}, "'routing_key' is missing"),
        ({**valid_trigger(), "routing_key": "short"}, "'routing_key' must be 32"),
        ({**valid_trigger(), "event_action": "page"}, "'event_action' is invalid"),
        (valid_trigger(severity="fatal"), "'payload.severity' is invalid"),
        (valid_trigger(summary="x" * 1025), "longer than 1024"),
        (valid_trigger(source=""), "'payload.source' is missing"),
        (valid_trigger(timestamp="yesterday"), "'payload.timestamp'"),
        ({**valid_trigger(), "payload": None}, "'payload' is missing"),
        ({**valid_trigger(), "dedup_key": "d" * 256}, "longer than 255"),
        ({"routing_key": KEY, "event_action": "resolve"}, "'dedup_key' is required for resolve"),
        ([], "not a JSON object"),
    ],
)
def test_invalid_events_name_their_problem(event: object, fragment: str) -> None:
    errors = validate_event(event)
    assert any(fragment in e for e in errors), errors


def test_trigger_events_satisfy_the_contract() -> None:
    batch = [make_alert(i, score=0.9 + i / 1000) for i in range(30)]
    event = trigger_event(KEY, dedup_key_for(batch[0]), batch, total_count=45)
    assert validate_event(event) == []
    details = event["payload"]["custom_details"]
    assert details["count"] == 30
    assert details["total_count"] == 45
    assert details["event_id"] == "ev-29"  # the highest score leads
    assert len(details["event_ids"]) == 20
    assert details["model_scores"] == {"xgboost": 0.97, "isolation_forest": 0.91}
    assert "(30 alerts)" in event["payload"]["summary"]


def test_dedup_key_is_per_entity_and_type_and_fits() -> None:
    assert dedup_key_for(make_alert()) == "anomaly:acct-1:price_spike"
    assert dedup_key_for(make_alert(anomaly_type=AnomalyType.SLOW_DRIFT)) != dedup_key_for(
        make_alert()
    )
    long_key = dedup_key_for(make_alert(entity="e" * 400))
    assert len(long_key) <= 255
    assert long_key == dedup_key_for(make_alert(entity="e" * 400))


def test_an_alert_of_unknown_type_is_filed_as_unknown_not_under_a_guessed_type(
    tmp_path: Path,
) -> None:
    """With XGBoost down, disabled or in shadow no type is known. Such alerts used to be
    labelled price_spike: they joined the entity's real price_spike incident and took its
    severity floor. Now they are their own kind, kept and paged like any other."""
    unknown = make_alert(1, anomaly_type=None, score=0.95)
    assert Alert.from_json(unknown.to_json()) == unknown
    assert b'"anomaly_type":null' in unknown.to_json()
    assert dedup_key_for(unknown) == "anomaly:acct-1:unknown"
    assert dedup_key_for(unknown) != dedup_key_for(make_alert(1))
    cfg = AlertsConfig(severity_floor={AnomalyType.PRICE_SPIKE: "critical"})
    assert severity_for(0.95, None, cfg) == "error"  # by score alone: no type, no floor
    assert severity_for(0.95, AnomalyType.PRICE_SPIKE, cfg) == "critical"
    event = trigger_event(KEY, dedup_key_for(unknown), [unknown], total_count=1)
    assert validate_event(event) == []
    assert event["payload"]["summary"].startswith("anomaly of unknown type on acct-1: ")
    assert event["payload"]["class"] == "unknown"
    with Outbox(tmp_path / "o.db", ["a"]) as outbox:
        # The same event alerting with its type known later (a replay once XGBoost is back)
        # is another alert, as two types of one event are.
        assert outbox.enqueue([unknown, make_alert(1)]) == 2
        assert outbox.enqueue([unknown]) == 0
        assert [e.alert.anomaly_type for e in outbox.due("a", limit=10)] == [
            None,
            AnomalyType.PRICE_SPIKE,
        ]


def test_webhook_body_is_an_object_with_the_alerts() -> None:
    import orjson

    batch = [make_alert(1), make_alert(2)]
    body = orjson.loads(webhook_body(batch))
    assert [Alert.model_validate(a) for a in body["alerts"]] == batch


# --------------------------------------------------------------------------- outbox


def test_outbox_keeps_state_per_sink(tmp_path: Path) -> None:
    clock = ManualClock()
    with Outbox(tmp_path / "o.db", ["a", "b"], clock=clock) as outbox:
        assert outbox.enqueue([make_alert(1), make_alert(2)]) == 2
        assert outbox.enqueue([make_alert(1)]) == 0, "a replayed alert is a duplicate"
        due = outbox.due("a", limit=10)
        assert [e.alert.event_id for e in due] == ["ev-1", "ev-2"]
        outbox.mark_delivered("a", [due[0].alert_id])
        outbox.mark_retry(
            "a", [due[1].alert_id], next_attempt_at=clock() + 5, status=503, error="x"
        )
        assert outbox.due("a", limit=10) == []
        clock.advance(5)
        [again] = outbox.due("a", limit=10)
        assert again.attempts == 1 and again.first_failure_at == clock.now - 5
        outbox.mark_dead("a", [again.alert_id], status=400, error="invalid event")
        assert outbox.stats()["a"].dead == 1
        assert outbox.stats()["b"].pending == 2, "sink b is not held back by sink a"
        [dead] = outbox.dead("a")
        assert (dead.event_id, dead.last_status, dead.last_error) == ("ev-2", 400, "invalid event")
        assert outbox.retry_dead("a") == 1
        assert [e.alert.event_id for e in outbox.due("a", limit=10)] == ["ev-2"]


def test_outbox_prunes_delivered_alerts_after_retention(tmp_path: Path) -> None:
    clock = ManualClock()
    with Outbox(tmp_path / "o.db", ["a"], clock=clock) as outbox:
        outbox.enqueue([make_alert(1), make_alert(2)])
        first = outbox.due("a", limit=1)
        outbox.mark_delivered("a", [first[0].alert_id])
        clock.advance(100)
        assert outbox.prune(retention_s=50) == 1
        assert outbox.stats()["a"].pending == 1
        assert outbox.stats()["a"].delivered == 0
        assert outbox.enqueue([make_alert(1)]) == 1, "pruned alerts are no longer duplicates"


def test_outbox_sink_state_survives_reopen(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        outbox.state_for("pd").put("k1", "v1")
        outbox.state_for("pd").put("k1", "v2")
        outbox.state_for("pd").put("k2", "v")
        outbox.state_for("pd").delete("k2")
    with Outbox(tmp_path / "o.db") as outbox:
        assert outbox.state_for("pd").load() == {"k1": "v2"}
        assert outbox.state_for("other").load() == {}


def test_incident_book_resolves_only_quiet_open_incidents() -> None:
    store = MemoryStore()
    book = IncidentBook(store)
    book.save("open", Incident(triggered=True, last_trigger_at=0, last_alert_at=10))
    book.save("waiting", Incident(triggered=True, last_alert_at=0, unsent=True))
    book.save("never-opened", Incident(last_alert_at=0))
    assert book.due_resolves(now=100, resolve_after_s=90, limit=10) == ["open"]
    assert book.due_resolves(now=99, resolve_after_s=90, limit=10) == []
    assert IncidentBook(store).get("open").last_alert_at == 10, "state is durable"
    assert book.idle(now=100, keep_s=90, include_open=False) == ["never-opened"]
    assert sorted(book.idle(now=100, keep_s=90, include_open=True)) == ["never-opened", "open"]


# --------------------------------------------------------------------------- dispatcher


def closed_port_url() -> str:
    """A URL on which nothing listens: connections are refused (a real network error)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_unreachable_sink_is_retried_then_given_up_and_kept_dead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    cfg = AlertsConfig(
        sinks=[WebhookSink(type="webhook", url=closed_port_url(), timeout_s=1)],
        outbox_path=str(tmp_path / "o.db"),
        retry_initial_s=1,
        retry_max_s=4,
        give_up_after_s=30,
    )
    registry = CollectorRegistry()
    with AlertDelivery.from_config(
        cfg, KafkaConfig(), metrics=AlertMetrics(registry), clock=clock
    ) as delivery:
        delivery.enqueue([make_alert(1)])
        assert delivery.dispatch_once().retried == 1
        assert delivery.dispatch_once().retried == 0, "paused until the backoff ends"
        for _ in range(10):
            clock.advance(4)
            caplog.clear()
            delivery.dispatch_once()
            if delivery.outbox.stats()["webhook"].dead:
                break
        # The pass that gave up says so, and does not also promise a retry.
        said = [r.getMessage() for r in caplog.records]
        assert any("refused 1 alert(s) for good" in m for m in said), said
        assert not any("retrying in" in m for m in said), said
        assert delivery.outbox.stats()["webhook"].dead == 1
        [dead] = delivery.outbox.dead()
        assert dead.last_status is None and "gave up" in (dead.last_error or "")
        assert dead.attempts >= 5
    labels = {"sink": "webhook", "outcome": "dead"}
    assert registry.get_sample_value("anomaly_alerts_failed_total", labels) == 1


class BuggySink(AlertSink):
    """A sink with a bug: fails with an unexpected exception twice, then works."""

    def __init__(self) -> None:
        super().__init__("buggy")
        self.calls = 0
        self.delivered: list[Alert] = []

    def write(self, batch: Sequence[Alert]) -> None:
        self.calls += 1
        if self.calls <= 2:
            raise RuntimeError("oops")
        self.delivered.extend(batch)


def test_a_sink_bug_delays_alerts_but_never_drops_them(tmp_path: Path) -> None:
    clock = ManualClock()
    cfg = AlertsConfig(sinks=[], retry_initial_s=1, retry_max_s=1)
    sink = BuggySink()
    with Outbox(tmp_path / "o.db", ["buggy"], clock=clock) as outbox:
        metrics = AlertMetrics(CollectorRegistry())
        dispatcher = Dispatcher(outbox, [sink], cfg, metrics=metrics, clock=clock)
        outbox.enqueue([make_alert(1), make_alert(2)])
        for _ in range(3):
            dispatcher.dispatch_once()
            clock.advance(1)
        assert [a.event_id for a in sink.delivered] == ["ev-1", "ev-2"]
        assert outbox.stats()["buggy"].delivered == 2


# --------------------------------------------------------------------------- configuration


def test_pagerduty_sink_without_routing_key_is_a_clear_configuration_error(
    tmp_path: Path,
) -> None:
    cfg = AlertsConfig(sinks=[PagerDutySink(type="pagerduty")], outbox_path=str(tmp_path / "o.db"))
    with pytest.raises(SinkConfigurationError) as caught:
        AlertDelivery.from_config(cfg, KafkaConfig())
    message = str(caught.value)
    assert "'pagerduty'" in message and "no routing key" in message
    assert "ANOMALY_ALERTS__ROUTING_KEY" in message
    assert isinstance(caught.value, ConfigError), "the CLI reports it as one line, exit code 2"


def test_routing_key_of_wrong_length_is_refused(tmp_path: Path) -> None:
    cfg = AlertsConfig(
        sinks=[PagerDutySink(type="pagerduty", routing_key=SecretStr("abc"))],
        outbox_path=str(tmp_path / "o.db"),
    )
    with pytest.raises(SinkConfigurationError, match="3 characters"):
        AlertDelivery.from_config(cfg, KafkaConfig())


def test_shared_routing_key_serves_pagerduty_sinks(tmp_path: Path) -> None:
    cfg = AlertsConfig(
        sinks=[PagerDutySink(type="pagerduty")],
        routing_key=SecretStr(KEY),
        outbox_path=str(tmp_path / "o.db"),
    )
    with AlertDelivery.from_config(cfg, KafkaConfig()) as delivery:
        assert [s.name for s in delivery.sinks] == ["pagerduty"]


def test_sink_names_default_to_type_and_must_be_unique() -> None:
    url = "http://127.0.0.1:1/hook"
    cfg = AlertsConfig(
        sinks=[
            WebhookSink(type="webhook", url=url),
            WebhookSink(type="webhook", url=url),
            PagerDutySink(type="pagerduty", name="pd-prod"),
        ]
    )
    assert [n for n, _ in cfg.named_sinks()] == ["webhook", "webhook-2", "pd-prod"]
    with pytest.raises(ValidationError, match="unique"):
        AlertsConfig(
            sinks=[WebhookSink(type="webhook", url=url, name="x"), {"type": "kafka", "name": "x"}]
        )


def test_adding_a_sink_of_a_type_keeps_the_name_of_the_first() -> None:
    """A second sink of a type renamed the first (`pagerduty` -> `pagerduty-1`), and the
    alerts queued for `pagerduty` in the outbox were delivered by nothing after a restart."""
    first = PagerDutySink(type="pagerduty")
    one = AlertsConfig(sinks=[first])
    two = AlertsConfig(sinks=[first, PagerDutySink(type="pagerduty", url="http://pd2/v2")])
    named_first = AlertsConfig(sinks=[PagerDutySink(type="pagerduty", name="pd-eu"), first])
    assert [n for n, _ in one.named_sinks()] == ["pagerduty"]
    assert [n for n, _ in two.named_sinks()] == ["pagerduty", "pagerduty-2"]
    assert [n for n, _ in named_first.named_sinks()] == ["pd-eu", "pagerduty"]


def test_resolve_cannot_come_before_the_grouping_window_ends() -> None:
    with pytest.raises(ValidationError, match="resolve_after_s"):
        PagerDutySink(type="pagerduty", group_window_s=60, resolve_after_s=30)
    assert (
        PagerDutySink(type="pagerduty", group_window_s=60, resolve_after_s=0).resolve_after_s == 0
    )


# --------------------------------------------------------------------------- CLI


def cli() -> typer.Typer:
    """The commands as the lead registers them in services/cli/main.py."""
    app = typer.Typer()
    app.command("pagerduty-receiver")(pagerduty_receiver)
    app.add_typer(alerts_app, name="alerts")
    return app


def test_outbox_commands_show_and_retry_dead_alerts(tmp_path: Path) -> None:
    outbox_path = tmp_path / "outbox.db"
    config = tmp_path / "platform.yaml"
    config.write_text(f"alerts:\n  outbox_path: {outbox_path}\n")
    with Outbox(outbox_path, ["kafka"]) as outbox:
        outbox.enqueue([make_alert(1), make_alert(2)])
        [first, _] = outbox.due("kafka", limit=10)
        outbox.mark_dead("kafka", [first.alert_id], status=None, error="MSG_SIZE_TOO_LARGE")

    shown = CliRunner().invoke(cli(), ["alerts", "outbox", "-c", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "pending=1" in shown.output and "dead=1" in shown.output
    assert "event=ev-1" in shown.output and "MSG_SIZE_TOO_LARGE" in shown.output

    retried = CliRunner().invoke(cli(), ["alerts", "retry-dead", "-c", str(config)])
    assert retried.exit_code == 0, retried.output
    assert retried.output.startswith("1 ")
    with Outbox(outbox_path) as outbox:
        assert outbox.stats()["kafka"].pending == 2


def test_outbox_command_without_an_outbox_is_a_user_error(tmp_path: Path) -> None:
    config = tmp_path / "platform.yaml"
    config.write_text(f"alerts:\n  outbox_path: {tmp_path / 'missing.db'}\n")
    result = CliRunner().invoke(cli(), ["alerts", "outbox", "-c", str(config)])
    assert result.exit_code == 2
    assert "no outbox at" in result.output
    assert not (tmp_path / "missing.db").exists(), "inspecting must not create an outbox"


def test_receiver_command_documents_its_options() -> None:
    result = CliRunner().invoke(cli(), ["pagerduty-receiver", "--help"])
    assert result.exit_code == 0
    assert "--port" in result.output and "/v2/enqueue" in result.output


def test_alerts_of_a_sink_no_longer_configured_can_be_handed_to_another(tmp_path: Path) -> None:
    outbox_path = tmp_path / "outbox.db"
    config = tmp_path / "platform.yaml"
    config.write_text(
        f"alerts:\n  outbox_path: {outbox_path}\n  sinks:\n    - type: kafka\n      name: bus\n"
    )
    with Outbox(outbox_path, ["old-bus"]) as outbox:
        outbox.enqueue([make_alert(i) for i in range(4)])
        due = outbox.due("old-bus", limit=10)
        outbox.mark_delivered("old-bus", [due[0].alert_id])
        outbox.mark_dead("old-bus", [due[1].alert_id], status=413, error="too large")
        outbox.mark_retry("old-bus", [due[2].alert_id], next_attempt_at=1e12, status=500,
                          error="later")  # fmt: skip
        outbox.state_put("old-bus", "incident", "open")
    with Outbox(outbox_path, ["old-bus", "bus"]) as outbox:
        outbox.enqueue([make_alert(9)])  # queued for both names while both were configured

    shown = CliRunner().invoke(cli(), ["alerts", "outbox", "-c", str(config)])
    assert "old-bus" in shown.output and "NOT CONFIGURED" in shown.output

    refused = CliRunner().invoke(cli(), ["alerts", "reassign", "bus", "old-bus", "-c", str(config)])
    assert refused.exit_code == 2 and "not a configured sink" in refused.output
    moved = CliRunner().invoke(cli(), ["alerts", "reassign", "old-bus", "bus", "-c", str(config)])
    assert moved.exit_code == 0, moved.output
    assert moved.output.startswith("3 ") and "1 left under old-bus" in moved.output

    with Outbox(outbox_path) as outbox:
        stats = outbox.stats()
        assert stats["bus"].pending == 3 and stats["bus"].dead == 1  # 2 moved + its own
        assert stats["old-bus"].delivered == 1 and stats["old-bus"].pending == 1
        due = outbox.due("bus", limit=10)
        assert sorted(e.alert.event_id for e in due) == ["ev-2", "ev-3", "ev-9"]
        assert all(e.attempts == 0 for e in due), "moved alerts start afresh"
        assert outbox.state_load("bus") == {"incident": "open"}
