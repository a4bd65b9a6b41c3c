"""Prometheus metrics of alert delivery.

Bound to a registry passed in (the process-wide one by default) so that tests and a
process hosting several dispatchers each get their own series. Every series is labelled by
sink name, because one sink failing (PagerDuty throttling) must not hide behind another
delivering fine (Kafka).
"""

from __future__ import annotations

import threading
import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_DELIVERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, AlertMetrics] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


class AlertMetrics:
    """Counters, gauges and histograms of one outbox and its dispatcher.

    The constructor registers new series (a second one on the same registry fails, as
    prometheus_client does); `bound_to` returns the registry's one instance, so building
    alert delivery twice in a process (restart in tests, CLI tools) is safe.
    """

    @classmethod
    def bound_to(cls, registry: CollectorRegistry = REGISTRY) -> AlertMetrics:
        """The metrics registered on `registry`, registering them on first use."""
        with _SHARED_LOCK:
            metrics = _SHARED.get(registry)
            if metrics is None:
                metrics = _SHARED[registry] = cls(registry)
            return metrics

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.enqueued = Counter(
            "anomaly_alerts_enqueued_total",
            "Alerts made durable in the outbox, per sink that must deliver them.",
            ["sink"],
            registry=registry,
        )
        self.delivered = Counter(
            "anomaly_alerts_delivered_total",
            "Alerts a sink accepted (for PagerDuty: folded into an accepted trigger).",
            ["sink"],
            registry=registry,
        )
        self.failed = Counter(
            "anomaly_alerts_failed_total",
            "Failed delivery attempts; outcome=retry waits for backoff, outcome=dead is final.",
            ["sink", "outcome"],
            registry=registry,
        )
        self.held = Counter(
            "anomaly_alerts_held_total",
            "Alerts held back for grouping (folded into a later PagerDuty update).",
            ["sink"],
            registry=registry,
        )
        self.pending = Gauge(
            "anomaly_alerts_outbox_pending",
            "Alerts in the outbox waiting for a sink.",
            ["sink"],
            registry=registry,
        )
        self.dead = Gauge(
            "anomaly_alerts_outbox_dead",
            "Alerts a sink refused for good (retry with `anomaly alerts retry-dead`).",
            ["sink"],
            registry=registry,
        )
        self.orphaned = Gauge(
            "anomaly_alerts_outbox_orphaned",
            "Pending alerts of a sink name no longer configured: nothing delivers them until "
            "a sink has that name again.",
            ["sink"],
            registry=registry,
        )
        self.suppressed = Gauge(
            "anomaly_alerts_outbox_suppressed",
            "Pending alerts held back by the kill switch or entity suppression (flags); "
            "delivered when the flag is cleared.",
            ["sink"],
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "anomaly_alerts_delivery_seconds",
            "From enqueue to acceptance by the sink (includes retries and grouping holds).",
            ["sink"],
            buckets=_DELIVERY_BUCKETS,
            registry=registry,
        )
        self.pagerduty_events = Counter(
            "anomaly_alerts_pagerduty_events_total",
            "Events API v2 requests by action and outcome (accepted, retry, refused).",
            ["sink", "action", "outcome"],
            registry=registry,
        )
