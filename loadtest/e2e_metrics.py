"""The end-to-end benchmark's arithmetic, kept apart from brokers and processes so it is tested.

Everything here works on recorded samples: decisions as read from `scores`, labels from
`events.labels`, the alerts the local PagerDuty receiver recorded, and topic offsets and
committed group offsets sampled over time. The live side (`e2e_probes`) only records.

Events are identified by the index in the generator's event ids (`g<seed>-<start>-<i>`):
a run decides millions of events, and a bitmap over indexes counts distinct decisions, true
and false positives in a few megabytes where sets of id strings would take gigabytes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.decision_summaries import DecisionSummary

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


def event_index(event_id: str, prefix: str) -> int:
    """Stream position of a generated event id (`<prefix><start>-<i>`), or -1 for an id of
    another stream. The start time is the generator's wall clock, unknown until it runs, so
    only the seed part (`g<seed>-`) is checked: the benchmark's broker holds one run."""
    if not event_id.startswith(prefix):
        return -1
    tail = event_id.rsplit("-", 1)[1]
    return int(tail) if tail.isdigit() else -1


def percentiles(values: npt.ArrayLike) -> dict[str, float]:
    """p50/p99/max and the count of a sample ({} when empty): what every latency reports."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return {}
    p50, p99 = np.percentile(data, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(data.max()), "n": int(data.size)}


class Bitmap:
    """A growable set of non-negative integers (event indexes)."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._bits = np.zeros(capacity, dtype=np.bool_)

    def add(self, indexes: I64) -> None:
        """Insert indexes (negative ones are ignored: ids of another stream)."""
        indexes = indexes[indexes >= 0]
        if indexes.size == 0:
            return
        top = int(indexes.max())
        if top >= self._bits.size:
            grown = np.zeros(max(top + 1, 2 * self._bits.size), dtype=np.bool_)
            grown[: self._bits.size] = self._bits
            self._bits = grown
        self._bits[indexes] = True

    def array(self, size: int) -> npt.NDArray[np.bool_]:
        """Membership of 0..size-1 as a boolean array."""
        out = np.zeros(size, dtype=np.bool_)
        n = min(size, self._bits.size)
        out[:n] = self._bits[:n]
        return out

    def __len__(self) -> int:
        return int(self._bits.sum())


@dataclass
class DecisionLedger:
    """Every decision read from `scores`: who was decided, flagged, how late, and when.

    Latencies are kept as two clocks: `decided_at - ts` (the router's own stamp) and
    `read - ts` (when the decision was visible on `scores` to a downstream reader, which
    adds the produce and fetch). Both come from this machine's one clock.
    """

    prefix: str
    decided: Bitmap = field(default_factory=Bitmap)
    flagged: Bitmap = field(default_factory=Bitmap)
    labelled: Bitmap = field(default_factory=Bitmap)
    records: int = 0
    """Decisions read, duplicates included (at-least-once: a replay may repeat some)."""
    foreign: int = 0
    """Decisions of events this run did not generate (they are reported, not counted)."""
    degraded: int = 0
    unreadable: int = 0
    """`scores` and `events.labels` messages that did not decode (counted, reported, not
    used)."""
    _read_s: list[F64] = field(default_factory=list)
    _to_decided: list[I64] = field(default_factory=list)
    _to_read: list[I64] = field(default_factory=list)

    def add_decisions(self, decisions: Sequence[DecisionSummary], read_ms: int) -> None:
        """One batch of decoded `scores` records, all read at `read_ms`."""
        n = len(decisions)
        index = np.fromiter(
            (event_index(d.event_id, self.prefix) for d in decisions), dtype=np.int64, count=n
        )
        ts = np.fromiter((d.ts for d in decisions), dtype=np.int64, count=n)
        decided_at = np.fromiter((d.decided_at for d in decisions), dtype=np.int64, count=n)
        flagged = np.fromiter((d.anomalous for d in decisions), dtype=np.bool_, count=n)
        ours = index >= 0
        self.records += n
        self.foreign += int((~ours).sum())
        self.degraded += sum(d.degraded for d in decisions)
        self.decided.add(index)
        self.flagged.add(index[flagged])
        self._read_s.append(np.full(int(ours.sum()), read_ms / 1000.0))
        self._to_decided.append(decided_at[ours] - ts[ours])
        self._to_read.append(read_ms - ts[ours])

    def add_labels(self, event_ids: Iterable[str]) -> None:
        """Ground truth: ids of injected anomalies (absence = normal)."""
        self.labelled.add(
            np.fromiter((event_index(e, self.prefix) for e in event_ids), dtype=np.int64)
        )

    def latencies(self) -> tuple[F64, I64, I64]:
        """(read time in epoch seconds, decided_at - ts, read - ts), one row per decision."""
        if not self._read_s:
            empty = np.empty(0, np.int64)
            return np.empty(0), empty, empty
        return (
            np.concatenate(self._read_s),
            np.concatenate(self._to_decided),
            np.concatenate(self._to_read),
        )


@dataclass(frozen=True)
class Detection:
    """Decisions against the injected anomalies, over the events that were decided."""

    decided: int
    positives: int
    """Labelled (injected) events among the decided ones."""
    true_positives: int
    false_positives: int
    tpr: float | None
    fpr: float | None


def detection(ledger: DecisionLedger, generated: int) -> Detection:
    """TPR and FPR over events 0..generated-1 that have a decision (a lost event is reported
    as lost, not as a miss)."""
    decided = ledger.decided.array(generated)
    flagged = ledger.flagged.array(generated) & decided
    labelled = ledger.labelled.array(generated) & decided
    positives = int(labelled.sum())
    negatives = int(decided.sum()) - positives
    tp = int((flagged & labelled).sum())
    fp = int((flagged & ~labelled).sum())
    return Detection(
        decided=int(decided.sum()),
        positives=positives,
        true_positives=tp,
        false_positives=fp,
        tpr=tp / positives if positives else None,
        fpr=fp / negatives if negatives else None,
    )


def lost_events(ledger: DecisionLedger, generated: int) -> int:
    """Generated events with no decision at all (`events in - distinct event ids decided`)."""
    return generated - int(ledger.decided.array(generated).sum())


def _iso_ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


@dataclass(frozen=True)
class AlertTimes:
    """What reached the PagerDuty receiver, and how long after the event that caused it."""

    pages: int
    """Triggers that opened an incident (a page); later triggers of a key are updates."""
    updates: int
    resolves: int
    page_latency_ms: dict[str, float]
    """Receipt of each page minus the event time of the oldest alert it reports."""


def alert_times(received: Iterable[Mapping[str, Any]], since_ms: int = 0) -> AlertTimes:
    """From the receiver's records `{"received_at": epoch s, "event": Events API v2 body}`.

    Only pages have a latency that means something: an update is held for the sink's
    grouping window on purpose (one page per burst), so its delay is the window, not the
    pipeline. Events received before `since_ms` (an earlier run) are ignored.
    """
    seen: set[str] = set()
    latency: list[float] = []
    updates = resolves = 0
    for record in received:
        received_ms = float(record["received_at"]) * 1000.0
        if received_ms < since_ms:
            continue
        event = record["event"]
        if event["event_action"] == "resolve":
            resolves += 1
            continue
        if event["event_action"] != "trigger":
            continue
        key = event["dedup_key"]
        if key in seen:
            updates += 1
            continue
        seen.add(key)
        first_ts = event["payload"]["custom_details"]["first_event_ts"]
        latency.append(received_ms - _iso_ms(first_ts))
    return AlertTimes(len(latency), updates, resolves, percentiles(latency))


@dataclass(frozen=True)
class OffsetSample:
    """Offsets at one moment: topic end offsets and committed offsets of the two groups."""

    t: float
    """Seconds since the load started."""
    end: Mapping[str, int]
    """Topic -> sum of its partitions' end offsets."""
    committed: Mapping[str, int]
    """Consumer group -> sum of its committed offsets on the topic it consumes."""


def rates(samples: Sequence[OffsetSample], topic: str) -> list[tuple[float, float]]:
    """(t, messages/s) between consecutive samples of a topic's end offsets."""
    out = []
    for a, b in itertools.pairwise(samples):
        dt = b.t - a.t
        if dt > 0:
            out.append((b.t, (b.end[topic] - a.end[topic]) / dt))
    return out


def lag(samples: Sequence[OffsetSample], group: str, topic: str) -> list[tuple[float, int]]:
    """(t, end offsets - committed offsets): messages the group has not yet made durable."""
    return [(s.t, s.end[topic] - s.committed[group]) for s in samples]


def first_growth(samples: Sequence[OffsetSample], topic: str) -> float:
    """Time of the last sample before a topic's end offsets first grew (when load began)."""
    for a, b in itertools.pairwise(samples):
        if b.end[topic] > a.end[topic]:
            return a.t
    return 0.0


def sustained(series: Sequence[tuple[float, float]], start_s: float, stop_s: float) -> float:
    """Median rate over [start_s, stop_s] (warm-up and drain excluded); 0 with no sample."""
    inside = [r for t, r in series if start_s <= t <= stop_s]
    return float(np.median(inside)) if inside else 0.0


def latency_over_time(
    read_s: F64, latency_ms: npt.ArrayLike, start_s: float, bucket_s: float = 1.0
) -> list[dict[str, float]]:
    """p50/p99 per bucket of read time (seconds since `start_s`), for the latency plot."""
    lat = np.asarray(latency_ms, dtype=np.float64)
    if lat.size == 0:
        return []
    bucket = np.floor((read_s - start_s) / bucket_s).astype(np.int64)
    order = np.argsort(bucket, kind="stable")
    bucket, lat = bucket[order], lat[order]
    edges = np.flatnonzero(np.diff(bucket)) + 1
    out = []
    for b, values in zip(bucket[np.r_[0, edges]], np.split(lat, edges), strict=True):
        p50, p99 = np.percentile(values, [50, 99])
        out.append({"t": float((b + 1) * bucket_s), "p50": float(p50), "p99": float(p99),
                    "n": int(values.size)})  # fmt: skip
    return out
