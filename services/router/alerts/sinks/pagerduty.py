"""PagerDuty Events API v2 sink: one incident per entity and anomaly type, paged once per burst.

What is sent, exactly:

* `dedup_key = anomaly:<entity_id>:<anomaly_type>` (entity ids too long for PagerDuty's 255
  characters are replaced by a hash), so all alerts of one entity and type share an incident;
  alerts of no known type (XGBoost down, disabled or in shadow) share `...:unknown`.
* The dispatcher hands this sink the due alerts of one dedup_key at a time (`batch_key`).
  If the key has no open incident, or its last accepted trigger is older than
  `group_window_s`, one `trigger` is sent for the whole batch. Otherwise the batch is held
  in the outbox until the window ends (`HeldForGrouping`), and then goes out as one more
  `trigger` with the same dedup_key, which PagerDuty folds into the open incident as an
  update (no new page). So a key gets at most one trigger per window: a burst of 100 alerts
  that reaches the outbox before the dispatcher runs is one trigger with `count: 100`; a
  burst that trickles in is one trigger (`count: 1`) plus one update (`count: 99`,
  `total_count: 100`) at the end of the window.
* The trigger describes the batch by its highest-scoring alert: summary
  `"<type> on <entity>: score S >= threshold T (N alerts)"`, `source` = entity id,
  `severity` = the most severe of the batch, `timestamp` = latest event time, `class` = type,
  and `custom_details` = {count, total_count, event_id, event_ids (first 20), score,
  threshold, model_scores, explanation, degraded, first_event_ts, last_event_ts,
  entity_id, anomaly_type}.
* When a key with an open incident sees no alert for `resolve_after_s` (and none is
  waiting), a `resolve` with that dedup_key is sent. `resolve_after_s: 0` never resolves.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from services.common.config.model import AlertSinkConfig, PagerDutySink
from services.router.alerts.alert import Alert, most_severe
from services.router.alerts.clock import Clock
from services.router.alerts.errors import DeliveryError, HeldForGrouping, SinkConfigurationError
from services.router.alerts.metrics import AlertMetrics
from services.router.alerts.pagerduty_events import DEDUP_KEY_MAX, ROUTING_KEY_LENGTH, SUMMARY_MAX
from services.router.alerts.sinks.base import AlertSink, KeyValueStore, SinkContext
from services.router.alerts.sinks.http_post import make_client, post_json
from services.router.alerts.sinks.incidents import IncidentBook

log = logging.getLogger(__name__)

CLIENT_NAME = "anomaly-platform"
"""Shown by PagerDuty as the monitoring client that sent the event."""
EVENT_IDS_SHOWN = 20
RESOLVES_PER_TICK = 100


def dedup_key_for(alert: Alert) -> str:
    """`anomaly:<entity>:<type>`; a hash stands in for entity ids that would not fit."""
    key = f"anomaly:{alert.entity_id}:{alert.type_name}"
    if len(key) <= DEDUP_KEY_MAX:
        return key
    digest = hashlib.sha256(alert.entity_id.encode()).hexdigest()
    return f"anomaly:sha256-{digest}:{alert.type_name}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def trigger_event(
    routing_key: str, dedup_key: str, batch: Sequence[Alert], total_count: int
) -> dict[str, Any]:
    """The Events v2 `trigger` that reports `batch` (alerts of one dedup_key)."""
    lead = max(batch, key=lambda a: (a.score, a.decided_at))
    count = len(batch)
    first_ts = min(a.event_ts for a in batch)
    last_ts = max(a.event_ts for a in batch)
    what = lead.type_name if lead.anomaly_type is not None else "anomaly of unknown type"
    summary = (
        f"{what} on {lead.entity_id}: score {lead.score:.3f} >= threshold {lead.threshold:.3f}"
        + (f" ({count} alerts)" if count > 1 else "")
    )
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "client": CLIENT_NAME,
        "payload": {
            "summary": summary[:SUMMARY_MAX],
            "source": lead.entity_id,
            "severity": most_severe([a.severity for a in batch]),
            "timestamp": _iso(last_ts),
            "class": lead.type_name,
            "component": "anomaly-router",
            "custom_details": {
                "count": count,
                "total_count": total_count,
                "event_id": lead.event_id,
                "event_ids": [a.event_id for a in batch[:EVENT_IDS_SHOWN]],
                "score": lead.score,
                "threshold": lead.threshold,
                "model_scores": lead.model_scores,
                "explanation": lead.explanation,
                "degraded": any(a.degraded for a in batch),
                "first_event_ts": _iso(first_ts),
                "last_event_ts": _iso(last_ts),
                "entity_id": lead.entity_id,
                "anomaly_type": lead.type_name,
            },
        },
    }


def resolve_event(routing_key: str, dedup_key: str) -> dict[str, Any]:
    """The Events v2 `resolve` that closes the incident of `dedup_key`."""
    return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key}


def resolve_routing_key(name: str, cfg: PagerDutySink, shared: str | None) -> str:
    """The sink's own routing key, else the shared one; refuse a missing or malformed key."""
    key = cfg.routing_key.get_secret_value() if cfg.routing_key else shared
    if not key or not key.strip():
        raise SinkConfigurationError(
            f"alert sink {name!r} (type pagerduty) has no routing key: set "
            "ANOMALY_ALERTS__ROUTING_KEY (alerts.routing_key), or the sink's routing_key, "
            "to the integration key of a PagerDuty Events API v2 integration"
        )
    if len(key.strip()) != ROUTING_KEY_LENGTH:
        raise SinkConfigurationError(
            f"alert sink {name!r} (type pagerduty): the routing key has {len(key.strip())} "
            f"characters; Events API v2 integration keys have {ROUTING_KEY_LENGTH}"
        )
    return key.strip()


class PagerDutyAlertSink(AlertSink):
    """Triggers, groups and resolves PagerDuty incidents (see the module docstring)."""

    def __init__(
        self,
        name: str,
        cfg: PagerDutySink,
        routing_key: str,
        *,
        state: KeyValueStore,
        clock: Clock,
        metrics: AlertMetrics,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(name)
        self._cfg = cfg
        self._routing_key = routing_key
        self._book = IncidentBook(state)
        self._clock = clock
        self._metrics = metrics
        self._client = client or make_client(cfg.timeout_s)

    @classmethod
    def from_config(cls, name: str, cfg: AlertSinkConfig, ctx: SinkContext) -> PagerDutyAlertSink:
        """Build from a `type: pagerduty` section; raises SinkConfigurationError without key."""
        if not isinstance(cfg, PagerDutySink):
            raise TypeError(f"expected a pagerduty sink section, got {cfg.type}")
        shared = ctx.alerts.routing_key.get_secret_value() if ctx.alerts.routing_key else None
        return cls(
            name,
            cfg,
            resolve_routing_key(name, cfg, shared),
            state=ctx.state(name),
            clock=ctx.clock,
            metrics=ctx.metrics,
        )

    @property
    def open_keys(self) -> int:
        """Dedup keys the sink currently remembers (bounded by recent activity)."""
        return len(self._book)

    def batch_key(self, alert: Alert) -> str:
        """One batch per incident."""
        return dedup_key_for(alert)

    def write(self, batch: Sequence[Alert]) -> None:
        """Trigger (or update) the incident of the batch's key, or hold it for the window."""
        key = dedup_key_for(batch[0])
        if any(dedup_key_for(a) != key for a in batch):
            raise ValueError("a PagerDuty batch must hold alerts of one dedup_key")
        now = self._clock()
        incident = self._book.get(key)
        incident.last_alert_at = now
        incident.unsent = True
        window_end = incident.last_trigger_at + self._cfg.group_window_s
        if incident.triggered and now < window_end:
            self._book.save(key, incident)
            raise HeldForGrouping(window_end)
        total = incident.alerts_total + len(batch)
        try:
            self._send(trigger_event(self._routing_key, key, batch, total), "trigger")
        except DeliveryError as exc:
            incident.unsent = exc.retryable  # a refused batch is dead: nothing waits any more
            self._book.save(key, incident)
            raise
        incident.triggered = True
        incident.last_trigger_at = now
        incident.alerts_total = total
        incident.unsent = False
        self._book.save(key, incident)

    def given_up(self, batch: Sequence[Alert]) -> None:
        """Nothing of the key waits any more: its incident may resolve (or be forgotten)
        again. Without this, an alert that timed out left `unsent` set for good, and the
        incident stayed open in PagerDuty until that entity and type alerted again."""
        for key in {dedup_key_for(a) for a in batch}:
            incident = self._book.get(key)
            if incident.unsent:
                incident.unsent = False
                self._book.save(key, incident)

    def tick(self) -> None:
        """Resolve quiet incidents; forget keys that need no more memory."""
        now = self._clock()
        resolve_after = self._cfg.resolve_after_s
        if resolve_after > 0:
            for key in self._book.due_resolves(now, resolve_after, RESOLVES_PER_TICK):
                try:
                    self._send(resolve_event(self._routing_key, key), "resolve")
                except DeliveryError as exc:
                    if exc.retryable:
                        raise  # the dispatcher pauses this sink and ticks again later
                    log.error(
                        "PagerDuty refused to resolve %s; the incident stays open: %s",
                        key,
                        exc,
                        extra={"sink": self.name, "dedup_key": key, "status": exc.status},
                    )
                self._book.forget(key)
        keep = max(self._cfg.group_window_s, resolve_after)
        for key in self._book.idle(now, keep, include_open=resolve_after == 0):
            self._book.forget(key)

    def _send(self, event: dict[str, Any], action: str) -> None:
        try:
            post_json(self._client, self._cfg.url, orjson.dumps(event), clock=self._clock)
        except DeliveryError as exc:
            outcome = "retry" if exc.retryable else "refused"
            self._metrics.pagerduty_events.labels(self.name, action, outcome).inc()
            raise
        self._metrics.pagerduty_events.labels(self.name, action, "accepted").inc()

    def close(self) -> None:
        """Close the connection pool; open incidents stay remembered in the outbox."""
        self._client.close()
