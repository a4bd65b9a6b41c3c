"""The end-to-end benchmark's figures from recorded samples: lost and duplicated decisions,
TPR/FPR, latencies from event timestamps, pages at the PagerDuty receiver, rates and lag from
offsets, per-process CPU, and the report it writes (JSON, Markdown, plots).

The stack itself takes minutes to start (training, model server), too long for the suite;
what the benchmark computes is tested here on samples whose right answers are known, with the
receiver records and Events API bodies made by the real receiver and the real sink code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import orjson
import pytest

from loadtest import bench_e2e
from loadtest.e2e_metrics import (
    DecisionLedger,
    OffsetSample,
    alert_times,
    detection,
    event_index,
    first_growth,
    lag,
    latency_over_time,
    lost_events,
    rates,
    sustained,
)
from loadtest.e2e_probes import ProcessTable
from loadtest.procstat import cpu_seconds, descendants, process_tree
from services.common.anomaly_types import AnomalyType
from services.common.config import PlatformConfig
from services.common.decision_summaries import DecisionSummary, decode_summaries
from services.router.alerts.alert import Alert
from services.router.alerts.pagerduty_receiver import ReceiverState
from services.router.alerts.sinks.pagerduty import dedup_key_for, resolve_event, trigger_event

PREFIX = "g42-"
START = 1_796_000_000_000


def eid(i: int) -> str:
    return f"g42-{START}-{i}"


def decision(i: int, *, anomalous: bool = False, delay_ms: int = 100) -> DecisionSummary:
    """A `scores` message as the router writes it, decoded as the benchmark's reader does."""
    ts = START + i
    record = {"event_id": eid(i), "entity_id": f"acct-{i % 7}", "ts": ts,
              "decided_at": ts + delay_ms, "anomalous": anomalous, "alert": anomalous,
              "score": 0.5, "anomaly_type": None, "degraded": i == 3,
              "model_scores": {"xgboost": 0.5}, "explanation": "..."}  # fmt: skip
    (summary,), unreadable = decode_summaries([orjson.dumps(record)])
    assert unreadable == []
    return summary


def test_event_index_reads_the_generator_ids_and_refuses_others() -> None:
    assert event_index(eid(0), PREFIX) == 0
    assert event_index(eid(123_456), PREFIX) == 123_456
    assert event_index("g7-1796000000000-5", PREFIX) == -1  # another seed's stream
    assert event_index("g42-1796000000000-x", PREFIX) == -1
    assert event_index("request-id", PREFIX) == -1


def test_lost_duplicates_and_detection_count_distinct_events() -> None:
    ledger = DecisionLedger(prefix=PREFIX)
    # Events 0..9 generated; 7 is never decided; 2 and 5 are decided twice (a replay);
    # one decision belongs to another stream. Labelled: 1, 2, 7 (7 is lost, so not a miss).
    first = [decision(i, anomalous=i in (1, 4)) for i in range(10) if i != 7]
    ledger.add_decisions(first, read_ms=START + 400)
    replay = [decision(2), decision(5)]
    replay.append(msgspec.structs.replace(decision(0), event_id="g9-1-0"))
    ledger.add_decisions(replay, read_ms=START + 900)
    ledger.add_labels([eid(1), eid(2), eid(7)])

    assert lost_events(ledger, 10) == 1
    assert ledger.records == 12 and ledger.foreign == 1
    result = detection(ledger, 10)
    assert result.decided == 9
    assert (result.positives, result.true_positives, result.false_positives) == (2, 1, 1)
    assert result.tpr == pytest.approx(1 / 2)
    assert result.fpr == pytest.approx(1 / 7)  # 4 was flagged among 7 decided normals
    assert ledger.degraded == 1

    read_s, to_decided, to_read = ledger.latencies()
    assert len(read_s) == len(to_decided) == len(to_read) == 11  # the foreign one left out
    assert set(to_decided.tolist()) == {100}
    assert to_read[:9].tolist() == [400 - i for i in range(10) if i != 7]
    assert to_read[9:].tolist() == [900 - 2, 900 - 5]


def test_ledger_grows_past_its_initial_capacity() -> None:
    ledger = DecisionLedger(prefix=PREFIX)
    big = [decision(i) for i in (5, 200_000, 1_000_000)]
    ledger.add_decisions(big, read_ms=START)
    assert len(ledger.decided) == 3
    assert lost_events(ledger, 1_000_001) == 1_000_001 - 3


def make_alert(i: int, entity: str, kind: AnomalyType) -> Alert:
    return Alert(event_id=eid(i), entity_id=entity, anomaly_type=kind, score=0.99,
                 threshold=0.9, severity="error", event_ts=START + i,
                 decided_at=START + i + 50)  # fmt: skip


def test_pages_are_first_triggers_of_a_key_timed_from_their_oldest_alert() -> None:
    state = ReceiverState()  # records exactly what the local receiver records
    a = [make_alert(0, "acct-1", AnomalyType.PRICE_SPIKE),
         make_alert(30, "acct-1", AnomalyType.PRICE_SPIKE)]  # fmt: skip
    b = [make_alert(10, "acct-2", AnomalyType.VELOCITY_BURST)]
    key_a, key_b = dedup_key_for(a[0]), dedup_key_for(b[0])
    state.apply(trigger_event("R" * 32, key_a, a, 2), (START + 700) / 1000)
    state.apply(trigger_event("R" * 32, key_b, b, 1), (START + 250) / 1000)
    # The same key again after its grouping window: an update, not a page.
    later = [make_alert(40, "acct-1", AnomalyType.PRICE_SPIKE)]
    state.apply(trigger_event("R" * 32, key_a, later, 3), (START + 60_000) / 1000)
    state.apply(resolve_event("R" * 32, key_b), (START + 61_000) / 1000)

    times = alert_times(list(state.events))
    assert (times.pages, times.updates, times.resolves) == (2, 1, 1)
    lat = times.page_latency_ms
    assert lat["n"] == 2
    assert lat["max"] == pytest.approx(700)  # from the oldest alert of the batch (ts + 0)
    assert lat["p50"] == pytest.approx((700 + 240) / 2)

    assert alert_times(list(state.events), since_ms=START + 500).pages == 1  # earlier ones


def samples() -> list[OffsetSample]:
    """Offsets at 1 s steps: events grow by 1,000/s from t = 2, ingest commits lag behind."""
    out = []
    for t in range(8):
        events = max(0, t - 2) * 1_000
        committed = max(0, events - 500)
        out.append(OffsetSample(float(t), {"events": events, "features": committed},
                                {"ingest": committed}))  # fmt: skip
    return out


def test_rates_lag_and_sustained_throughput_from_offsets() -> None:
    series = samples()
    assert first_growth(series, "events") == 2.0
    event_rates = rates(series, "events")
    assert event_rates[:3] == [(1.0, 0.0), (2.0, 0.0), (3.0, 1_000.0)]
    assert sustained(event_rates, 3.0, 7.0) == 1_000.0
    assert sustained(event_rates, 20.0, 30.0) == 0.0  # no sample in the window
    assert lag(series, "ingest", "events")[-1] == (7.0, 500)
    assert lag(series, "ingest", "events")[0] == (0.0, 0)


def test_latency_over_time_buckets_by_read_time() -> None:
    read_s = np.array([100.2, 100.5, 101.1, 101.9, 101.95])
    latency = np.array([10, 30, 100, 200, 300])
    buckets = latency_over_time(read_s, latency, start_s=100.0)
    assert [b["t"] for b in buckets] == [1.0, 2.0]
    assert [b["n"] for b in buckets] == [2, 3]
    assert buckets[0]["p50"] == pytest.approx(20)
    assert buckets[1]["p99"] == pytest.approx(np.percentile([100, 200, 300], 99))


def test_cpu_of_a_process_leaves_out_children_counted_under_their_own_name() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n" \
           "time.sleep(30)"  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        deadline = time.monotonic() + 20
        while cpu_seconds(child.pid) < 0.49:  # all of its 0.5 s, give or take a clock tick
            assert time.monotonic() < deadline, "the child did not burn its CPU"
            time.sleep(0.05)
        me = os.getpid()
        # Without the child first: this process's own CPU only grows between the two reads,
        # so it can widen the difference but never hide the child's share.
        without_child = cpu_seconds(me, exclude={child.pid})
        assert cpu_seconds(me) - without_child >= 0.45
        # One walk of /proc serves several processes: the same answers from a shared tree.
        tree = process_tree()
        assert child.pid in descendants(me, tree=tree)
        assert child.pid not in descendants(me, exclude={child.pid}, tree=tree)
        assert cpu_seconds(me, tree=tree) - cpu_seconds(me, {child.pid}, tree) >= 0.45
        table = ProcessTable({"me": me, "child": child.pid})
        usage, busy = table.finish({})
        assert usage["child"].cpu_s < 0.2  # counted from the table's start, not from boot
        assert usage["child"].peak_rss_mb > 1
        assert busy >= 0
    finally:
        child.kill()
        child.wait()


def test_report_table_and_plots_from_recorded_run(tmp_path: Path) -> None:
    ledger = DecisionLedger(prefix=PREFIX)
    # Event i has ts START + i; all are read at START + 6,450: visible 451..6,450 ms late.
    ledger.add_decisions([decision(i, anomalous=i == 1) for i in range(6_000)], START + 6_450)
    ledger.add_labels([eid(1), eid(2)])
    topics = PlatformConfig().kafka.topics
    names = (topics.events.name, topics.features.name, topics.scores.name, topics.dlq.name)
    series = [
        OffsetSample(float(t), dict.fromkeys(names, min(t, 6) * 1_000) | {topics.dlq.name: 0},
                     {"ingest": min(t, 6) * 1_000, "anomaly-router": max(0, min(t, 6) - 1) * 1_000})
        for t in range(9)
    ]  # fmt: skip
    state = ReceiverState()
    alert = make_alert(1, "acct-1", AnomalyType.PRICE_SPIKE)
    state.apply(trigger_event("R" * 32, dedup_key_for(alert), [alert], 1), (START + 800) / 1000)
    usage = ProcessTable({"bench": os.getpid()}).finish({})[0]
    raw = {
        "ledger": ledger, "samples": series, "before": OffsetSample(0, dict.fromkeys(names, 0),
        {"ingest": 0, "anomaly-router": 0}), "generated": 6_000, "injected": 2,
        "achieved": 1_000.0, "events_in": 6_000, "started_wall": START / 1000,
        "generator_s": 6.0, "drain_s": 1.5, "drain_complete": True, "window_s": 8.0, "usage": usage,
        "machine_busy": 10.0, "load_at_start": (1.0, 1.0, 1.0), "alerts": list(state.events),
        "router_group": "anomaly-router", "ingest_group": "ingest", "topics": topics,
    }  # fmt: skip
    args = argparse.Namespace(rate=1_000.0, seconds=6.0, strategy="cascade", entities=7,
                              seed=42, warmup_s=1.0)  # fmt: skip
    report = bench_e2e.build_report(raw, args, (0.5, 0.5, 0.5))

    assert report["events"]["lost"] == 0 and report["events"]["decided_distinct"] == 6_000
    assert report["throughput"]["sustained_decisions_per_s"] == 1_000
    assert report["latency_ms"]["event_to_decision"]["p99"] == pytest.approx(100)
    assert report["latency_ms"]["event_to_alert_page"]["p50"] == pytest.approx(799)
    assert report["lag"]["router_max"] == 1_000 and report["lag"]["router_final"] == 1_000
    assert report["detection"]["tpr"] == pytest.approx(0.5)
    met = {t["what"]: t["met"] for t in report["targets"]}
    assert met["lost events (in - decided)"] and met["p99 event -> decision (decided_at)"]
    assert not met["p99 event -> decision visible on scores"]
    assert met["sustained decisions/s"]  # 1,000/s at a 1,000/s target

    table = bench_e2e.write_outputs(report, tmp_path)
    assert "| **lost** (events in - distinct decided) | **0** |" in table
    assert (tmp_path / "report.json").stat().st_size > 0
    for png in ("throughput.png", "latency.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
