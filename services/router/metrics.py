"""Prometheus metrics of the routing service (per-model labels as KServe does)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
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
        self.dead_letters = Counter(
            "anomaly_router_dead_letters_total",
            "Features messages the stream door could not decode, sent to the dead-letter topic.",
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


def observe_many(histogram: Histogram, values: npt.NDArray[np.float64]) -> None:
    """`histogram.observe(v)` for every value, in one pass per batch.

    The stream door observes one latency per decision; 50,000 `observe` calls a second
    (a lock and a bucket walk each) would cost more than the rest of the bookkeeping. The
    client has no batch interface, so this adds the bucket counts and the sum to the same
    value objects `observe` updates (a test compares the exposition with per-value
    `observe`); should a client release rename them, it falls back to `observe`.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values.tolist():
            histogram.observe(v)
        return
    # observe() counts a value in the first bucket whose upper bound is >= it (buckets are
    # stored per interval; exposition accumulates them), the last bound being +Inf.
    index = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    counts = np.bincount(index, minlength=len(bounds))
    total.inc(float(values.sum()))
    for i in np.flatnonzero(counts[: len(bounds)]).tolist():
        buckets[i].inc(int(counts[i]))
