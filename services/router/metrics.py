"""Prometheus metrics of the routing service (per-model labels as KServe does)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class RouterMetrics:
    """Decisions, anomalies, degraded votes, per-model latency and failures, stream lag."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.decisions = Counter(
            "anomaly_router_decisions_total", "Events decided.", registry=registry
        )
        self.anomalies = Counter(
            "anomaly_router_anomalies_total", "Decisions over their threshold.", registry=registry
        )
        self.degraded = Counter(
            "anomaly_router_degraded_total",
            "Decisions made without a model that failed or timed out.",
            registry=registry,
        )
        self.alerts = Counter(
            "anomaly_router_alerts_total",
            "Alerts handed to the outbox.",
            ["anomaly_type"],
            registry=registry,
        )
        self.model_seconds = Histogram(
            "anomaly_router_model_call_seconds",
            "V2 call latency per model.",
            ["model_name"],
            buckets=_SECONDS,
            registry=registry,
        )
        self.model_failures = Counter(
            "anomaly_router_model_failures_total",
            "Model calls that failed after retries.",
            ["model_name"],
            registry=registry,
        )
        self.cascade_fraction = Histogram(
            "anomaly_router_cascade_transformer_fraction",
            "Share of a batch sent to the Transformer by the cascade.",
            buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "anomaly_router_batch_seconds",
            "Stream batch: consume to commit.",
            buckets=_SECONDS,
            registry=registry,
        )
        self.event_to_decision_seconds = Histogram(
            "anomaly_router_event_to_decision_seconds",
            "From the event's own timestamp to its decision.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "anomaly_router_consumer_lag",
            "Messages behind on `features`.",
            ["partition"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "anomaly_router_config_reloads_total",
            "Configuration reloads by outcome.",
            ["outcome"],
            registry=registry,
        )
