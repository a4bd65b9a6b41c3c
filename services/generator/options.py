"""From command-line style options (all optional) to a resolved `GenerateRequest`.

The CLI only parses; every default and every rule about which options go together lives
here, so the Python API and the command behave the same and the rules have tests.
Errors name the option as the user typed it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from services.common.config.model import GeneratorConfig
from services.generator.runner import GenerateRequest, Output
from services.generator.sinks import label_format
from services.generator.spec import (
    DEFAULT_CHUNK_SIZE,
    FILE_START_TS_MS,
    UNPACED_TIMELINE_RATE,
    GeneratorError,
    StreamSpec,
    parse_timestamp,
)

DEFAULT_RATE = 1_000.0


@dataclass(frozen=True, slots=True)
class GenerateOptions:
    """The options of `anomaly generate`; None means "use the default"."""

    to: str = "kafka"
    out: Path | None = None
    labels: Path | None = None
    rate: float = DEFAULT_RATE
    seconds: float | None = None
    events: int | None = None
    seed: int | None = None
    entities: int | None = None
    anomaly_rate: float | None = None
    payment_share: float | None = None
    start_ts: str | None = None
    chunk_size: int | None = None


def _output(to: str) -> Output:
    try:
        return Output(to.lower())
    except ValueError:
        choices = ", ".join(o.value for o in Output)
        raise GeneratorError(f"--to must be one of {choices}, got {to!r}") from None


def build_request(options: GenerateOptions, defaults: GeneratorConfig) -> GenerateRequest:
    """Validate the options and resolve them against the configured defaults.

    Timing rules: `--rate` is events per second of event time. Kafka output is also paced
    to it (0 = as fast as possible, event time then advancing at 100,000 events/s) and
    `--seconds` is wall-clock time; file outputs are written as fast as possible and
    `--seconds` is event time (seconds x rate events).
    """
    output = _output(options.to)
    live = output in (Output.KAFKA, Output.NULL)
    if output in (Output.JSONL, Output.PARQUET) and options.out is None:
        raise GeneratorError(f"--to {output.value} needs --out PATH")
    if live and options.out is not None:
        raise GeneratorError(f"--out is for file outputs (jsonl, parquet), not --to {output.value}")
    if options.labels is not None:
        label_format(options.labels)
    if not (math.isfinite(options.rate) and options.rate >= 0):
        raise GeneratorError(f"--rate must be >= 0 events/s (0 = unpaced), got {options.rate}")
    if options.events is not None and options.events < 1:
        raise GeneratorError(f"--events must be at least 1, got {options.events}")
    if options.seconds is not None and not (math.isfinite(options.seconds) and options.seconds > 0):
        raise GeneratorError(f"--seconds must be a positive number, got {options.seconds}")
    if options.events is None and options.seconds is None and output is not Output.KAFKA:
        raise GeneratorError(f"--to {output.value} needs --events N or --seconds S")

    timeline_rate = options.rate if options.rate > 0 else UNPACED_TIMELINE_RATE
    start_ts = FILE_START_TS_MS if options.start_ts is None else parse_timestamp(options.start_ts)
    spec = StreamSpec(
        seed=defaults.seed if options.seed is None else options.seed,
        entities=defaults.entities if options.entities is None else options.entities,
        anomaly_rate=(
            defaults.anomaly_rate if options.anomaly_rate is None else options.anomaly_rate
        ),
        payment_share=(
            defaults.payment_share if options.payment_share is None else options.payment_share
        ),
        rate=timeline_rate,
        start_ts_ms=start_ts,
        chunk_size=DEFAULT_CHUNK_SIZE if options.chunk_size is None else options.chunk_size,
    )

    pace = options.rate if output is Output.KAFKA and options.rate > 0 else None
    max_events = options.events
    max_wall_s: float | None = None
    if options.seconds is not None:
        if live:
            max_wall_s = options.seconds
        if not live or pace is not None:
            by_time = max(1, math.ceil(options.seconds * timeline_rate))
            max_events = by_time if max_events is None else min(max_events, by_time)
    return GenerateRequest(
        spec=spec,
        output=output,
        out_path=options.out,
        labels_path=options.labels,
        pace_rate=pace,
        max_events=max_events,
        max_wall_s=max_wall_s,
        start_now=live and options.start_ts is None,
    )
