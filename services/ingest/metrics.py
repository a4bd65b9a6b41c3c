"""Prometheus metrics of the ingest service.

Held in an object bound to a registry (the process-wide one by default) so that tests can
run several services in one process, each with a fresh registry.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from services.common.events.schema import METRIC_FIELDS, TRANSACTION_FIELDS

_CONTRACT_FIELDS = frozenset(f.name for f in (*TRANSACTION_FIELDS, *METRIC_FIELDS))
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class IngestMetrics:
    """Counters, gauges and histograms of one ingest service instance."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.events = Counter(
            "anomaly_ingest_events_total",
            "Events consumed and turned into features.",
            registry=registry,
        )
        self.dead_letters = Counter(
            "anomaly_ingest_dead_letters_total",
            "Events rejected to the dead-letter topic, by the contract field at fault "
            "(payload: not an event at all; unknown_field: a field the contract lacks).",
            ["field"],
            registry=registry,
        )
        self.misrouted_events = Counter(
            "anomaly_ingest_misrouted_events_total",
            "Events that arrived on another partition than their entity's first one: the "
            "producer does not key by entity_id, or producers disagree on the partitioner. "
            "Windows stay correct only while one ingest member owns both partitions.",
            registry=registry,
        )
        self.late_events = Counter(
            "anomaly_ingest_late_events_total",
            "Events later than the allowed lateness: scored, not windowed.",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "anomaly_ingest_batch_stage_seconds",
            "Time per micro-batch stage.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_events = Histogram(
            "anomaly_ingest_batch_events",
            "Events per micro-batch.",
            buckets=(1, 10, 100, 1_000, 5_000, 10_000, 20_000, 50_000),
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "anomaly_ingest_consumer_lag",
            "Messages behind the end of each assigned partition.",
            ["partition"],
            registry=registry,
        )
        self.entities = Gauge(
            "anomaly_ingest_entities",
            "Entities whose window state this instance holds.",
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "anomaly_ingest_assigned_partitions",
            "Partitions of `events` owned by this instance.",
            registry=registry,
        )
        self.checkpoint_seconds = Histogram(
            "anomaly_ingest_checkpoint_seconds",
            "Writing changed window state to the changelog.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.restore_seconds = Histogram(
            "anomaly_ingest_restore_seconds",
            "Restoring a partition's state (changelog read + replay) on assignment.",
            buckets=(0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=registry,
        )
        self.online_write_seconds = Histogram(
            "anomaly_ingest_online_write_seconds",
            "One coalesced write of latest rows to the Feast online store.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.online_rows = Counter(
            "anomaly_ingest_online_rows_total",
            "Entity rows written to the online store.",
            registry=registry,
        )
        self.online_write_retries = Counter(
            "anomaly_ingest_online_write_retries_total",
            "Online-store writes that failed and were retried (the store was unreachable).",
            registry=registry,
        )
        self.online_pending_entities = Gauge(
            "anomaly_ingest_online_pending_entities",
            "Entities whose latest row waits for the next online-store write.",
            registry=registry,
        )
        self.replayed_events = Counter(
            "anomaly_ingest_replayed_events_total",
            "Events re-applied to window state after a restore (not re-published).",
            registry=registry,
        )
        self.expired_entities = Counter(
            "anomaly_ingest_expired_entities_total",
            "Entities whose window state was dropped after `idle_state_ttl_s` without events.",
            registry=registry,
        )


def dead_letter_field(field: str | None) -> str:
    """The `field` label of a rejection: a contract field, `payload` or `unknown_field`.

    An unknown field is named by the producer, so using its name as the label would let any
    producer create series without bound; the dead letter's own header still names it.
    """
    if field is None:
        return "payload"
    return field if field in _CONTRACT_FIELDS else "unknown_field"
