#!/usr/bin/env python3
"""Routing-service benchmark: the stream door's decisions/s and the REST and gRPC doors'
latency under an open-loop load, against a real broker, a real model server and a real Feast
online store (issue #6: stream >= 50,000 decisions/s; REST single-event p99 <= 10 ms at
1,000 requests/s, Feast read and three model calls included).

    python loadtest/bench_router.py                                  # ~10 minutes
    python loadtest/bench_router.py --baseline-rev 1750516   # + the old router, side by side
    python loadtest/bench_router.py --parts stream --events 200000 --strategies cascade

What runs, each in its own process: a single-node Kafka broker (scripts/local_kafka.py, free
port), one model server (`anomaly serve isolation_forest,xgboost,transformer`) on a registry
trained like the integration tests' (or `--model-store`), the router (`anomaly router`), and
the load generator. This process only prepares data and reads results.

(a) stream: the `features` topic is filled once with `--events` feature vectors (the shared
    window-feature engine on a generated stream, encoded as ingest encodes them), taken
    after `--warmup-events` (default: the served XGBoost's fit part), so the router meets
    features as old as those the models were calibrated on, as in production. For each
    strategy and router build, a router with the doors off and a fresh consumer group scores
    the whole topic into a fresh `scores` topic; decisions/s = decisions / (last - first
    produce timestamp on `scores`). Every event id must come back (at-least-once), and the
    CPU seconds of the router and the model server are read from /proc.
(b) REST and (c) gRPC: a router with the stream off and the doors on; the load generator
    sends single-event requests by entity id (features read from the online store, three
    model calls) on a fixed schedule (`--rate` per second for `--seconds`), and measures
    every latency from the *scheduled* send time, so a stalled router cannot hide its queue
    (coordinated omission).

`--baseline-rev REV` runs the router of an older commit (`git archive REV services`, into
var/bench) through the same measurements, interleaved with the current one, so both see the
same machine. Everything shares this machine's cores; the load average before and after and
the CPU seconds per process are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from local_kafka import LocalKafka, free_port  # noqa: E402

from loadtest.bench_output import emit  # noqa: E402
from loadtest.procstat import load_average, process_cpu_seconds  # noqa: E402

WORK = ROOT / "var" / "bench" / "router"
TARGETS = {"stream_decisions_per_s": 50_000, "rest_p99_ms": 10.0}
CURRENT = "current"


# --------------------------------------------------------------------------- data and models


@dataclass(frozen=True)
class FeatureData:
    """Feature vectors of a generated stream, as ingest would have produced them."""

    event_ids: list[str]
    entity_ids: list[str]
    ts: npt.NDArray[np.int64]
    matrix: npt.NDArray[np.float32]


def feature_data(events: int, entities: int, seed: int, warmup: int) -> FeatureData:
    """The shared window-feature engine over a generated stream (no second feature path):
    the last `events` vectors of a stream whose first `warmup` events only warm it up."""
    from models.dataset import generated_features
    from services.generator import StreamSpec

    spec = StreamSpec(seed=seed, entities=entities, anomaly_rate=0.01)
    data = generated_features(spec, warmup + events)
    names = data.entity_names
    keep = slice(warmup, None)
    return FeatureData(
        event_ids=list(data.event_ids[keep]),
        entity_ids=[names[c] for c in data.entity[keep].tolist()],
        ts=data.ts[keep].astype(np.int64),
        matrix=np.ascontiguousarray(data.matrix[keep]),
    )


def fit_events(store: Path) -> int:
    """Events of its training stream before the served XGBoost's hold-out part (warm-up and
    fit part): how far into a stream its calibration is.

    Window features and entity baselines keep changing while a stream is young (the 1 h
    windows are not even full after 1M events at 1,000/s); the models are fitted and
    calibrated on a stream that ran that long. A stream scored from its first event looks
    unusual to them: on the first 300k events, 43% of calibrated XGBoost scores fell in
    the cascade's uncertain band (~10% on a stream as old as the fit part), so the bench
    would time the Transformer on traffic production never sends it.
    """
    from models.metadata import calibration_stream_age
    from models.registry import Registry
    from services.common.model_names import ModelName

    registry = Registry(store)
    version = registry.resolve(ModelName.XGBOOST)
    return calibration_stream_age(registry.metadata(ModelName.XGBOOST, version))


def train_store(root: Path) -> Path:
    """A registry like the integration tests' `model_store` (small models, seconds)."""
    from models.dataset import generated_features
    from models.registry import Registry
    from models.training import small_settings, train_all
    from services.generator import StreamSpec

    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    data = generated_features(StreamSpec(seed=5, entities=300, anomaly_rate=0.03), 20_000)
    train_all(data, small_settings(seed=1), Registry(root))
    (root / ".complete").write_text("ok\n")
    return root


# --------------------------------------------------------------------------- processes


def python_cmd() -> list[str]:
    return [sys.executable, "-m", "services.cli.main"]


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited during start-up:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready in 180 s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        if PROFILE:  # py-spy writes its stacks on SIGINT; the router stops on it too
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


@dataclass(frozen=True)
class ModelServer:
    proc: subprocess.Popen[bytes]
    grpc_target: str
    http_port: int


def start_model_server(store: Path) -> ModelServer:
    config = WORK / "serve.yaml"
    config.write_text(yaml.safe_dump({"model_store": {"path": str(store)}}))
    http, grpc_port = free_port(), free_port()
    log = WORK / "serve.log"
    proc = subprocess.Popen(
        [*python_cmd(), "serve", "isolation_forest,xgboost,transformer", "-c", str(config),
         "--http-port", str(http), "--grpc-port", str(grpc_port), "--log-level", "WARNING"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    wait_http(f"http://127.0.0.1:{http}/v2/health/ready", proc, "model server", log)
    return ModelServer(proc, f"127.0.0.1:{grpc_port}", http)


def baseline_tree(rev: str) -> Path:
    """The router code of `rev` (only `services/`, read with `git archive`)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    target = WORK / f"baseline-{sha}"
    if not (target / "services").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", sha, "services", "models"], cwd=ROOT, check=True,
            capture_output=True,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def shipped_ensemble() -> dict[str, Any]:
    """The vote settings shipped in config/platform.yaml (weights, thresholds, cascade band
    from `anomaly evaluate`): they decide how many events alert and reach the Transformer."""
    shipped = yaml.safe_load((ROOT / "config" / "platform.yaml").read_text())
    ensemble: dict[str, Any] = shipped.get("ensemble", {})
    return ensemble


def router_config(
    bootstrap: str, prefix: str, features_topic: str, models: ModelServer, strategy: str,
    feast: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """Only keys every router build knows (the model forbids unknown ones)."""
    endpoints = {
        m: {"rest_url": f"http://127.0.0.1:{models.http_port}", "grpc_target": models.grpc_target,
            "timeout_ms": 10_000}
        for m in ("isolation_forest", "xgboost", "transformer")
    }  # fmt: skip
    topics = {
        "features": {"name": features_topic},
        "scores": {"name": f"{prefix}.scores"},
        "alerts": {"name": f"{prefix}.alerts"},
    }
    cfg: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "topics": topics},
        "serving": {"endpoints": endpoints},
        "ensemble": {**shipped_ensemble(), "strategy": strategy},
        "router": {"http_port": free_port(), "grpc_port": free_port()},
        "alerts": {"outbox_path": str(WORK / f"{prefix}-outbox.db")},
    }
    if feast is not None:
        cfg["feast"] = feast
    return cfg


PROFILE: list[str] = []
"""`py-spy record` prefix for the router (`--py-spy`): collapsed stacks next to its log."""


def start_router(
    build: str, trees: dict[str, Path], cfg: dict[str, Any], prefix: str, args: Sequence[str]
) -> tuple[subprocess.Popen[bytes], Path]:
    path = WORK / f"{prefix}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = WORK / f"{prefix}.log"
    cwd = trees[build]
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    profile = (
        [*PROFILE, "-o", str(WORK / f"{prefix}.stacks.txt"), "--"] if PROFILE else []
    )  # fmt: skip
    proc = subprocess.Popen(
        [*profile, *python_cmd(), "router", "-c", str(path), "--log-level", "WARNING", *args],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=cwd, env=env,
        start_new_session=True,
    )  # fmt: skip
    return proc, log


# --------------------------------------------------------------------------- (a) stream


def create_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Topics as `anomaly topics create` makes them (32 partitions); the broker creates none."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(t, 32, 1) for t in names]).values():
        f.result()


def fill_features(bootstrap: str, topic: str, data: FeatureData) -> None:
    from confluent_kafka import Producer

    from services.common.features.messages import encode_feature_messages

    create_topics(bootstrap, [topic])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000,
                         "compression.type": "lz4", "partitioner": "murmur2_random",
                         "queue.buffering.max.messages": 1_000_000})  # fmt: skip
    n = len(data.event_ids)
    chunk = 20_000
    for start in range(0, n, chunk):
        stop_ = min(start + chunk, n)
        values = encode_feature_messages(
            data.event_ids[start:stop_], data.ts[start:stop_], int(time.time() * 1000),
            np.zeros(stop_ - start, np.bool_), data.matrix[start:stop_],
        )  # fmt: skip
        for key, value in zip(data.entity_ids[start:stop_], values, strict=True):
            while True:
                try:
                    producer.produce(topic, value=value, key=key.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(120) == 0, "features not all acknowledged"


class Watermarks:
    """Messages on a topic (sum of end offsets), polled with one long-lived consumer."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})

    def count(self) -> int:
        """0 while the topic's partitions have no leader yet (just created)."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            meta = self.consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if meta is None or meta.error is not None:
                return 0
            return sum(
                self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                for p in meta.partitions
            )
        except KafkaException:
            return 0

    def close(self) -> None:
        self.consumer.close()


def read_scores(bootstrap: str, topic: str) -> tuple[set[str], int, int, int, int]:
    """Event ids decided, messages, degraded decisions (a model left out: not a full-ensemble
    figure), first and last produce timestamp (ms) on `topic`."""
    import orjson
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})  # fmt: skip
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in meta.partitions
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        want = sum(ends.values())
        ids: set[str] = set()
        seen, degraded, first, last = 0, 0, 2**62, 0
        deadline = time.monotonic() + 300
        while seen < want and time.monotonic() < deadline:
            for msg in consumer.consume(50_000, timeout=1.0):
                if msg.error() is not None:
                    continue
                seen += 1
                ts = msg.timestamp()[1]
                first, last = min(first, ts), max(last, ts)
                decision = orjson.loads(msg.value() or b"{}")
                ids.add(decision["event_id"])
                degraded += bool(decision["degraded"])
        return ids, seen, degraded, first, last
    finally:
        consumer.close()


def run_stream(
    build: str, strategy: str, trees: dict[str, Path], bootstrap: str, features_topic: str,
    data: FeatureData, models: ModelServer, extra_args: Sequence[str],
) -> dict[str, Any]:  # fmt: skip
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    cfg = router_config(bootstrap, prefix, features_topic, models, strategy, None)
    n = len(data.event_ids)
    scores_topic = cfg["kafka"]["topics"]["scores"]["name"]
    create_topics(bootstrap, [scores_topic, cfg["kafka"]["topics"]["alerts"]["name"]])
    args = ["--no-doors", "--group-id", f"{prefix}-router"]
    if build == CURRENT:
        args += list(extra_args)
    load0 = load_average()
    proc, log = start_router(build, trees, cfg, prefix, args)
    model_cpu0 = process_cpu_seconds(models.proc.pid)
    started = time.monotonic()
    router_cpu = 0.0
    watermarks = Watermarks(bootstrap, scores_topic)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"router exited:\n{log.read_text()[-3000:]}")
            router_cpu = process_cpu_seconds(proc.pid)
            if watermarks.count() >= n:
                break
            if time.monotonic() - started > 900:
                raise RuntimeError(f"router did not finish in 900 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        wall = time.monotonic() - started
        model_cpu = process_cpu_seconds(models.proc.pid) - model_cpu0
    finally:
        watermarks.close()
        rc = stop(proc)
    ids, messages, degraded, first, last = read_scores(bootstrap, scores_topic)
    missing = len(set(data.event_ids) - ids)
    span_s = max((last - first) / 1000.0, 1e-3)
    print(f"[bench] stream {build} {strategy}: {messages:,} decisions in {span_s:.1f} s "
          f"({messages / span_s:,.0f}/s), missing {missing}, degraded {degraded}",
          file=sys.stderr)  # fmt: skip
    return {
        "part": "stream", "build": build, "strategy": strategy, "events": n,
        "decisions": messages, "missing_event_ids": missing,
        "duplicates": messages - len(ids), "degraded": degraded,
        "decisions_per_s": round(messages / span_s),
        "first_to_last_decision_s": round(span_s, 2),
        "wall_s_incl_startup": round(wall, 1),
        "cpu_seconds": {"router": round(router_cpu, 1), "model_server": round(model_cpu, 1)},
        "router_exit_code": rc,
        "load_average_before_after": [load0, load_average()],
    }  # fmt: skip


# --------------------------------------------------------------------------- (b, c) doors


def prepare_feast(data: FeatureData, entities: int) -> tuple[dict[str, Any], list[str]]:
    """An applied Feast repo on SQLite holding the latest features of the first entities."""
    from services.common.config import parse_config
    from services.common.feast_store import OnlineFeatureWriter, apply, open_store

    feast = {
        "repo_path": str(ROOT / "feature_repo"),
        "project": f"bench_router_{uuid.uuid4().hex[:6]}",
        "registry_path": str(WORK / "feast-registry.db"),
        "online_store": {"type": "sqlite", "path": str(WORK / "feast-online.db")},
    }
    cfg = parse_config({"feast": feast}, "bench")
    apply(cfg.feast)
    latest: dict[str, int] = {}
    for i, e in enumerate(data.entity_ids):
        latest[e] = i
    chosen = list(latest)[:entities]
    rows = np.array([latest[e] for e in chosen])
    writer = OnlineFeatureWriter(open_store(cfg.feast), cfg.feast)
    writer.write_latest(chosen, data.ts[rows], data.matrix[rows])
    return feast, chosen


def run_door(
    door: str, build: str, trees: dict[str, Path], bootstrap: str, models: ModelServer,
    feast: dict[str, Any], entities: list[str], args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    cfg = router_config(bootstrap, prefix, f"{prefix}.features", models, "cascade", feast)
    cfg["ensemble"]["strategy"] = args.door_strategy
    proc, log = start_router(build, trees, cfg, prefix, ["--no-stream"])
    out = WORK / f"{prefix}-load.json"
    entities_file = WORK / f"{prefix}-entities.json"
    entities_file.write_text(json.dumps(entities))
    try:
        http = cfg["router"]["http_port"]
        wait_http(f"http://127.0.0.1:{http}/readyz", proc, "router", log)
        target = (f"http://127.0.0.1:{http}/v1/score" if door == "rest"
                  else f"127.0.0.1:{cfg['router']['grpc_port']}")  # fmt: skip
        load0 = load_average()
        router_cpu0 = process_cpu_seconds(proc.pid)
        model_cpu0 = process_cpu_seconds(models.proc.pid)
        gen = subprocess.run(
            [sys.executable, __file__, "load", "--door", door, "--target", target,
             "--rate", str(args.rate), "--seconds", str(args.seconds),
             "--warmup-seconds", str(args.warmup_seconds),
             "--entities-file", str(entities_file), "--out", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=args.seconds * 4 + 120, check=False,
        )  # fmt: skip
        if gen.returncode != 0:
            raise RuntimeError(f"load generator failed:\n{gen.stdout}\n{gen.stderr}")
        router_cpu = process_cpu_seconds(proc.pid) - router_cpu0
        model_cpu = process_cpu_seconds(models.proc.pid) - model_cpu0
        load1 = load_average()
    finally:
        stop(proc)
    result: dict[str, Any] = json.loads(out.read_text())
    lat = result["latency_ms"]
    print(f"[bench] {door} {build}: {result['sent']:,} sent at {args.rate}/s, p50 "
          f"{lat.get('p50', float('nan')):.2f} p99 {lat.get('p99', float('nan')):.2f} ms, "
          f"errors {result['errors']}", file=sys.stderr)  # fmt: skip
    return {
        "part": door, "build": build, "strategy": args.door_strategy, **result,
        "cpu_seconds": {"router": round(router_cpu, 1), "model_server": round(model_cpu, 1),
                        "load_generator": result.get("cpu_seconds")},
        "load_average_before_after": [load0, load1],
    }  # fmt: skip


# --------------------------------------------------------------------------- load generator


async def _open_loop(
    send: Any, rate: float, seconds: float, warmup_s: float, n_entities: int
) -> dict[str, Any]:
    """Requests on a fixed schedule; latency from the scheduled time, not the actual send."""
    loop = asyncio.get_running_loop()
    total = int(rate * (seconds + warmup_s))
    warm = int(rate * warmup_s)
    latencies = np.full(total, np.nan)
    errors: dict[str, int] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        try:
            await send(i % n_entities)
        except Exception as exc:  # every failure is counted and named, never dropped
            if i >= warm:
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                errors[key] = errors.get(key, 0) + 1
            return
        latencies[i] = loop.time() - scheduled

    start = loop.time() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    measured = latencies[warm:] * 1000.0
    ok = measured[~np.isnan(measured)]
    pct = (
        {
            "p50": round(float(np.percentile(ok, 50)), 3),
            "p90": round(float(np.percentile(ok, 90)), 3),
            "p99": round(float(np.percentile(ok, 99)), 3),
            "p99.9": round(float(np.percentile(ok, 99.9)), 3),
            "max": round(float(ok.max()), 3),
        }
        if ok.size
        else {}
    )
    return {
        "sent": total - warm, "ok": int(ok.size),
        "errors": sum(errors.values()), "error_kinds": errors, "latency_ms": pct,
        "rate": rate, "seconds": seconds,
    }  # fmt: skip


def load_main(argv: Sequence[str]) -> int:
    """The load generator (its own process): `bench_router.py load --door rest|grpc ...`."""
    p = argparse.ArgumentParser(prog="bench_router.py load")
    p.add_argument("--door", choices=("rest", "grpc"), required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--warmup-seconds", type=float, default=3.0)
    p.add_argument("--entities-file", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    entities: list[str] = json.loads(a.entities_file.read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def run() -> dict[str, Any]:
        if a.door == "rest":
            import aiohttp

            bodies = [json.dumps({"entity_id": e}).encode() for e in entities]
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
            async with aiohttp.ClientSession(connector=connector) as session:

                async def send(i: int) -> None:
                    async with session.post(
                        a.target, data=bodies[i], headers={"content-type": "application/json"},
                        timeout=aiohttp.ClientTimeout(total=10),
                    ) as r:  # fmt: skip
                        body = await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"HTTP {r.status}: {body[:60]!r}")
                        if b'"decisions"' not in body:
                            raise RuntimeError("answer without decisions")

                return await _open_loop(send, a.rate, a.seconds, a.warmup_seconds, len(entities))
        import grpc

        from services.router import proto

        pb = proto.load()
        requests = [pb.pb2.ScoreRequest(items=[pb.pb2.ScoreItem(entity_id=e)]) for e in entities]
        async with grpc.aio.insecure_channel(a.target) as channel:
            stub = pb.grpc.ScoringStub(channel)

            async def send_grpc(i: int) -> None:
                response = await stub.Score(requests[i], timeout=10)
                if len(response.decisions) != 1:
                    raise RuntimeError("expected one decision")

            return await _open_loop(send_grpc, a.rate, a.seconds, a.warmup_seconds, len(entities))

    result = asyncio.run(run())
    result["cpu_seconds"] = round(process_cpu_seconds(os.getpid()), 1)
    a.out.write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- report


def table(results: list[dict[str, Any]]) -> str:
    rows = []
    stream = [r for r in results if r["part"] == "stream"]
    if stream:
        rows += [
            "| stream | build | decisions/s | decisions | missing | duplicates | degraded "
            "| CPU s router / model server |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in stream:
            cpu = r["cpu_seconds"]
            rows.append(
                f"| {r['strategy']} | {r['build']} | {r['decisions_per_s']:,} | "
                f"{r['decisions']:,} | {r['missing_event_ids']} | {r['duplicates']} | "
                f"{r['degraded']:,} | {cpu['router']} / {cpu['model_server']} |"
            )
        for strategy in dict.fromkeys(r["strategy"] for r in stream):
            by = {r["build"]: r["decisions_per_s"] for r in stream if r["strategy"] == strategy}
            if CURRENT in by and len(by) > 1:
                for build, value in by.items():
                    if build != CURRENT and value:
                        rows.append(f"| {strategy} | ratio {CURRENT}/{build} | "
                                    f"{by[CURRENT] / value:.2f}x | | | | | |")  # fmt: skip
        rows.append("")
    doors = [r for r in results if r["part"] in ("rest", "grpc")]
    if doors:
        rows += [
            "| door | build | rate/s | sent | errors | p50 ms | p99 ms | p99.9 ms | max ms "
            "| CPU s router / model server / load |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in doors:
            lat, cpu = r["latency_ms"], r["cpu_seconds"]
            rows.append(
                f"| {r['part']} | {r['build']} | {r['rate']:,.0f} | {r['sent']:,} | "
                f"{r['errors']} | {lat.get('p50', '-')} | {lat.get('p99', '-')} | "
                f"{lat.get('p99.9', '-')} | {lat.get('max', '-')} | "
                f"{cpu['router']} / {cpu['model_server']} / {cpu['load_generator']} |"
            )
    return "\n".join(rows)


def main() -> int:
    if sys.argv[1:2] == ["load"]:
        return load_main(sys.argv[2:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="stream,rest,grpc")
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--entities", type=int, default=5_000)
    parser.add_argument(
        "--warmup-events", type=int, default=None,
        help="events that only warm the feature state up before the measured ones "
        "(default: as many as the served XGBoost was fitted on)",
    )  # fmt: skip
    parser.add_argument("--strategies", default="cascade,weighted")
    parser.add_argument("--rate", type=float, default=1_000, help="door requests per second")
    parser.add_argument("--seconds", type=float, default=30, help="door load duration")
    parser.add_argument("--warmup-seconds", type=float, default=3)
    parser.add_argument(
        "--door-strategy",
        default="weighted",
        help="vote rule for the door runs (weighted: all three models)",
    )
    parser.add_argument(
        "--baseline-rev", default=None, help="also run the router of this commit, side by side"
    )
    parser.add_argument(
        "--router-args", default="", help="extra `anomaly router` options for the current build"
    )
    parser.add_argument("--model-store", type=Path, default=None)
    parser.add_argument(
        "--py-spy", action="store_true", help="profile the router (collapsed stacks in var/bench)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()  # fmt: skip
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if args.py_spy:
        # py-spy is a dev dependency: it sits beside this interpreter, maybe not on PATH.
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        PROFILE[:] = [spy, "record", "--format", "raw", "--rate", "200", "--threads"]

    WORK.mkdir(parents=True, exist_ok=True)
    trees = {CURRENT: ROOT}
    if args.baseline_rev:
        trees[f"baseline {args.baseline_rev}"] = baseline_tree(args.baseline_rev)
    builds = list(trees)
    load_start = load_average()
    store = args.model_store or train_store(WORK / "model_store")
    warmup = fit_events(store) if args.warmup_events is None else args.warmup_events
    print(f"[bench] generating and featurizing {warmup:,} warm-up + {args.events:,} events",
          file=sys.stderr)  # fmt: skip
    data = feature_data(args.events, args.entities, seed=11, warmup=warmup)
    broker = LocalKafka(port=free_port())
    results: list[dict[str, Any]] = []
    models: ModelServer | None = None
    try:
        bootstrap = broker.start()
        models = start_model_server(store)
        if "stream" in parts:
            features_topic = f"bench{uuid.uuid4().hex[:6]}.features"
            print(f"[bench] filling {features_topic} with {args.events:,} vectors",
                  file=sys.stderr)  # fmt: skip
            fill_features(bootstrap, features_topic, data)
            for strategy in args.strategies.split(","):
                for build in builds:
                    results.append(run_stream(build, strategy.strip(), trees, bootstrap,
                                              features_topic, data, models,
                                              args.router_args.split()))  # fmt: skip
        door_parts = [d for d in ("rest", "grpc") if d in parts]
        if door_parts:
            feast, entities = prepare_feast(data, min(args.entities, 2_000))
            for door in door_parts:
                for build in builds:
                    results.append(run_door(door, build, trees, bootstrap, models, feast,
                                            entities, args))  # fmt: skip
    finally:
        if models is not None:
            stop(models.proc)
        broker.stop()
        broker.wipe()
    report = {
        "benchmark": "router",
        "machine": f"{os.cpu_count()} cores; broker, model server, router, load generator "
        "and anything else running share them",
        "load_average_start_end": [load_start, load_average()],
        "warmup_events": warmup,
        "targets": TARGETS,
        "results": results,
    }
    emit(report, table(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
