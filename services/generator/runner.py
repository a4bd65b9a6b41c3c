"""Running a request: open the sink, pace the stream, report progress, summarise.

Pacing sends each small slice when the event time of its *last* event is due, so no event
ever leaves before its `ts` and live latency measured from `ts` is never negative; slices
are about 5 ms of events, which bounds how long an event waits for its slice.
When the start time was taken from the wall clock, the pace is anchored to it: the
setup time (connecting, building the population) is caught up at once instead of
becoming a permanent offset between `ts` and send time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Final

import numpy as np

from services.common.anomaly_types import AnomalyType
from services.common.config.model import KafkaConfig
from services.generator.anomalies import TYPES
from services.generator.sinks import (
    EventSink,
    JsonlSink,
    KafkaSink,
    LabelFile,
    NullSink,
    ParquetSink,
    SinkReport,
)
from services.generator.spec import GeneratorError, StreamSpec
from services.generator.stream import EventStream

PACE_SLICE_S: Final = 0.005
"""Event time per paced slice: the most an event waits for the rest of its slice (measured
on the local broker: producer CreateTime - ts was 2..22 ms with 10 ms slices), against
about 0.1 ms of per-slice overhead."""


class Output(StrEnum):
    """Where events go."""

    KAFKA = "kafka"
    JSONL = "jsonl"
    PARQUET = "parquet"
    NULL = "null"
    """Generate and encode, then discard: measures the generator alone."""


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """A fully resolved run: what to generate, where to, how fast, for how long."""

    spec: StreamSpec
    output: Output
    out_path: Path | None = None
    labels_path: Path | None = None
    pace_rate: float | None = None
    """Events per wall-clock second to send at (Kafka); None sends as fast as possible."""
    max_events: int | None = None
    max_wall_s: float | None = None
    """Wall-clock limit (live outputs); file outputs are bounded by `max_events` instead."""
    start_now: bool = False
    """Stamp the first event with the wall clock at start instead of `spec.start_ts_ms`."""
    progress_every_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot while running, about once per `progress_every_s`."""

    elapsed_s: float
    events: int
    events_per_s: float
    """Rate over the last interval."""
    anomalies: int
    delivery_errors: int
    target_rate: float | None


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """Summary of a finished run."""

    output: Output
    events: int
    anomalies: dict[AnomalyType, int]
    elapsed_s: float
    """From the first event sent to the last one flushed."""
    events_per_s: float
    target_rate: float | None
    delivery_errors: int
    first_error: str | None
    seed: int
    start_ts_ms: int
    last_ts_ms: int | None
    interrupted: bool = False
    out_path: Path | None = None
    labels_path: Path | None = None
    topics: tuple[str, ...] = field(default=())

    @property
    def anomaly_total(self) -> int:
        """Labelled events of all types."""
        return sum(self.anomalies.values())


ProgressCallback = Callable[[Progress], None]


def open_sink(request: GenerateRequest, kafka: KafkaConfig | None) -> EventSink:
    """The sink of the request; raises GeneratorError for unusable destinations."""
    if request.output is Output.KAFKA:
        if kafka is None:
            raise GeneratorError("Kafka output needs the Kafka configuration")
        return KafkaSink(kafka)
    if request.output is Output.NULL:
        return NullSink()
    if request.out_path is None:
        raise GeneratorError(f"{request.output.value} output needs an output path")
    if request.output is Output.JSONL:
        return JsonlSink(request.out_path)
    return ParquetSink(request.out_path)


def generate(
    request: GenerateRequest,
    kafka: KafkaConfig | None = None,
    progress: ProgressCallback | None = None,
    *,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> GenerateResult:
    """Run the request to completion (or Ctrl-C, which stops cleanly and still flushes)."""
    labels = LabelFile(request.labels_path) if request.labels_path is not None else None
    try:
        sink = open_sink(request, kafka)
    except BaseException:
        if labels is not None:
            labels.close()
        raise
    spec = request.spec
    anchor_wall_s: float | None = None
    if request.start_now:
        now_ms = round(time.time() * 1000)
        spec = replace(spec, start_ts_ms=now_ms)
        anchor_wall_s = now_ms / 1000.0
    stream = EventStream(spec)

    counts = np.zeros(len(TYPES), dtype=np.int64)
    sent = 0
    last_ts: int | None = None
    interrupted = False
    rate = request.pace_rate
    piece = len_of_slice(rate, spec.effective_chunk_size)
    start = clock()
    anchor = start if anchor_wall_s is None else start - (time.time() - anchor_wall_s)
    last_report, last_sent = start, 0
    try:
        for chunk in stream.chunks(request.max_events):
            for lo in range(0, len(chunk), piece):
                now = clock()
                if request.max_wall_s is not None and now - start >= request.max_wall_s:
                    raise _Stop
                part = chunk.slice(lo, lo + piece)
                if rate is not None:
                    wait = anchor + (sent + len(part)) / rate - now
                    if wait > 0:
                        sleep(wait)
                sink.write(part)
                if labels is not None:
                    labels.write(part.labels())
                sent += len(part)
                counts += part.anomaly_counts()
                last_ts = int(part.columns.ts[-1])
                now = clock()
                if progress is not None and now - last_report >= request.progress_every_s:
                    progress(
                        Progress(
                            elapsed_s=now - start,
                            events=sent,
                            events_per_s=(sent - last_sent) / (now - last_report),
                            anomalies=int(counts.sum()),
                            delivery_errors=sink.errors,
                            target_rate=rate,
                        )
                    )
                    last_report, last_sent = now, sent
    except _Stop:
        pass
    except KeyboardInterrupt:
        interrupted = True
    finally:
        report: SinkReport = sink.close()
        if labels is not None:
            labels.close()
    elapsed = clock() - start
    return GenerateResult(
        output=request.output,
        events=sent,
        anomalies={t: int(c) for t, c in zip(TYPES, counts.tolist(), strict=True)},
        elapsed_s=elapsed,
        events_per_s=sent / elapsed if elapsed > 0 else math.inf,
        target_rate=rate,
        delivery_errors=report.errors,
        first_error=report.first_error,
        seed=spec.seed,
        start_ts_ms=spec.start_ts_ms,
        last_ts_ms=last_ts,
        interrupted=interrupted,
        out_path=request.out_path,
        labels_path=request.labels_path,
        topics=(
            (kafka.topics.events.name, kafka.topics.labels.name)
            if request.output is Output.KAFKA and kafka is not None
            else ()
        ),
    )


class _Stop(Exception):
    """The wall-clock limit was reached."""


def len_of_slice(rate: float | None, chunk_size: int) -> int:
    """Events per paced slice (a whole chunk when unpaced)."""
    if rate is None:
        return chunk_size
    return max(1, min(chunk_size, math.ceil(rate * PACE_SLICE_S)))
