"""Ingest benchmark: generator -> real broker -> ingest service -> features + Feast online store.

For each online store (SQLite, Redis) it starts fresh topics, the ingest service as its own
process, and the generator (its own process) at a target rate for a fixed time, while this
process reads `features` like any downstream consumer. It reports the sustained rate of feature
vectors, event-to-features latency (from the events' own timestamps), the final consumer lag,
and the CPU seconds of every process involved. Everything shares this machine's cores: the
broker, the generator, the ingest service and this reader; the table says so.

    python loadtest/bench_ingest.py --rate 50000 --seconds 60 --stores sqlite,redis

`--replicas N` starts N ingest processes in one consumer group (the partitions, and their
window state, are spread over them). `--baseline DIR` runs, for every store, the ingest service
of another checkout first (e.g. `git archive <commit> | tar -x -C DIR`) and then this one, on
the same broker with fresh topics, so that before/after are measured side by side under the same
load on the shared cores; the report gives the ratios and the load average around each run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from local_kafka import LocalKafka, free_port  # noqa: E402
from local_redis import LocalRedis  # noqa: E402
from pipeline_monitor import PipelineMonitor, scrape  # noqa: E402

from loadtest.bench_output import emit  # noqa: E402
from loadtest.procstat import load_average, process_cpu_seconds  # noqa: E402
from services.common.config import PlatformConfig, dump_config  # noqa: E402
from services.common.kafka.clients import make_admin  # noqa: E402
from services.common.kafka.topics import ensure_topics, pipeline_topics  # noqa: E402


def config_for(bootstrap: str, store: str, redis_url: str | None, work: Path) -> PlatformConfig:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    base = dump_config(PlatformConfig())
    base["kafka"]["bootstrap_servers"] = bootstrap
    for spec in base["kafka"]["topics"].values():
        if isinstance(spec, dict):
            spec["name"] = f"{prefix}.{spec['name']}"
    base["ingest"].update({"group_id": f"{prefix}-ingest", "ops_port": free_port()})
    base["feast"]["registry_path"] = str(work / f"{prefix}-registry.db")
    if store == "redis":
        assert redis_url is not None
        base["feast"]["online_store"] = {
            "type": "redis",
            "connection_string": redis_url.removeprefix("redis://").split("/")[0],
        }
    else:
        base["feast"]["online_store"] = {"type": "sqlite", "path": str(work / f"{prefix}.db")}
    return PlatformConfig(**base)


def run_one(
    store: str,
    bootstrap: str,
    broker_pid: int | None,
    redis: LocalRedis | None,
    args: argparse.Namespace,
    variant: str = "current",
    code_root: Path = ROOT,
) -> dict[str, Any]:
    work = ROOT / "var" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    cfg = config_for(bootstrap, store, redis.url if redis else None, work)
    ensure_topics(make_admin(cfg.kafka), pipeline_topics(cfg.kafka.topics))
    python = [sys.executable, "-m", "services.cli.main"]
    replicas: list[tuple[subprocess.Popen[bytes], int]] = []
    logs = []
    load_before = load_average()
    monitor = PipelineMonitor(cfg)
    try:
        for r in range(args.replicas):
            # Same group and store, own ops port: replicas of one deployment.
            replica_cfg = cfg.model_copy(
                update={"ingest": cfg.ingest.model_copy(update={"ops_port": free_port()})}
            )
            config_file = work / f"{cfg.ingest.group_id}-{r}.yaml"
            config_file.write_text(yaml.safe_dump(dump_config(replica_cfg)))
            log = (work / f"{cfg.ingest.group_id}-{r}.log").open("wb")
            logs.append(log)
            proc = subprocess.Popen(
                [*python, "ingest", "-c", str(config_file), "--log-level", "WARNING"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=code_root,  # `-m` imports the service from the checkout being measured
                start_new_session=True,
            )
            replicas.append((proc, replica_cfg.ingest.ops_port))
        for proc, port in replicas:
            _wait_ready(port, proc)
        monitor.start()
        pids: dict[str, int | None] = {
            **{f"ingest{r}": p.pid for r, (p, _) in enumerate(replicas)},
            "broker": broker_pid,
            "bench reader": os.getpid(),
        }
        cpu0 = {k: process_cpu_seconds(p) for k, p in pids.items() if p}
        print(
            f"[bench] {store} ({variant}, {args.replicas} replica(s)): generating "
            f"{args.rate:,.0f} events/s for {args.seconds:.0f} s",
            file=sys.stderr,
        )
        gen = subprocess.Popen(
            [
                *python,
                "generate",
                "-c",
                str(work / f"{cfg.ingest.group_id}-0.yaml"),
                "--to",
                "kafka",
                "--rate",
                str(args.rate),
                "--seconds",
                str(args.seconds),
                "--entities",
                str(args.entities),
                "--quiet",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        started = time.monotonic()
        samples = []
        gen_cpu = 0.0
        urls = [f"http://127.0.0.1:{port}/metrics" for _, port in replicas]
        lag_of = _CommittedLag(cfg)
        while gen.poll() is None:
            time.sleep(2.0)
            gen_cpu = max(gen_cpu, process_cpu_seconds(gen.pid))
            snap = monitor.snapshot()
            snap.consumer_lag = lag_of()
            samples.append(snap)
            print(
                f"[bench] {store} t={snap.elapsed_s:5.1f}s features {snap.features_per_s:>9,.0f}/s"
                f" lag {snap.consumer_lag or 0:>9,.0f}"
                f" p99 {snap.latency_ms.get('p99', float('nan')):7.0f} ms",
                file=sys.stderr,
            )
        gen_out = gen.stdout.read().decode() if gen.stdout else ""
        generated = _generated_count(gen_out)
        deadline = time.monotonic() + 60
        while monitor.snapshot().features < generated and time.monotonic() < deadline:
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        cpu1 = {k: process_cpu_seconds(p) for k, p in pids.items() if p}
        final = monitor.snapshot()
        # Offsets are committed once features and online-store rows are durable: the time to
        # a zero committed lag after the last feature is how far the online store trailed.
        lag_at_end = lag_of()
        caught_up = time.monotonic()
        while lag_of() > 0 and time.monotonic() < caught_up + 60:
            time.sleep(0.25)
        committed_after = time.monotonic() - caught_up
        online = _online_writes(urls)
        lat = monitor.overall_latency()
        steady = [s.features_per_s for s in samples[2:-1]] or [s.features_per_s for s in samples]
        cpu = {k: round(cpu1[k] - cpu0[k], 1) for k in cpu1}
        ingest_cpu = sum(v for k, v in cpu.items() if k.startswith("ingest"))
        return {
            "store": store,
            "variant": variant,
            "code_root": str(code_root),
            "replicas": args.replicas,
            "target_rate": args.rate,
            "seconds": args.seconds,
            "entities": args.entities,
            "generated": generated,
            "features": final.features,
            "dead_letters": final.dead_letters,
            "sustained_features_per_s": sorted(steady)[len(steady) // 2] if steady else 0.0,
            "overall_features_per_s": final.features / elapsed,
            "event_to_features_ms": lat,
            "max_consumer_lag": max((s.consumer_lag or 0 for s in samples), default=0),
            "final_consumer_lag": lag_at_end,
            "all_committed_after_s": round(committed_after, 1),
            "online_store": online,
            "cpu_seconds": {**cpu, "ingest": round(ingest_cpu, 1), "generator": round(gen_cpu, 1)},
            "ingest_cpu_us_per_event": round(ingest_cpu / max(final.features, 1) * 1e6, 2),
            "load_average_before_after": [load_before[0], load_average()[0]],
            "wall_seconds": round(elapsed, 1),
        }
    finally:
        monitor.stop()
        for proc, _ in replicas:
            proc.terminate()
        for proc, _ in replicas:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


class _CommittedLag:
    """Events not yet committed by the ingest group: high watermark minus committed offset.

    Read from the broker (a consumer that never joins the group), so it counts what a restart
    would re-deliver, exactly, and not the 5-s-old statistics the services report.
    """

    def __init__(self, cfg: PlatformConfig) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": cfg.kafka.bootstrap_servers,
                "group.id": cfg.ingest.group_id,
                "enable.auto.commit": False,
            }
        )
        self._topic = cfg.kafka.topics.events.name
        self._partitions = [
            TopicPartition(self._topic, p) for p in range(cfg.kafka.topics.events.partitions)
        ]

    def __call__(self) -> int:
        lag = 0
        for tp in self._consumer.committed(self._partitions, timeout=10):
            low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag


def _online_writes(urls: list[str]) -> dict[str, float]:
    """Online-store writes of all replicas: count, rows and mean seconds per write."""
    names = {
        "anomaly_ingest_online_write_seconds_sum",
        "anomaly_ingest_online_write_seconds_count",
        "anomaly_ingest_online_rows_total",
    }
    total: dict[str, float] = {}
    for url in urls:
        for name, value in scrape(url, names).items():
            total[name] = total.get(name, 0.0) + value
    writes = total.get("anomaly_ingest_online_write_seconds_count", 0.0)
    return {
        "writes": writes,
        "rows": total.get("anomaly_ingest_online_rows_total", 0.0),
        "mean_write_s": round(
            total.get("anomaly_ingest_online_write_seconds_sum", 0.0) / max(writes, 1), 3
        ),
    }


def _generated_count(output: str) -> int:
    """Events sent, from the generator's summary line `generated N events to ...`."""
    match = re.search(r"generated ([\d,]+) events", output)
    if match is None:
        raise RuntimeError(f"cannot read the generator's summary:\n{output}")
    return int(match.group(1).replace(",", ""))


def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("ingest exited during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("ingest not ready in 120 s")


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| store | variant | replicas | target/s | sustained features/s | overall/s | p50 ms "
        "| p99 ms | max / final lag | committed after s | online writes (mean s) "
        "| ingest CPU µs/event "
        "| CPU s (ingest / broker / generator / reader) | load avg before→after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lat = r["event_to_features_ms"]
        cpu = r["cpu_seconds"]
        load = r["load_average_before_after"]
        rows.append(
            f"| {r['store']} | {r['variant']} | {r['replicas']} | {r['target_rate']:,.0f} | "
            f"{r['sustained_features_per_s']:,.0f} | {r['overall_features_per_s']:,.0f} | "
            f"{lat.get('p50', 0):,.0f} | {lat.get('p99', 0):,.0f} | "
            f"{r['max_consumer_lag'] or 0:,.0f} / {r['final_consumer_lag'] or 0:,.0f} | "
            f"{r['all_committed_after_s']} | {r['online_store']['writes']:.0f} "
            f"({r['online_store']['mean_write_s']}) | "
            f"{r['ingest_cpu_us_per_event']} | {cpu.get('ingest')} / {cpu.get('broker')} / "
            f"{cpu.get('generator')} / {cpu.get('bench reader')} | {load[0]} → {load[1]} |"
        )
    return "\n".join(rows)


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Current over baseline, per store (only when a baseline ran)."""
    out = []
    for r in results:
        if r["variant"] != "current":
            continue
        base = next(
            (b for b in results if b["store"] == r["store"] and b["variant"] == "baseline"), None
        )
        if base is None:
            continue
        out.append(
            {
                "store": r["store"],
                "sustained_features_per_s": round(
                    r["sustained_features_per_s"] / max(base["sustained_features_per_s"], 1), 2
                ),
                "ingest_cpu_per_event": round(
                    r["ingest_cpu_us_per_event"] / max(base["ingest_cpu_us_per_event"], 1e-9), 2
                ),
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=50_000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--replicas", type=int, default=1, help="ingest processes in one group")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="checkout whose ingest service runs first, for a side-by-side comparison",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "services" / "ingest").is_dir():
        parser.error(f"--baseline {args.baseline} has no services/ingest (not a checkout?)")

    broker = LocalKafka(port=free_port())
    redis = LocalRedis(port=free_port()) if "redis" in args.stores else None
    results = []
    try:
        bootstrap = broker.start()
        if redis:
            redis.start()
        for store in args.stores.split(","):
            if args.baseline is not None:
                results.append(
                    run_one(
                        store.strip(),
                        bootstrap,
                        broker.pid(),
                        redis,
                        args,
                        "baseline",
                        args.baseline.resolve(),
                    )
                )
            results.append(run_one(store.strip(), bootstrap, broker.pid(), redis, args))
    finally:
        if redis:
            redis.stop()
        broker.stop()
        broker.wipe()
    report = {
        "benchmark": "ingest",
        "machine": f"{os.cpu_count()} cores; broker, generator, ingest and reader share them",
        "results": results,
        "current_over_baseline": ratios(results),
    }
    emit(report, table(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
