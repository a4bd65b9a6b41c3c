"""End-to-end benchmark: the whole platform on this machine, driven at N events/s for T s.

Starts the stack the main job runs (`scripts/local_platform.py`: broker, topics, Feast on
SQLite, models, model server, PagerDuty receiver, ingest, router) on free ports with its own
data folder, so it can run beside a main job; drives the labelled generator (its own
process) at the target rate, then waits for the pipeline to drain, and measures:

* sustained throughput: events in, feature vectors and decisions per second, from the end
  offsets of `events`, `features` and `scores` sampled every second;
* event-to-decision latency p50/p99 from the events' own timestamps, both to the router's
  `decided_at` and to the moment the decision is visible on `scores`;
* event-to-alert latency p50/p99: a page's arrival at the local PagerDuty receiver minus the
  event time of the oldest alert it reports;
* consumer lag of the ingest and router groups over time (end offsets - committed offsets);
* CPU seconds and peak RSS of every process (broker, generator, ingest, router, model
  server, this process) and of the rest of the machine (other work sharing the cores);
* TPR/FPR on the injected anomalies, and events in vs distinct event ids decided (lost).

Writes report.json, report.md, throughput.png and latency.png to --out-dir and prints the
table. Everything shares this machine's cores; the report gives the load average before and
after and the CPU that went to processes outside the benchmark.

    python loadtest/bench_e2e.py --rate 50000 --seconds 60 [--out-dir var/bench_e2e]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from local_kafka import free_port  # noqa: E402
from local_platform import STRATEGIES, PlatformOptions, RunningPlatform, platform  # noqa: E402
from pipeline_monitor import PipelineMonitor  # noqa: E402

from loadtest.e2e_metrics import (  # noqa: E402
    DecisionLedger,
    OffsetSample,
    alert_times,
    detection,
    first_growth,
    lag,
    latency_over_time,
    lost_events,
    percentiles,
    rates,
    sustained,
)
from loadtest.e2e_probes import OffsetSampler, ProcessTable, ScoresReader  # noqa: E402
from loadtest.e2e_report import markdown, plots  # noqa: E402
from services.common.heap import freeze_startup_heap  # noqa: E402

ROUTER_GROUP = "anomaly-router"
"""The router's consumer group on `features` (`anomaly router --group-id` default)."""


def log(message: str) -> None:
    print(f"[bench-e2e] {message}", file=sys.stderr, flush=True)


def _summary_int(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"cannot read the generator's summary ({pattern!r}):\n{text}")
    return int(match.group(1).replace(",", ""))


def options(args: argparse.Namespace) -> PlatformOptions:
    """Free ports and a data folder of its own: the benchmark never meets a main job."""
    return PlatformOptions(
        kafka_port=free_port(),
        ops_port=free_port(),
        receiver_port=0,
        models_http_port=free_port(),
        models_grpc_port=free_port(),
        router_http_port=free_port(),
        router_grpc_port=free_port(),
        var_dir=args.out_dir / "stack",
        model_store=args.model_store,
        train_events=args.train_events,
        train_event_rate=args.rate,
        strategy=args.strategy,
        wipe_broker=True,
        log_name="bench-e2e",
    )


def drive(stack: RunningPlatform, args: argparse.Namespace) -> dict[str, Any]:
    """Generate, drain and measure; the raw material of the report."""
    cfg = stack.config
    topics = cfg.kafka.topics
    ledger = DecisionLedger(prefix=f"g{args.seed}-")
    # The readers make a dict per decision; the collector must not walk Feast's and the
    # platform's start-up objects for each batch of them (this process shares the cores).
    freeze_startup_heap()
    reader = ScoresReader(cfg, ledger).start()
    features = PipelineMonitor(cfg).start()  # event -> features: the ingest half of the path
    sampler = OffsetSampler(
        cfg,
        (topics.events.name, topics.features.name, topics.scores.name, topics.dlq.name),
        {cfg.ingest.group_id: topics.events.name, ROUTER_GROUP: topics.features.name},
    )
    before = sampler.sample()
    pids = {**stack.pids(), "bench (readers, receiver)": os.getpid()}
    table = ProcessTable(pids)
    load_at_start = os.getloadavg()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started_wall = time.time()
    sampler.start()
    started = time.monotonic()
    log(f"generating {args.rate:,.0f} events/s for {args.seconds:.0f} s")
    gen = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "generate", "-c", str(stack.config_file),
         "--to", "kafka", "--rate", str(args.rate), "--seconds", str(args.seconds),
         "--entities", str(args.entities), "--seed", str(args.seed), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    table.add("generator", gen.pid)
    next_line = started + 2.0
    while gen.poll() is None:
        time.sleep(0.25)
        table.sample_memory()
        stack.check_alive()
        if time.monotonic() >= next_line and sampler.samples:
            next_line += 2.0
            s = sampler.samples[-1]
            events_so_far = s.end[topics.events.name] - before.end[topics.events.name]
            log(
                f"t={s.t:5.1f}s events {events_so_far:>10,}"
                f" decided {reader.decided():>10,}"
                f" lag ingest {s.end[topics.events.name] - s.committed[cfg.ingest.group_id]:>9,}"
                f" router {s.end[topics.features.name] - s.committed[ROUTER_GROUP]:>9,}"
            )
    generator_done = time.monotonic()
    gen_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    gen_cpu = (gen_usage.ru_utime - children0.ru_utime) + (gen_usage.ru_stime - children0.ru_stime)
    gen_out = gen.stdout.read().decode() if gen.stdout else ""
    if gen.returncode != 0:
        raise RuntimeError(f"generator exited with {gen.returncode}:\n{gen_out}")
    generated = _summary_int(r"generated ([\d,]+) events", gen_out)
    injected = _summary_int(r"anomalies ([\d,]+) \(", gen_out)
    achieved = float(_summary_int(r"achieved ([\d,]+) events/s", gen_out))
    events_in = sampler.sample().end[topics.events.name] - before.end[topics.events.name]
    log(f"generator done: {generated:,} events ({achieved:,.0f}/s); draining")

    last_count, last_change = -1, time.monotonic()
    deadline = time.monotonic() + args.drain_s
    while time.monotonic() < deadline:
        count = reader.decided()
        if count >= events_in:
            break
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > args.stall_s:
            log(f"no new decision for {args.stall_s:.0f} s; stopping the drain at {count:,}")
            break
        stack.check_alive()
        table.sample_memory()
        time.sleep(0.25)
    drained = time.monotonic()
    complete = reader.decided() >= events_in
    # The outbox dispatcher sends what the last decisions raised within a second or two.
    alerts_seen, settle_deadline = -1, time.monotonic() + 10
    while time.monotonic() < settle_deadline:
        now_seen = len(stack.receiver.state.events)
        if now_seen == alerts_seen:
            break
        alerts_seen = now_seen
        time.sleep(2.0)
    sampler.stop()
    reader.stop()
    features.stop()
    last = sampler.sample()
    usage, machine_busy = table.finish({"generator": gen_cpu})
    return {
        "ledger": ledger,
        "event_to_features": features.overall_latency(),
        "samples": [*sampler.samples, last],
        "missed_samples": sampler.missed,
        "before": before,
        "generated": generated,
        "injected": injected,
        "achieved": achieved,
        "events_in": events_in,
        "started_wall": started_wall,
        "generator_s": generator_done - started,
        "drain_s": drained - generator_done,
        "drain_complete": complete,
        "window_s": time.monotonic() - started,
        "usage": usage,
        "machine_busy": machine_busy,
        "load_at_start": load_at_start,
        "alerts": list(stack.receiver.state.events),
        "router_group": ROUTER_GROUP,
        "ingest_group": cfg.ingest.group_id,
        "topics": topics,
    }


def build_report(raw: dict[str, Any], args: argparse.Namespace, load_before: tuple[float, ...]
                 ) -> dict[str, Any]:  # fmt: skip
    """The JSON report from what `drive` recorded."""
    ledger: DecisionLedger = raw["ledger"]
    topics = raw["topics"]
    before: OffsetSample = raw["before"]
    samples: list[OffsetSample] = raw["samples"]
    produced = {t: v - before.end[t] for t, v in samples[-1].end.items()}
    events_in = raw["events_in"]
    read_s, to_decided, to_read = ledger.latencies()
    det = detection(ledger, events_in)
    alerts = alert_times(raw["alerts"], since_ms=round(raw["started_wall"] * 1000))
    # Sustained rates leave out the generator's start-up and the first seconds of load.
    window = (first_growth(samples, topics.events.name) + args.warmup_s, raw["generator_s"])
    ev_rates = rates(samples, topics.events.name)
    feat_rates = rates(samples, topics.features.name)
    dec_rates = rates(samples, topics.scores.name)
    ingest_lag = lag(samples, raw["ingest_group"], topics.events.name)
    router_lag = lag(samples, raw["router_group"], topics.features.name)
    # From the first event's time to the last decision's arrival: the whole run's rate.
    span_s = float(read_s.max() - (read_s - to_read / 1000.0).min()) if read_s.size else 0.0
    usage = {name: vars(u) for name, u in raw["usage"].items()}
    ours = sum(u["cpu_s"] for u in usage.values())
    lost = lost_events(ledger, events_in)
    lat_decided = percentiles(to_decided)
    lat_visible = percentiles(to_read)
    sustained_decisions = sustained(dec_rates, *window)
    report: dict[str, Any] = {
        "benchmark": "e2e",
        "target": {
            "rate": args.rate,
            "seconds": args.seconds,
            "strategy": args.strategy,
            "entities": args.entities,
            "seed": args.seed,
        },
        "machine": {
            "cores": os.cpu_count(),
            "load_avg_before": list(load_before),
            "load_avg_at_start": list(raw["load_at_start"]),
            "load_avg_after": list(os.getloadavg()),
            "window_s": round(raw["window_s"], 1),
            "cpu_busy_s": round(raw["machine_busy"], 1),
            "cpu_ours_s": round(ours, 1),
            "cpu_others_s": round(max(raw["machine_busy"] - ours, 0.0), 1),
            "shared_with": "broker, generator, ingest, router, model server and this reader "
            "run on the same cores; cpu_others_s is what other work on the machine used",
            "offset_samples_missed": raw.get("missed_samples", []),
        },
        "events": {
            "generated_reported": raw["generated"],
            "in_topic": events_in,
            "injected_anomalies": raw["injected"],
            "features": produced[topics.features.name],
            "dead_letters": produced[topics.dlq.name],
            "decision_records": ledger.records,
            "decided_distinct": det.decided,
            "duplicates": ledger.records - ledger.foreign - det.decided,
            "foreign": ledger.foreign,
            "degraded": ledger.degraded,
            "unreadable_messages": ledger.unreadable,
            "lost": lost,
        },
        "throughput": {
            "achieved_generation_per_s": raw["achieved"],
            "window_s": list(window),
            "sustained_events_per_s": round(sustained(ev_rates, *window)),
            "sustained_features_per_s": round(sustained(feat_rates, *window)),
            "sustained_decisions_per_s": round(sustained_decisions),
            "overall_decisions_per_s": round(det.decided / span_s) if span_s > 0 else 0,
            "drain_s": round(raw["drain_s"], 1),
            "drain_complete": raw["drain_complete"],
        },
        "latency_ms": {
            "event_to_features": raw.get("event_to_features", {}),
            "event_to_decision": lat_decided,
            "event_to_decision_visible": lat_visible,
            "event_to_alert_page": alerts.page_latency_ms,
        },
        "alerts": {"pages": alerts.pages, "updates": alerts.updates, "resolves": alerts.resolves},
        "lag": {
            "ingest_max": max((v for _, v in ingest_lag), default=0),
            "ingest_final": ingest_lag[-1][1] if ingest_lag else 0,
            "router_max": max((v for _, v in router_lag), default=0),
            "router_final": router_lag[-1][1] if router_lag else 0,
        },
        "detection": vars(det),
        "processes": usage,
        "series": {
            "t": [round(s.t, 2) for s in samples],
            "events_per_s": [round(r) for _, r in ev_rates],
            "features_per_s": [round(r) for _, r in feat_rates],
            "decisions_per_s": [round(r) for _, r in dec_rates],
            "ingest_lag": [v for _, v in ingest_lag],
            "router_lag": [v for _, v in router_lag],
            "latency_decided": latency_over_time(read_s, to_decided, raw["started_wall"]),
            "latency_visible": latency_over_time(read_s, to_read, raw["started_wall"]),
        },
    }
    report["targets"] = targets(report, sustained_decisions)
    return report


def targets(report: dict[str, Any], sustained_decisions: float) -> list[dict[str, Any]]:
    """The issue's goals against what was measured."""
    rate = report["target"]["rate"]
    ev, lat = report["events"], report["latency_ms"]
    p99 = lat["event_to_decision"].get("p99", float("inf"))
    p99_visible = lat["event_to_decision_visible"].get("p99", float("inf"))
    p99_alert = lat["event_to_alert_page"].get("p99", float("inf"))
    return [
        {"what": "sustained decisions/s", "goal": f">= {rate:,.0f}",
         "measured": f"{sustained_decisions:,.0f}", "met": sustained_decisions >= 0.98 * rate},
        {"what": "lost events (in - decided)", "goal": "0", "measured": f"{ev['lost']:,}",
         "met": ev["lost"] == 0},
        {"what": "p99 event -> decision (decided_at)", "goal": "<= 500 ms",
         "measured": f"{p99:,.0f} ms", "met": p99 <= 500},
        {"what": "p99 event -> decision visible on scores", "goal": "<= 500 ms",
         "measured": f"{p99_visible:,.0f} ms", "met": p99_visible <= 500},
        {"what": "p99 event -> alert (page received)", "goal": "<= 1,000 ms",
         "measured": f"{p99_alert:,.0f} ms", "met": p99_alert <= 1_000},
    ]  # fmt: skip


def write_outputs(report: dict[str, Any], out_dir: Path) -> str:
    """report.json, report.md and the plots; returns the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out_dir / "report.md").write_text(table + "\n")
    plots(report, out_dir)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=50_000, help="target events/s")
    parser.add_argument("--seconds", type=float, default=60, help="how long to generate")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "var" / "bench_e2e")
    parser.add_argument("--strategy", default="cascade", choices=STRATEGIES)
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--model-store",
        type=Path,
        default=ROOT / "model_store",
        help="registry to serve (trained there first if it is empty)",
    )
    parser.add_argument("--train-events", type=int, default=1_000_000)
    parser.add_argument(
        "--warmup-s", type=float, default=5.0, help="seconds left out of the sustained rates"
    )
    parser.add_argument(
        "--drain-s",
        type=float,
        default=180.0,
        help="longest wait for the last decisions after the generator stops",
    )
    parser.add_argument(
        "--stall-s",
        type=float,
        default=30.0,
        help="stop draining when no decision arrives for this long",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="only redraw the table and plots of a saved report.json",
    )
    args = parser.parse_args(argv)

    if args.render is not None:
        report = json.loads(args.render.read_text())
        print(write_outputs(report, args.render.parent))
        return 0
    load_before = os.getloadavg()
    shutil.rmtree(args.out_dir / "stack", ignore_errors=True)  # fresh outbox, store, logs
    with platform(options(args)) as stack:
        raw = drive(stack, args)
    report = build_report(raw, args, load_before)
    table = write_outputs(report, args.out_dir)
    summary = {k: v for k, v in report.items() if k != "series"}
    print(json.dumps(summary, indent=2))
    print()
    print(table)
    log(f"report, table and plots in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
