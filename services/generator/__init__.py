"""`anomaly generate`: a seeded, labelled synthetic event stream for training and load.

Why synthetic: the platform must be trained, evaluated and load-tested without production
data, and its metrics need ground truth. The stream is therefore *deterministic* (a pure
function of `StreamSpec`: one `numpy.random.Generator(PCG64(seed))`, no wall clock, no
dict/set iteration order), *labelled* (ground truth kept out of the payload) and *fast*
(vectorised chunks of numpy columns; see `encoding` and `sinks` for the measured budget).

Behaviour model (normal traffic)
--------------------------------
* Entities: `entities` of them, `payment_share` payment accounts (`acct-NNNNNN`,
  kind=payment, merchant in `instrument`, card channels pos/contactless/web/app/moto/atm)
  and the rest trade instruments (`inst-NNNNNN`, kind=trade, price in `amount`, integer
  `quantity`, `spread_bps`, venue MIC as `channel`).
* Activity is Zipf-like (weight of rank r ~ r^-0.9 with log-normal noise): with 5,000
  entities the busiest 1% send roughly half of all events.
* Daily seasonality by the entity's *local* hour (home-country UTC offset): payments are
  quiet at night and peak at lunch and in the evening; trades follow exchange hours with
  a U-shaped volume curve. The total rate stays at the target; only its split between
  entities moves with the clock. Payment amounts, trade quantities and spreads also
  follow the hour (bigger evening spend, wide spreads outside the session).
* Amounts: per-entity log-normal level (payments median ~30, prices ~1..1,000) with
  heavy-tailed (Student-t, df 4) log noise, so a legitimate amount can reach ~45x its
  entity's median; prices swing slowly (hours) with small per-trade noise.
* Each entity has a few usual counterparties (popular ones more likely) and a home
  country (plus up to two others it uses sometimes), uses a new counterparty on ~0.4%
  of events and a new country on ~0.05% (legitimately, unlabelled).
* Legitimate bursts (unlabelled): 1% of events come as 5-20 events of one busy entity
  within 10-300 s, so density alone is not an anomaly.
* Event time: `ts = start_ts + floor(i * 1000 / rate)` ms for the i-th event of the
  stream, non-decreasing. Files start at 2026-01-05T00:00:00Z unless `--start-ts` is
  given; Kafka output starts at the wall clock and is paced so that `ts` ~ send time.

Anomaly mix (labelled)
----------------------
`anomaly_rate` (default 1%) of events carry a label. The rate is split equally between
the types the population supports (all six with both kinds of entity; without trade
instruments, `volume_burst` and `spread_blowout` drop out and the other four share the
rate). Budgets are counted in labelled events with feedback, so the realised rate stays
within about one episode of the target (in runs of a few seconds of event time the
multi-event types, above all `slow_drift`, are still under-represented: their episodes
have not run their course yet):

* `price_spike`: one event's amount x5..x50 (log-uniform), any entity.
* `volume_burst`: one trade's quantity at x10..x100 the instrument's median quantity.
* `velocity_burst`: 15-60 events of one entity within 1-20 s (every one labelled);
  payments (75%): card testing, 0.5-5.00 amounts at one merchant (new to the entity half
  the time) over `web`; trades: quote stuffing, quantities of 1-9.
* `spread_blowout`: 1-8 trades of one instrument within 1-30 s with spread x10..x50 and
  thin quantity.
* `novelty_jump`: one event with a counterparty and/or a country (a third each way,
  a third both) the entity never used before (checked against its history), amount
  x1..x4.
* `slow_drift`: an entity's amount level grows 1-4% per event of that entity up to
  x2..x5, then returns to normal; events are labelled once the level is at least 30%
  above baseline (the earlier, smaller steps are normal on purpose).

Magnitudes are drawn from ranges, and normal heavy tails, legitimate bursts and
legitimate first uses overlap the mild end of each type, so detection is possible from
rolling per-entity window features (counts, amount z-scores, quantity vs median, time
since previous event, distinct counterparties and countries) but not trivial.

Labels are `{event_id, entity_id, ts, label}` records for anomalous events only (absence
means normal), written to a JSONL/Parquet side file and, for Kafka output, to the labels
topic keyed by event id. Event ids (`g<seed>-<start_ts>-<i>`) are unique within a stream
and, because live runs start at the wall clock, across live runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.generator.encoding import LabelRecord
from services.generator.options import GenerateOptions, build_request
from services.generator.report import format_progress, format_summary
from services.generator.runner import (
    GenerateRequest,
    GenerateResult,
    Output,
    Progress,
    generate,
)
from services.generator.spec import (
    FILE_START_TS_MS,
    GeneratorError,
    StreamSpec,
    parse_timestamp,
)
from services.generator.stream import Chunk, EventStream


@dataclass(frozen=True, slots=True)
class GeneratedBatch:
    """A whole (small) stream in memory: event JSON, Kafka keys and labels."""

    values: list[bytes]
    keys: list[bytes]
    labels: list[LabelRecord]


def generate_batch(spec: StreamSpec, events: int) -> GeneratedBatch:
    """The first `events` events of the stream of `spec`, in memory (tests, notebooks)."""
    values: list[bytes] = []
    keys: list[bytes] = []
    labels: list[LabelRecord] = []
    for chunk in EventStream(spec).chunks(events):
        values.extend(chunk.values())
        keys.extend(chunk.keys())
        labels.extend(chunk.labels())
    return GeneratedBatch(values, keys, labels)


__all__ = [
    "FILE_START_TS_MS",
    "Chunk",
    "EventStream",
    "GenerateOptions",
    "GenerateRequest",
    "GenerateResult",
    "GeneratedBatch",
    "GeneratorError",
    "LabelRecord",
    "Output",
    "Progress",
    "StreamSpec",
    "build_request",
    "format_progress",
    "format_summary",
    "generate",
    "generate_batch",
    "parse_timestamp",
]
