"""Ingest benchmark: generator -> real broker -> ingest service -> features + Feast online store.

For each online store (SQLite, Redis) it starts fresh topics, the ingest service as its own
process, and the generator (its own process) at a target rate for a fixed time, while this
process reads `features` like any downstream consumer. It reports the sustained rate of feature
vectors, event-to-features latency (from the events' own timestamps), the final consumer lag,
and the CPU seconds of every process involved. Everything shares this machine's cores: the
broker, the generator, the ingest service and this reader; the table says so.

    python loadtest/bench_ingest.py --rate 50000 --seconds 60 --stores sqlite,redis
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from local_kafka import LocalKafka, free_port  # noqa: E402
from local_redis import LocalRedis  # noqa: E402
from pipeline_monitor import PipelineMonitor  # noqa: E402

from services.common.config import PlatformConfig, dump_config  # noqa: E402
from services.common.kafka.clients import make_admin  # noqa: E402
from services.common.kafka.topics import ensure_topics, pipeline_topics  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / TICK


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
) -> dict[str, Any]:
    work = ROOT / "var" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    cfg = config_for(bootstrap, store, redis.url if redis else None, work)
    ensure_topics(make_admin(cfg.kafka), pipeline_topics(cfg.kafka.topics))
    config_file = work / f"{cfg.ingest.group_id}.yaml"
    config_file.write_text(yaml.safe_dump(dump_config(cfg)))
    log = (work / f"{cfg.ingest.group_id}.log").open("wb")
    python = [sys.executable, "-m", "services.cli.main"]
    ingest = subprocess.Popen(
        [*python, "ingest", "-c", str(config_file), "--log-level", "WARNING"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
    monitor = PipelineMonitor(cfg, f"http://127.0.0.1:{cfg.ingest.ops_port}/metrics")
    try:
        _wait_ready(cfg.ingest.ops_port, ingest)
        monitor.start()
        pids = {"ingest": ingest.pid, "broker": broker_pid, "bench reader": os.getpid()}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items() if p}
        print(
            f"[bench] {store}: generating {args.rate:,.0f} events/s for {args.seconds:.0f} s",
            file=sys.stderr,
        )
        gen = subprocess.Popen(
            [
                *python,
                "generate",
                "-c",
                str(config_file),
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
        while gen.poll() is None:
            time.sleep(2.0)
            gen_cpu = max(gen_cpu, cpu_seconds(gen.pid))
            snap = monitor.snapshot()
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
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items() if p}
        final = monitor.snapshot()
        lat = monitor.overall_latency()
        steady = [s.features_per_s for s in samples[2:-1]] or [s.features_per_s for s in samples]
        return {
            "store": store,
            "target_rate": args.rate,
            "seconds": args.seconds,
            "entities": args.entities,
            "generated": generated,
            "features": final.features,
            "dead_letters": final.dead_letters,
            "sustained_features_per_s": sorted(steady)[len(steady) // 2] if steady else 0.0,
            "overall_features_per_s": final.features / elapsed,
            "event_to_features_ms": lat,
            "final_consumer_lag": final.consumer_lag,
            "cpu_seconds": {
                **{k: round(cpu1[k] - cpu0[k], 1) for k in cpu1},
                "generator": round(gen_cpu, 1),
            },
            "wall_seconds": round(elapsed, 1),
        }
    finally:
        monitor.stop()
        ingest.terminate()
        try:
            ingest.wait(30)
        except subprocess.TimeoutExpired:
            ingest.kill()
        log.close()


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
        "| store | target/s | sustained features/s | overall/s | p50 ms | p99 ms | final lag "
        "| CPU s (ingest / broker / generator / reader) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lat = r["event_to_features_ms"]
        cpu = r["cpu_seconds"]
        rows.append(
            f"| {r['store']} | {r['target_rate']:,.0f} | {r['sustained_features_per_s']:,.0f} | "
            f"{r['overall_features_per_s']:,.0f} | {lat.get('p50', 0):,.0f} | "
            f"{lat.get('p99', 0):,.0f} | "
            f"{r['final_consumer_lag'] or 0:,.0f} | {cpu.get('ingest')} / {cpu.get('broker')} / "
            f"{cpu.get('generator')} / {cpu.get('bench reader')} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=50_000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    broker = LocalKafka(port=free_port())
    redis = LocalRedis(port=free_port()) if "redis" in args.stores else None
    results = []
    try:
        bootstrap = broker.start()
        if redis:
            redis.start()
        for store in args.stores.split(","):
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
    }
    print(json.dumps(report, indent=2))
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
