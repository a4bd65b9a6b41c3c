"""The main job: the whole platform on this machine, on embedded defaults, with a live summary.

Starts a real Kafka broker (assembled from Maven Central on first use), creates the topics,
registers the Feast definitions (SQLite online store), trains and registers the three models
if the registry has none, then starts the model server (KServe V2, all three models), a local
PagerDuty receiver, the ingest service and the router as their own processes, streams the
labelled generator into `events` at the chosen rate and prints, every two seconds, events and
decisions per second, consumer lag, event-to-features and event-to-decision latency, alerts by
anomaly type and TPR/FPR against the injected anomalies. Ctrl-C (or the end of `--seconds`)
stops everything it started, in order, and leaves no process behind.

Each run starts from empty pipeline state (the broker's data of the previous run is wiped
before the broker starts): the generated stream is new each run and starts at the wall clock,
so window state restored from a run hours ago describes another time of day of the same
entities, and its baselines then read the daily profile's move as slow drift (measured: FPR
2.16% on the run after a three-hour pause, 0.60% on the run right after it). `--keep-state`
keeps the topics and restores that state instead (the restart path: static group members,
changelog restore). A broker that is already running is never wiped.

    python scripts/run_local.py [--rate 5000] [--seconds 60] [--port 9092] [--keep-state]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from local_platform import STRATEGIES, PlatformOptions, make_logger, platform  # noqa: E402
from pipeline_monitor import (  # noqa: E402
    DecisionMonitor,
    PipelineMonitor,
    format_decisions,
    format_snapshot,
)

log = make_logger("run-local")


def options(args: argparse.Namespace) -> PlatformOptions:
    """The main job's ports and folders (README defaults unless given)."""
    return PlatformOptions(
        kafka_port=args.port,
        ops_port=args.ops_port,
        receiver_port=args.receiver_port,
        train_events=args.train_events,
        train_event_rate=args.rate,
        strategy=args.strategy,
        fresh_broker=not args.keep_state,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=5_000, help="events/s to generate")
    parser.add_argument(
        "--seconds", type=float, default=60, help="how long to stream (0 = until Ctrl-C)"
    )
    parser.add_argument("--port", type=int, default=9092, help="Kafka port on 127.0.0.1")
    parser.add_argument("--ops-port", type=int, default=9100, help="ingest health/metrics port")
    parser.add_argument("--receiver-port", type=int, default=8300, help="PagerDuty receiver port")
    parser.add_argument(
        "--train-events", type=int, default=1_000_000,
        help="events to train on when no model is registered (at the run's --rate)",
    )  # fmt: skip
    parser.add_argument(
        "--strategy", default="cascade", choices=STRATEGIES,
        help="ensemble strategy (cascade: the Transformer only where the others are unsure)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-state", action="store_true",
        help="keep the previous run's topics and window state (default: start from empty state)",
    )  # fmt: skip
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from services.generator import GenerateRequest, Output, Progress, StreamSpec, generate

    with platform(options(args)) as stack:
        cfg = stack.config
        monitor = PipelineMonitor(cfg, f"http://127.0.0.1:{args.ops_port}/metrics").start()
        decisions = DecisionMonitor(cfg).start()
        done = threading.Event()

        def report() -> None:
            while not done.wait(2.0):
                print(format_snapshot(monitor.snapshot()), flush=True)
                print(format_decisions(decisions.snapshot()), flush=True)

        def on_progress(p: Progress) -> None:
            monitor.generated = p.events
            monitor.generated_per_s = p.events_per_s
            monitor.injected = p.anomalies

        reporter = threading.Thread(target=report, daemon=True)
        reporter.start()
        spec = StreamSpec(seed=args.seed, entities=args.entities, rate=args.rate)
        request = GenerateRequest(
            spec=spec,
            output=Output.KAFKA,
            pace_rate=args.rate,
            max_wall_s=args.seconds or None,
            start_now=True,
        )
        result = generate(request, cfg.kafka, on_progress)
        # Progress arrives every few chunks; the lines printed while draining show the total.
        monitor.generated, monitor.injected = result.events, result.anomaly_total
        log(
            f"generator finished: {result.events:,} events at {result.events_per_s:,.0f}/s"
            f"{' (interrupted)' if result.interrupted else ''}; draining"
        )
        deadline = time.monotonic() + 60
        while decisions.snapshot().decisions < result.events and time.monotonic() < deadline:
            time.sleep(0.5)
        done.set()
        final = monitor.snapshot()
        decided = decisions.snapshot()
        lat = monitor.overall_latency()
        decision_lat = decisions.overall_latency()
        monitor.stop()
        decisions.stop()
        print("\n== summary")
        print(
            f"events generated      {result.events:>12,}  ({result.events_per_s:,.0f}/s achieved)"
        )
        print(f"anomalies injected    {result.anomaly_total:>12,}")
        print(f"feature vectors       {final.features:>12,}")
        print(f"dead letters          {final.dead_letters:>12,}")
        print(f"decisions             {decided.decisions:>12,}  (degraded {decided.degraded:,})")
        for name, value in (("event->features", lat), ("event->decision", decision_lat)):
            if value:
                print(
                    f"{name:<22}p50 {value['p50']:,.0f} ms   p99 {value['p99']:,.0f} ms   "
                    f"max {value['max']:,.0f} ms"
                )
        if decided.tpr is not None and decided.fpr is not None:
            print(f"TPR / FPR             {decided.tpr:.1%} / {decided.fpr:.2%}")
        alerts = ", ".join(f"{k} {v:,}" for k, v in sorted(decided.alerts_by_type.items()))
        print(f"alerts by type        {alerts or 'none'}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
