"""The synthetic stream: deterministic, labelled as promised, realistic where it matters.

One 200,000-event stream (200 s of event time at 1,000 events/s) is generated once per
module and inspected from many angles; the rest use small streams. No broker is needed:
the Kafka sink is exercised against a real broker in tests/integration/test_generate_kafka.py.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from services.common.anomaly_types import AnomalyType
from services.common.config.model import GeneratorConfig
from services.common.events import parse_event
from services.generator import (
    EventStream,
    GenerateOptions,
    GenerateRequest,
    GeneratorError,
    Output,
    StreamSpec,
    build_request,
    generate,
    generate_batch,
    parse_timestamp,
)
from services.generator import sinks as sinks_module
from services.generator.anomalies import DRIFT_LABEL_FROM, VELOCITY_RUN_SECONDS
from services.generator.runner import PACE_SLICE_S
from services.generator.spec import FILE_START_TS_MS, UNPACED_TIMELINE_RATE

N_EVENTS = 200_000
SPEC = StreamSpec(seed=7, rate=1_000.0)
ALL_TYPES = {t.value for t in AnomalyType}


@dataclass(frozen=True)
class Sample:
    """The module's big stream, parsed once."""

    values: list[bytes]
    keys: list[bytes]
    events: list[dict[str, Any]]
    labels: dict[str, str]
    """event_id -> label"""
    label_records: list[dict[str, Any]]


@pytest.fixture(scope="module")
def sample() -> Sample:
    batch = generate_batch(SPEC, N_EVENTS)
    events = [parse_event(v) for v in batch.values]
    return Sample(
        values=batch.values,
        keys=batch.keys,
        events=events,
        labels={r["event_id"]: r["label"] for r in batch.labels},
        label_records=[dict(r) for r in batch.labels],
    )


def _by_entity(sample: Sample) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in sample.events:
        grouped[event["entity_id"]].append(event)
    return grouped


def _normal_median(events: list[dict[str, Any]], labels: dict[str, str], field: str) -> float:
    values = [e[field] for e in events if e["event_id"] not in labels]
    return float(np.median(values)) if values else math.nan


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_and_labels() -> None:
    spec = StreamSpec(seed=11, rate=500.0, entities=800)
    first = generate_batch(spec, 25_000)
    second = generate_batch(spec, 25_000)
    assert first.values == second.values
    assert first.keys == second.keys
    assert first.labels == second.labels
    assert first.labels, "a 25k-event stream at 1% must carry labels"


def test_different_seed_gives_a_different_stream() -> None:
    a = generate_batch(StreamSpec(seed=1, entities=800), 5_000)
    b = generate_batch(StreamSpec(seed=2, entities=800), 5_000)
    differing = sum(x != y for x, y in zip(a.values, b.values, strict=True))
    assert differing > 4_900


def test_a_shorter_run_is_a_prefix_of_a_longer_one() -> None:
    spec = StreamSpec(seed=3, entities=500, chunk_size=1_000)
    short = generate_batch(spec, 2_500)
    long = generate_batch(spec, 6_000)
    assert long.values[:2_500] == short.values
    assert [r for r in long.labels if int(r["event_id"].rsplit("-", 1)[1]) < 2_500] == short.labels


def test_file_outputs_are_byte_identical_across_runs(tmp_path: Path) -> None:
    def run(name: str, output: Output, labels_ext: str) -> tuple[bytes, bytes]:
        out, labels = tmp_path / f"{name}.{output.value}", tmp_path / f"{name}.{labels_ext}"
        generate(
            GenerateRequest(
                spec=StreamSpec(seed=5, entities=300),
                output=output,
                out_path=out,
                labels_path=labels,
                max_events=12_000,
            )
        )
        return out.read_bytes(), labels.read_bytes()

    assert run("a", Output.JSONL, "jsonl") == run("b", Output.JSONL, "jsonl")
    assert run("c", Output.PARQUET, "parquet") == run("d", Output.PARQUET, "parquet")


# --------------------------------------------------------------------------- contract


def test_every_event_passes_the_validator_and_ids_are_unique(sample: Sample) -> None:
    assert len(sample.events) == N_EVENTS  # parse_event raised for none of them
    ids = [e["event_id"] for e in sample.events]
    assert len(set(ids)) == N_EVENTS
    kinds = {e["kind"] for e in sample.events}
    assert kinds == {"payment", "trade"}
    trades = [e for e in sample.events if e["kind"] == "trade"]
    assert all("spread_bps" in e and e["quantity"] >= 1 for e in trades)


def test_keys_are_entity_ids(sample: Sample) -> None:
    pairs = zip(sample.keys, sample.events, strict=True)
    assert all(key.decode() == event["entity_id"] for key, event in pairs)


def test_ground_truth_stays_out_of_the_payload(sample: Sample) -> None:
    for raw in sample.values[:20_000]:
        assert b"label" not in raw
        assert not any(t.encode() in raw for t in ALL_TYPES)
        assert b"normal" not in raw


def test_labels_refer_to_real_events(sample: Sample) -> None:
    by_id = {e["event_id"]: e for e in sample.events}
    assert sample.label_records
    for record in sample.label_records:
        assert set(record) == {"event_id", "entity_id", "ts", "label"}
        event = by_id[record["event_id"]]
        assert event["entity_id"] == record["entity_id"]
        assert event["ts"] == record["ts"]
        assert record["label"] in ALL_TYPES
    assert len(sample.labels) == len(sample.label_records), "one label per anomalous event"


# --------------------------------------------------------------------------- anomaly budget


def test_anomaly_rate_matches_the_request(sample: Sample) -> None:
    ratio = len(sample.labels) / N_EVENTS
    assert 0.0085 <= ratio <= 0.0115


def test_all_six_types_are_present_and_roughly_balanced(sample: Sample) -> None:
    counts = {t: 0 for t in ALL_TYPES}
    for label in sample.labels.values():
        counts[label] += 1
    fair = len(sample.labels) / len(ALL_TYPES)
    assert all(0.6 * fair <= c <= 1.4 * fair for c in counts.values()), counts


def test_a_higher_anomaly_rate_is_honoured_and_zero_means_none() -> None:
    high = generate_batch(replace(SPEC, anomaly_rate=0.05, entities=1_000), 60_000)
    assert 0.042 <= len(high.labels) / 60_000 <= 0.058
    assert generate_batch(replace(SPEC, anomaly_rate=0.0, entities=1_000), 20_000).labels == []


def test_payment_only_population_skips_trade_only_types() -> None:
    batch = generate_batch(StreamSpec(seed=9, payment_share=1.0, entities=1_000), 60_000)
    labels = {r["label"] for r in batch.labels}
    assert labels == ALL_TYPES - {"volume_burst", "spread_blowout"}
    assert 0.0085 <= len(batch.labels) / 60_000 <= 0.0115


# --------------------------------------------------------------------------- realism


def test_activity_is_zipf_like(sample: Sample) -> None:
    per_entity = sorted(_by_entity(sample).values(), key=len, reverse=True)
    top = SPEC.entities // 100
    share = sum(len(v) for v in per_entity[:top]) / N_EVENTS
    assert share >= 0.30, f"top 1% of entities carry only {share:.0%} of events"
    assert len(per_entity) >= 0.6 * SPEC.entities, "the tail must still be active"


def test_normal_amounts_are_heavy_tailed(sample: Sample) -> None:
    """Per-entity standardised log amounts of normal payments: kurtosis well above a
    Gaussian's 3, and some legitimate amounts far above their entity's median."""
    zs: list[float] = []
    ratios: list[float] = []
    for events in _by_entity(sample).values():
        normal = [
            e["amount"]
            for e in events
            if e["kind"] == "payment" and e["event_id"] not in sample.labels
        ]
        if len(normal) < 30:
            continue
        logs = np.log(normal)
        zs.extend(((logs - logs.mean()) / logs.std()).tolist())
        ratios.extend((np.asarray(normal) / np.median(normal)).tolist())
    z = np.asarray(zs)
    kurtosis = float(np.mean(z**4))
    assert kurtosis > 4.0
    assert np.mean(np.asarray(ratios) > 10) > 0.0005


def test_daily_seasonality_follows_local_time() -> None:
    """A day of event time at 2 events/s: payments sleep at night, trades keep exchange
    hours, both in each entity's own time zone."""
    stream = EventStream(StreamSpec(seed=4, rate=2.0, entities=2_000))
    offsets = stream.population.utc_offset_h
    by_kind_hour = {k: np.zeros(24) for k in (False, True)}
    for chunk in stream.chunks(2 * 86_400):
        cols = chunk.columns
        hour = ((cols.ts / 3.6e6 + offsets[cols.entity]) % 24).astype(int)
        for kind in (False, True):
            np.add.at(by_kind_hour[kind], hour[cols.is_trade == kind], 1)
    payments, trades = by_kind_hour[False], by_kind_hour[True]
    assert payments[17:21].sum() > 5 * payments[2:6].sum()
    assert trades[9:17].sum() > 10 * (trades[0:7].sum() + trades[19:24].sum())


def test_event_time_is_non_decreasing_and_follows_the_rate(sample: Sample) -> None:
    ts = np.array([e["ts"] for e in sample.events])
    assert (np.diff(ts) >= 0).all()
    assert ts[0] == FILE_START_TS_MS
    assert ts[-1] - ts[0] == pytest.approx((N_EVENTS - 1) / SPEC.rate * 1000, abs=1)


def test_velocity_bursts_are_dense_in_time(sample: Sample) -> None:
    runs: dict[str, list[int]] = defaultdict(list)
    for event in sample.events:
        if sample.labels.get(event["event_id"]) == "velocity_burst":
            runs[event["entity_id"]].append(event["ts"])
    assert runs
    limit_ms = VELOCITY_RUN_SECONDS[1] * 1000
    for entity, ts in runs.items():
        # an entity may have had more than one run: split at gaps longer than a run
        clusters = np.split(np.asarray(ts), np.flatnonzero(np.diff(ts) > limit_ms) + 1)
        for cluster in clusters:
            assert cluster[-1] - cluster[0] <= limit_ms, entity
        full = [c for c in clusters if c[0] > FILE_START_TS_MS + limit_ms]
        assert all(len(c) >= 10 for c in full[:-1]), entity
    sizes = [len(ts) for ts in runs.values()]
    assert np.median(sizes) >= 15


def test_single_event_anomalies_have_the_promised_magnitude(sample: Sample) -> None:
    grouped = _by_entity(sample)
    ratios: dict[str, list[float]] = defaultdict(list)
    fields = {"price_spike": "amount", "volume_burst": "quantity", "spread_blowout": "spread_bps"}
    for events in grouped.values():
        medians: dict[str, float] = {}
        for event in events:
            label = sample.labels.get(event["event_id"])
            if label in fields:
                field = fields[label]
                if field not in medians:
                    medians[field] = _normal_median(events, sample.labels, field)
                if not math.isnan(medians[field]):
                    ratios[label].append(event[field] / medians[field])
    assert np.median(ratios["price_spike"]) >= 8
    assert np.median(ratios["volume_burst"]) >= 10
    assert np.median(ratios["spread_blowout"]) >= 10
    # but not every one is blatant: the mild end overlaps heavy-tailed normal traffic
    assert np.quantile(ratios["price_spike"], 0.1) < 10


def test_novelty_jumps_are_really_new_and_legit_first_uses_exist(sample: Sample) -> None:
    seen_cp: dict[str, set[str]] = defaultdict(set)
    seen_country: dict[str, set[str]] = defaultdict(set)
    novelties = legit_first_uses = 0
    for event in sample.events:
        entity = event["entity_id"]
        new_cp = event["counterparty"] not in seen_cp[entity]
        new_country = event["country"] not in seen_country[entity]
        if sample.labels.get(event["event_id"]) == "novelty_jump":
            novelties += 1
            assert new_cp or new_country, event
        elif new_cp and len(seen_cp[entity]) >= 10:
            legit_first_uses += 1
        seen_cp[entity].add(event["counterparty"])
        seen_country[entity].add(event["country"])
    assert novelties > 100
    assert legit_first_uses > 50, "novelty alone must not be a perfect signal"


def test_slow_drift_raises_the_level_gradually(sample: Sample) -> None:
    """Per drifting entity: the later half of its drift labels sits above the earlier half,
    and well above the entity's unlabelled events (amounts are noisy per event, so the
    assertions are on medians across entities)."""
    rising, lifts = [], []
    for events in _by_entity(sample).values():
        labelled = [
            i for i, e in enumerate(events) if sample.labels.get(e["event_id"]) == "slow_drift"
        ]
        if len(labelled) < 6:
            continue
        amounts = np.array([e["amount"] for e in events])
        early, late = (
            amounts[labelled[: len(labelled) // 2]],
            amounts[labelled[len(labelled) // 2 :]],
        )
        normal = [
            a for a, e in zip(amounts, events, strict=True) if e["event_id"] not in sample.labels
        ]
        rising.append(np.median(late) > np.median(early))
        lifts.append(np.median(late) / np.median(normal))
    assert len(lifts) >= 3
    assert np.mean(rising) >= 0.75, "the level keeps rising"
    assert np.median(lifts) > 1 + 2 * DRIFT_LABEL_FROM


# --------------------------------------------------------------------------- outputs


def test_parquet_holds_the_same_events_as_jsonl(tmp_path: Path) -> None:
    spec = StreamSpec(seed=8, entities=300)
    for output in (Output.JSONL, Output.PARQUET):
        generate(
            GenerateRequest(
                spec=spec,
                output=output,
                out_path=tmp_path / output.value,
                labels_path=tmp_path / f"labels.{output.value}",
                max_events=3_000,
            )
        )
    from_json = [parse_event(line) for line in (tmp_path / "jsonl").read_bytes().splitlines()]
    table = pq.read_table(tmp_path / "parquet").to_pylist()
    for row in table:
        if row["spread_bps"] is None:
            del row["spread_bps"]
    assert table == from_json
    jsonl_labels = [orjson.loads(x) for x in (tmp_path / "labels.jsonl").read_bytes().splitlines()]
    assert pq.read_table(tmp_path / "labels.parquet").to_pylist() == jsonl_labels


def test_generate_reports_counts_that_match_the_labels(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    result = generate(
        GenerateRequest(spec=SPEC, output=Output.NULL, labels_path=labels, max_events=30_000)
    )
    written = [orjson.loads(x)["label"] for x in labels.read_bytes().splitlines()]
    assert result.events == 30_000
    assert result.anomaly_total == len(written)
    assert {t.value: n for t, n in result.anomalies.items() if n} == {
        t: written.count(t) for t in set(written)
    }
    assert result.delivery_errors == 0
    assert result.last_ts_ms == FILE_START_TS_MS + 29_999


class FakeClock:
    """Time that only moves when the runner sleeps (or work is charged)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def test_pacing_never_sends_an_event_before_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    sent_at: list[tuple[float, int]] = []

    class Recorder(sinks_module.NullSink):
        def write(self, chunk: Any) -> None:
            sent_at.append((clock.now, int(chunk.columns.position[-1])))
            super().write(chunk)

    request = GenerateRequest(
        spec=StreamSpec(rate=5_000.0, entities=200),
        output=Output.NULL,
        pace_rate=5_000.0,
        max_events=20_000,
    )
    monkeypatch.setattr("services.generator.runner.NullSink", Recorder)
    result = generate(request, clock=clock, sleep=clock.sleep)
    assert result.events == 20_000
    assert clock.slept == pytest.approx(20_000 / 5_000.0, rel=1e-6)
    for at, last_position in sent_at:
        assert at - 100.0 >= (last_position + 1) / 5_000.0 - 1e-9
    assert len(sent_at) == 20_000 / (5_000 * PACE_SLICE_S), "small slices, not whole chunks"


def test_wall_clock_limit_stops_a_live_run() -> None:
    clock = FakeClock()
    request = GenerateRequest(
        spec=StreamSpec(entities=200), output=Output.NULL, pace_rate=1_000.0, max_wall_s=2.0
    )
    result = generate(request, clock=clock, sleep=clock.sleep)
    assert result.events == 2_000


# --------------------------------------------------------------------------- options


def test_file_runs_measure_seconds_in_event_time() -> None:
    request = build_request(
        GenerateOptions(to="jsonl", out=Path("x.jsonl"), rate=250.0, seconds=4.0),
        GeneratorConfig(),
    )
    assert request.max_events == 1_000
    assert request.pace_rate is None and request.max_wall_s is None
    assert request.spec.start_ts_ms == FILE_START_TS_MS and not request.start_now


def test_live_runs_are_paced_and_wall_clock_bounded() -> None:
    request = build_request(GenerateOptions(rate=100_000.0, seconds=10.0), GeneratorConfig(seed=3))
    assert request.output is Output.KAFKA
    assert request.pace_rate == 100_000.0
    assert request.max_wall_s == 10.0 and request.max_events == 1_000_000
    assert request.start_now and request.spec.seed == 3
    unpaced = build_request(GenerateOptions(rate=0, events=10), GeneratorConfig())
    assert unpaced.pace_rate is None and unpaced.spec.rate == UNPACED_TIMELINE_RATE


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (GenerateOptions(to="csv"), "--to must be one of"),
        (GenerateOptions(to="jsonl", events=5), "needs --out"),
        (GenerateOptions(to="null", out=Path("x.jsonl"), events=5), "--out is for file outputs"),
        (GenerateOptions(to="null"), "needs --events N or --seconds S"),
        (GenerateOptions(rate=-1), "--rate must be >= 0"),
        (GenerateOptions(rate=math.nan), "--rate must be >= 0"),
        (GenerateOptions(events=0), "--events must be at least 1"),
        (GenerateOptions(seconds=-2), "--seconds must be a positive"),
        (GenerateOptions(labels=Path("l.csv")), "must end in .jsonl"),
        (GenerateOptions(start_ts="soon"), "neither milliseconds"),
        (GenerateOptions(start_ts="1767571200"), "outside 2000-01-01"),
        (GenerateOptions(entities=0), "entities must be between"),
        (GenerateOptions(anomaly_rate=0.9), "anomaly rate must be within"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(
    options: GenerateOptions, message: str
) -> None:
    with pytest.raises(GeneratorError, match=message):
        build_request(options, GeneratorConfig())


def test_start_timestamps_parse_from_ms_or_iso() -> None:
    assert parse_timestamp("2026-01-05T00:00:00Z") == FILE_START_TS_MS
    assert parse_timestamp("2026-01-05T01:00:00+01:00") == FILE_START_TS_MS
    assert parse_timestamp("2026-01-05 00:00") == FILE_START_TS_MS
    assert parse_timestamp(str(FILE_START_TS_MS)) == FILE_START_TS_MS


# --------------------------------------------------------------------------- command line


@pytest.fixture
def cli() -> Any:
    import typer

    from services.cli.generate_cmd import generate as command

    app = typer.Typer()
    app.command()(command)
    app.command("noop")(lambda: None)  # two commands, so `generate` is addressed by name
    return app


def test_cli_writes_files_and_prints_a_summary(cli: Any, tmp_path: Path) -> None:
    out, labels = tmp_path / "e.jsonl", tmp_path / "l.jsonl"
    result = CliRunner().invoke(
        cli, ["generate", "--to", "jsonl", "--out", str(out), "--labels", str(labels),
              "--events", "5000", "--entities", "300", "--seed", "1", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "generated 5,000 events to jsonl file" in result.output
    assert "velocity_burst" in result.output
    assert len(out.read_bytes().splitlines()) == 5_000
    assert labels.stat().st_size > 0


@pytest.mark.parametrize(
    "args",
    [
        ["--rate", "-5", "--seconds", "1"],
        ["--to", "parquet", "--events", "10"],
        ["--to", "null", "--events", "10", "--start-ts", "tomorrow"],
    ],
)
def test_cli_user_mistakes_exit_2_with_one_line(cli: Any, args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["generate", *args])
    assert result.exit_code == 2
    assert result.output.startswith("error: ")
    assert result.output.count("\n") == 1
    assert "Traceback" not in result.output


def test_cli_unreachable_broker_is_a_user_error(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks_module, "CONNECT_TIMEOUT_S", 0.5)
    monkeypatch.setenv("ANOMALY_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    result = CliRunner().invoke(cli, ["generate", "--seconds", "1"])
    assert result.exit_code == 2
    assert "cannot reach the Kafka broker at 127.0.0.1:1" in result.output
    assert "Traceback" not in result.output
