"""Live view of a running pipeline, read from its topics and its services' /metrics.

Used by the main job (`scripts/run_local.py`) and the end-to-end benchmark. It reads the
output topics like any downstream consumer would (its own consumer group, from the end),
so what it reports is what a user of the platform sees: how many events came out as
feature vectors, how long after their event time, and how many were dead-lettered.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Self

import numpy as np
import orjson
from confluent_kafka import Consumer, Message, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from services.common.config import PlatformConfig
from services.common.decision_summaries import DecisionSummary, decode_summaries
from services.common.features.messages import HEADER_DTYPE, HEADER_SIZE

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """Counters since the monitor started, and latency over the last interval."""

    elapsed_s: float = 0.0
    generated: int = 0
    generated_per_s: float = 0.0
    injected_anomalies: int = 0
    features: int = 0
    features_per_s: float = 0.0
    dead_letters: int = 0
    consumer_lag: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    """p50/p99 of event time to feature publication over the last interval."""


def percentiles(values: list[np.ndarray]) -> dict[str, float]:
    """p50/p99 of concatenated samples (empty -> {})."""
    if not values:
        return {}
    data = np.concatenate(values)
    if data.size == 0:
        return {}
    p50, p99 = np.percentile(data, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(data.max())}


def scrape(url: str, names: set[str]) -> dict[str, float]:
    """Sum of samples per metric name on a Prometheus endpoint ({} when unreachable)."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


class TopicTail:
    """Reads some topics from their current end on a background thread, like any downstream
    consumer (its own group, nothing committed); subclasses handle each consumed batch."""

    def __init__(self, config: PlatformConfig, topics: tuple[str, ...], name: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": config.kafka.bootstrap_servers,
                "group.id": f"anomaly-{name}-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 50,
            }
        )
        self._topics = topics
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Self:
        """Start consuming from the current end of the topics: the end offsets are read now,
        not left to librdkafka's `OFFSET_END` (looked up on the first fetch, later), so a
        reader that counts events in against decisions out misses none produced after this."""
        assignment = []
        for topic in self._topics:
            meta = self._consumer.list_topics(topic, timeout=10).topics[topic]
            for p in meta.partitions:
                marks = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10, cached=False
                )
                if marks is None:
                    raise TimeoutError(f"no end offset for {topic}[{p}] from the broker")
                assignment.append(TopicPartition(topic, p, marks[1]))
        self._consumer.assign(assignment)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop consuming and close the consumer."""
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            msgs = self._consumer.consume(num_messages=20_000, timeout=0.2)
            records = [m for m in msgs if m.error() is None]
            if records:
                self._handle(records)

    def _handle(self, msgs: list[Message]) -> None:
        raise NotImplementedError


def decisions_and_labels(
    msgs: list[Message], scores_topic: str
) -> tuple[list[DecisionSummary], list[str], list[str]]:
    """A batch read from `scores` and `events.labels`: the decisions' summaries, the event ids
    labelled as injected anomalies, and why each message of either topic that does not
    decode was left out (a reader counts and shows them; it must not die on one)."""
    values = []
    labels = []
    unreadable = []
    for msg in msgs:
        value = msg.value() or b""
        if msg.topic() == scores_topic:
            values.append(value)
            continue
        try:
            labels.append(str(orjson.loads(value)["event_id"]))
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
            unreadable.append(f"{msg.topic()}: not a label ({exc!r})")
    decisions, bad_decisions = decode_summaries(values)
    unreadable += [f"{scores_topic}: {reason}" for reason in bad_decisions]
    if unreadable:
        log.warning(
            "messages left out by a pipeline reader",
            extra={"count": len(unreadable), "first": unreadable[0]},
        )
    return decisions, labels, unreadable


class PipelineMonitor(TopicTail):
    """Consumes `features` and `events.dlq` from their ends and keeps running figures."""

    def __init__(self, config: PlatformConfig, ingest_metrics_url: str | None = None) -> None:
        topics = config.kafka.topics
        super().__init__(config, (topics.features.name, topics.dlq.name), "monitor")
        self._ingest_metrics_url = ingest_metrics_url
        self._started = time.monotonic()
        self._features = 0
        self._dead = 0
        self._lat: list[np.ndarray] = []
        self._all_lat: list[np.ndarray] = []
        self._last: tuple[float, int, int] = (self._started, 0, 0)
        self.generated = 0
        self.generated_per_s = 0.0
        self.injected = 0

    def _handle(self, msgs: list[Message]) -> None:
        features_topic = self._topics[0]
        values = [(m.value() or b"")[:HEADER_SIZE] for m in msgs if m.topic() == features_topic]
        dead = len(msgs) - len(values)
        now_ms = time.time() * 1000.0
        lat = np.empty(0)
        if values:
            header = np.frombuffer(b"".join(values), dtype=HEADER_DTYPE, count=len(values))
            lat = now_ms - header["ts"].astype(np.float64)
        with self._lock:
            self._features += len(values)
            self._dead += dead
            self._lat.append(lat)

    def snapshot(self) -> Snapshot:
        """Figures since the start; latency and rates over the interval since the last call."""
        now = time.monotonic()
        with self._lock:
            lat, self._lat = self._lat, []
            features, dead = self._features, self._dead
        self._all_lat.extend(lat)
        last_t, last_features, _ = self._last
        interval = max(now - last_t, 1e-6)
        self._last = (now, features, dead)
        snap = Snapshot(
            elapsed_s=now - self._started,
            generated=self.generated,
            generated_per_s=self.generated_per_s,
            injected_anomalies=self.injected,
            features=features,
            features_per_s=(features - last_features) / interval,
            dead_letters=dead,
            latency_ms=percentiles(lat),
        )
        if self._ingest_metrics_url:
            lag = scrape(self._ingest_metrics_url, {"anomaly_ingest_consumer_lag"})
            snap.consumer_lag = lag.get("anomaly_ingest_consumer_lag")
        return snap

    def overall_latency(self) -> dict[str, float]:
        """Event-to-features latency over the whole run."""
        with self._lock:
            pending = list(self._lat)
        return percentiles([*self._all_lat, *pending])


def format_snapshot(s: Snapshot) -> str:
    """One line for a terminal."""
    lat = s.latency_ms
    latency = (
        f"p50 {lat['p50']:6.0f} ms  p99 {lat['p99']:6.0f} ms"
        if lat
        else "p50      - ms  p99      - ms"
    )
    lag = f"{s.consumer_lag:>8,.0f}" if s.consumer_lag is not None else "       -"
    return (
        f"[{s.elapsed_s:6.1f}s] generated {s.generated:>10,} ({s.generated_per_s:>8,.0f}/s)"
        f" | features {s.features:>10,} ({s.features_per_s:>8,.0f}/s) lag {lag}"
        f" | event->features {latency} | dlq {s.dead_letters:,}"
        f" | injected anomalies {s.injected_anomalies:,}"
    )


@dataclass
class DecisionSnapshot:
    """Decisions since the monitor started, scored against the generator's labels."""

    decisions: int = 0
    decisions_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    """Event time to decision, over the last interval."""
    alerts_by_type: dict[str, int] = field(default_factory=dict)
    degraded: int = 0
    unreadable: int = 0
    """`scores` and `events.labels` messages that did not decode (left out, counted)."""
    tpr: float | None = None
    fpr: float | None = None


class DecisionMonitor(TopicTail):
    """Reads `scores` and `events.labels` from their ends: throughput, latency, TPR/FPR.

    Labels say which event ids are injected anomalies (absence = normal), so every decided
    event counts as a true/false positive/negative once its label had the chance to arrive.
    """

    def __init__(self, config: PlatformConfig) -> None:
        topics = config.kafka.topics
        super().__init__(config, (topics.scores.name, topics.labels.name), "decision-monitor")
        self._labels: set[str] = set()
        self._flagged: set[str] = set()
        self._decided = 0
        self._degraded = 0
        self._unreadable = 0
        self._alerts: dict[str, int] = {}
        self._lat: list[float] = []
        self._all_lat: list[float] = []
        self._last = (time.monotonic(), 0)

    def _handle(self, msgs: list[Message]) -> None:
        decisions, labels, unreadable = decisions_and_labels(msgs, self._topics[0])
        with self._lock:
            self._labels.update(labels)
            self._decided += len(decisions)
            self._unreadable += len(unreadable)
            for d in decisions:
                self._degraded += d.degraded
                self._lat.append(d.decided_at - d.ts)
                if d.anomalous:
                    self._flagged.add(d.event_id)
                if d.alert:
                    kind = d.anomaly_type or "unknown"
                    self._alerts[kind] = self._alerts.get(kind, 0) + 1

    def snapshot(self) -> DecisionSnapshot:
        """Counts since the start; rate and latency over the interval since the last call."""
        now = time.monotonic()
        with self._lock:
            lat, self._lat = self._lat, []
            decided = self._decided
            true_pos = len(self._flagged & self._labels)
            positives = len(self._labels)
            false_pos = len(self._flagged) - true_pos
            snap = DecisionSnapshot(
                decisions=decided,
                alerts_by_type=dict(self._alerts),
                degraded=self._degraded,
                unreadable=self._unreadable,
            )
        self._all_lat.extend(lat)
        last_t, last_n = self._last
        self._last = (now, decided)
        snap.decisions_per_s = (decided - last_n) / max(now - last_t, 1e-6)
        snap.latency_ms = percentiles([np.asarray(lat, dtype=np.float64)]) if lat else {}
        if positives:
            snap.tpr = true_pos / positives
        negatives = decided - positives
        if negatives > 0:
            snap.fpr = false_pos / negatives
        return snap

    def overall_latency(self) -> dict[str, float]:
        """Event-to-decision latency over the whole run."""
        return percentiles([np.asarray(self._all_lat, dtype=np.float64)]) if self._all_lat else {}


def format_decisions(s: DecisionSnapshot) -> str:
    """One line for a terminal."""
    lat = s.latency_ms
    latency = f"p50 {lat['p50']:5.0f} ms p99 {lat['p99']:6.0f} ms" if lat else "p50 - p99 -"
    rates = (
        f"TPR {s.tpr:6.1%} FPR {s.fpr:6.2%}"
        if s.tpr is not None and s.fpr is not None
        else "TPR - FPR -"
    )
    alerts = ", ".join(f"{k} {v}" for k, v in sorted(s.alerts_by_type.items())) or "none"
    unreadable = f" | UNREADABLE messages {s.unreadable:,}" if s.unreadable else ""
    return (
        f"           decisions {s.decisions:>10,} ({s.decisions_per_s:>8,.0f}/s) "
        f"| event->decision {latency} | {rates} | degraded {s.degraded:,} | alerts: {alerts}"
        f"{unreadable}"
    )
