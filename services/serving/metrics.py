"""Prometheus metrics of the model servers, with `model_name` and `model_version` labels.

Registered on the process-wide registry, which KServe's own `/metrics` serves, so one scrape
gets both KServe's request metrics and ours; an injectable registry keeps tests independent.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServingMetrics:
    """Per-model request and batch figures."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ["model_name", "model_version"]
        self.request_seconds = Histogram(
            "anomaly_serving_request_seconds",
            "Request latency inside the model server.",
            [*labels, "runtime"],
            buckets=_SECONDS,
            registry=registry,
        )
        self.rows = Counter(
            "anomaly_serving_rows_total", "Rows scored.", [*labels, "runtime"], registry=registry
        )
        self.batch_rows = Histogram(
            "anomaly_serving_batch_rows",
            "Rows per model call after dynamic batching.",
            labels,
            buckets=(1, 8, 64, 256, 1024, 4096, 16384, 65536),
            registry=registry,
        )
        self.batch_requests = Histogram(
            "anomaly_serving_batch_requests",
            "Requests coalesced into one model call.",
            labels,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "anomaly_serving_batch_seconds",
            "Model call duration.",
            labels,
            buckets=_SECONDS,
            registry=registry,
        )

    def observe_request(
        self, model: str, version: str, runtime: str, rows: int, seconds: float
    ) -> None:
        """One answered request."""
        self.request_seconds.labels(model, version, runtime).observe(seconds)
        self.rows.labels(model, version, runtime).inc(rows)

    def observe_batch(
        self, model: str, version: str, requests: int, rows: int, seconds: float
    ) -> None:
        """One model call made by the batcher."""
        self.batch_rows.labels(model, version).observe(rows)
        self.batch_requests.labels(model, version).observe(requests)
        self.batch_seconds.labels(model, version).observe(seconds)
