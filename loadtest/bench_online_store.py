#!/usr/bin/env python3
"""Feast online store: our writer/reader against Feast's own high-level calls.

For SQLite (a file under a temp dir) and Redis (a private redis-server on a free port,
or --redis-connection), on the platform's real feature view (22 float32 features):

- write throughput, unique-entity rows/s, of a batch of --entities rows:
  Feast `write_to_online_store` (pandas DataFrame, built beforehand and not timed)
  against `OnlineFeatureWriter.write_latest` (numpy in, timed whole); for Redis also the
  writer with Feast's `skip_dedup` (no read of stored timestamps before writing); and our
  share of a write alone: building the rows, in bulk (the writer) or with one
  constructor call per proto;
- read latency p50/p99 for 1 and 100 entities: Feast `get_online_features` with the
  router's FeatureService (+ `to_dict()`), the store's bare `online_read` (protos out),
  and `OnlineFeatureReader` (`read_one` / `read`, floats out).

Rates are given per wall second and per CPU second of this process (the Redis server
runs in its own process and is not counted in the latter). The machine is shared, so
the output states how much CPU other processes used while the benchmark ran.

    .venv/bin/python loadtest/bench_online_store.py [--entities 10000] [--reps 2]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from feast import FeatureStore  # noqa: E402
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto  # noqa: E402
from feast.protos.feast.types.Value_pb2 import Value as ValueProto  # noqa: E402

from services.common.config.model import (  # noqa: E402
    FeastConfig,
    RedisOnlineStore,
    SqliteOnlineStore,
)
from services.common.feast_store import (  # noqa: E402
    FEATURE_SERVICE_NAME,
    FEATURE_VIEW_NAME,
    JOIN_KEY,
    OnlineFeatureReader,
    OnlineFeatureWriter,
    apply,
    open_store,
)
from services.common.features.definition import FEATURE_NAMES  # noqa: E402

T0_MS = 1_700_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
pd: Any = importlib.import_module("pandas")  # no stubs installed; only DataFrame is used


# --------------------------------------------------------------------------- machine load


@dataclass
class _CpuSnapshot:
    wall: float
    per_pid: dict[int, tuple[str, float]]  # pid -> (command, cpu seconds)


def _snapshot() -> _CpuSnapshot:
    """CPU seconds used so far by every process (Linux /proc; empty elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    per_pid: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        per_pid[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return _CpuSnapshot(time.monotonic(), per_pid)


def _others(before: _CpuSnapshot, after: _CpuSnapshot, ours: set[int]) -> dict[str, Any]:
    """CPU other processes (not in `ours`) used between two snapshots, biggest first."""
    used: list[tuple[float, int, str]] = []
    for pid, (name, cpu) in after.per_pid.items():
        delta = cpu - before.per_pid.get(pid, (name, 0.0))[1]
        if pid not in ours and delta > 0.05:
            used.append((delta, pid, name))
    used.sort(reverse=True)
    wall = after.wall - before.wall
    total = sum(u[0] for u in used)
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(total, 1),
        "cores_busy": round(total / wall, 2) if wall else 0.0,
        "top": [{"pid": p, "command": n, "cpu_s": round(d, 1)} for d, p, n in used[:5]],
    }


# --------------------------------------------------------------------------- helpers


def _percentiles_us(samples_ns: list[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {
        "p50_us": round(float(np.percentile(a, 50)), 1),
        "p99_us": round(float(np.percentile(a, 99)), 1),
        "max_us": round(float(a.max()), 1),
        "n": len(samples_ns),
    }


def _latency(call: Callable[[int], object], iterations: int) -> dict[str, float]:
    for i in range(max(5, iterations // 20)):  # warm-up: connections, caches, registry
        call(i)
    samples: list[int] = []
    clock = time.perf_counter_ns
    for i in range(iterations):
        started = clock()
        call(i)
        samples.append(clock() - started)
    return _percentiles_us(samples)


def _throughput(write: Callable[[int], object], rows: int, reps: int) -> dict[str, float]:
    walls: list[float] = []
    cpus: list[float] = []
    for rep in range(reps):
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        write(rep)
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - t0)
    wall, cpu = float(np.median(walls)), float(np.median(cpus))
    return {
        "rows_per_s": round(rows / wall),
        "rows_per_cpu_s": round(rows / cpu),
        "best_rows_per_s": round(rows / min(walls)),
        "median_s": round(wall, 3),
        "reps": reps,
    }


def _matrix(n: int, seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, len(FEATURE_NAMES))).astype(np.float32)
    m[:, :3] = rng.integers(1, 60, (n, 3))  # counts
    m[:, 18:20] = rng.integers(0, 2, (n, 2))  # novelty flags
    return m


def _frame(ids: list[str], ts_ms: npt.NDArray[np.int64], m: npt.NDArray[np.float32]) -> Any:
    frame = pd.DataFrame(m, columns=list(FEATURE_NAMES))
    frame.insert(0, JOIN_KEY, ids)
    frame["event_ts"] = pd.to_datetime(ts_ms, unit="ms", utc=True)
    return frame


@contextmanager
def _redis(connection: str | None, home: Path) -> Iterator[str]:
    if connection:
        yield connection
        return
    from local_redis import LocalRedis, free_port

    server = LocalRedis(port=free_port(), home=home, wipe_on_exit=True, progress=None)
    with server:
        yield f"127.0.0.1:{server.port}"


# --------------------------------------------------------------------------- one backend


def bench_backend(
    name: str, cfg: FeastConfig, root: Path, entities: int, reps: int, iters: int
) -> dict[str, Any]:
    apply(cfg, root)
    store: FeatureStore = open_store(cfg, root)
    writer = OnlineFeatureWriter(store, cfg)
    reader = OnlineFeatureReader(store, cfg)
    ids = [f"acct-{i:07d}" for i in range(entities)]
    ts0 = T0_MS + np.arange(entities, dtype=np.int64)
    result: dict[str, Any] = {"backend": name, "entities": entities, "write": {}, "read": {}}

    # Each repetition writes newer event times, so Redis' staleness check lets all through.
    frames = [_frame(ids, ts0 + 1_000 * (rep + 1), _matrix(entities, rep)) for rep in range(reps)]
    result["write"]["feast_write_to_online_store"] = _throughput(
        lambda rep: store.write_to_online_store(FEATURE_VIEW_NAME, df=frames[rep]),
        entities,
        reps,
    )
    mats = [_matrix(entities, 100 + rep) for rep in range(reps)]
    result["write"]["our_writer"] = _throughput(
        lambda rep: writer.write_latest(ids, ts0 + 100_000 * (rep + 1), mats[rep]), entities, reps
    )
    if name == "redis":
        online = store.config.online_store
        online.skip_dedup = True
        try:
            result["write"]["our_writer_skip_dedup"] = _throughput(
                lambda rep: writer.write_latest(ids, ts0 + 10_000_000 * (rep + 1), mats[rep]),
                entities,
                reps,
            )
        finally:
            online.skip_dedup = False
    assert np.array_equal(reader.read(ids[:100]), mats[-1][:100]), "read-back mismatch"

    # Our share of the write: building the rows only (GC paused, as write_latest does),
    # against one constructor call per proto.
    def naive_rows(m: npt.NDArray[np.float32]) -> list[tuple[Any, ...]]:
        return [
            (
                EntityKeyProto(join_keys=[JOIN_KEY], entity_values=[ValueProto(string_val=e)]),
                {f: ValueProto(float_val=v) for f, v in zip(FEATURE_NAMES, row, strict=True)},
                _EPOCH + timedelta(milliseconds=t),
                None,
            )
            for e, row, t in zip(ids, m.tolist(), ts0.tolist(), strict=True)
        ]

    def gc_paused(build: Callable[[int], object]) -> Callable[[int], object]:
        def run(rep: int) -> object:
            gc.disable()
            try:
                return build(rep)
            finally:
                gc.enable()

        return run

    result["write"]["build_rows_only_naive_protos"] = _throughput(
        gc_paused(lambda rep: naive_rows(mats[rep])), entities, reps
    )
    result["write"]["build_rows_only_our_writer"] = _throughput(
        gc_paused(lambda rep: writer.build_rows(ids, ts0, mats[rep])), entities, reps
    )

    service = store.get_feature_service(FEATURE_SERVICE_NAME)
    view = reader.feature_view
    online_read = store.provider.online_read
    rng = np.random.default_rng(7)
    one = [ids[i] for i in rng.integers(0, entities, iters)]
    hundred = [
        [ids[i] for i in rng.integers(0, entities, 100)] for _ in range(max(iters // 20, 20))
    ]

    def key(e: str) -> EntityKeyProto:
        return EntityKeyProto(join_keys=[JOIN_KEY], entity_values=[ValueProto(string_val=e)])

    reads = result["read"]
    reads["1_entity"] = {
        "feast_get_online_features": _latency(
            lambda i: store.get_online_features(
                features=service, entity_rows=[{JOIN_KEY: one[i]}]
            ).to_dict(),
            iters,
        ),
        "store_online_read": _latency(
            lambda i: online_read(store.config, view, [key(one[i])]), iters
        ),
        "our_reader_read_one": _latency(lambda i: reader.read_one(one[i]), iters),
    }
    n100 = len(hundred)
    reads["100_entities"] = {
        "feast_get_online_features": _latency(
            lambda i: store.get_online_features(
                features=service, entity_rows=[{JOIN_KEY: e} for e in hundred[i % n100]]
            ).to_dict(),
            n100,
        ),
        "store_online_read": _latency(
            lambda i: online_read(store.config, view, [key(e) for e in hundred[i % n100]]), n100
        ),
        "our_reader_read": _latency(lambda i: reader.read(hundred[i % n100]), n100),
    }
    return result


# --------------------------------------------------------------------------- report


def _table(results: list[dict[str, Any]], load: dict[str, Any]) -> str:
    lines = [
        f"{'backend':8} {'write path (median of reps)':32} {'rows/s':>10} {'rows/cpu-s':>11} "
        f"{'best rows/s':>12}",
        "-" * 77,
    ]
    for r in results:
        for path, w in r["write"].items():
            lines.append(
                f"{r['backend']:8} {path:32} {w['rows_per_s']:>10,} {w['rows_per_cpu_s']:>11,} "
                f"{w['best_rows_per_s']:>12,}"
            )
    lines += [
        "",
        f"{'backend':8} {'read':13} {'path':28} {'p50 µs':>9} {'p99 µs':>9} {'n':>6}",
        "-" * 78,
    ]
    for r in results:
        for size, paths in r["read"].items():
            for path, s in paths.items():
                lines.append(
                    f"{r['backend']:8} {size:13} {path:28} {s['p50_us']:>9,.1f} "
                    f"{s['p99_us']:>9,.1f} {s['n']:>6}"
                )
    top = ", ".join(f"{t['command']}[{t['pid']}] {t['cpu_s']} s" for t in load["top"]) or "none"
    lines += [
        "",
        f"machine: {load['cpus']} CPUs; load average before {load['loadavg_before']}, "
        f"after {load['loadavg_after']}",
        f"other processes used {load['others']['cpu_s']} CPU-s in {load['others']['wall_s']} s "
        f"(~{load['others']['cores_busy']} cores busy): {top}",
    ]
    for r in results:
        if "redis_server_cpu_s" in r:
            lines.append(
                f"the benchmark's redis-server used {r['redis_server_cpu_s']} CPU-s "
                "(not counted in rows/cpu-s)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=10_000, help="rows per write batch")
    parser.add_argument("--reps", type=int, default=2, help="write repetitions (median)")
    parser.add_argument("--read-iters", type=int, default=2_000, help="1-entity reads timed")
    parser.add_argument("--backends", default="sqlite,redis", help="comma-separated")
    parser.add_argument(
        "--redis-connection",
        default=None,
        help="use this Redis (host:port) instead of a private one",
    )
    args = parser.parse_args(argv)

    before = _snapshot()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench_online_store_"))
    results: list[dict[str, Any]] = []
    ours = {os.getpid()}
    try:
        repo = str(REPO_ROOT / "feature_repo")
        for backend in args.backends.split(","):
            root = work / backend
            if backend == "sqlite":
                cfg = FeastConfig(repo_path=repo, online_store=SqliteOnlineStore())
                gc.freeze()  # as a service does after start-up (see writer.py)
                results.append(
                    bench_backend(backend, cfg, root, args.entities, args.reps, args.read_iters)
                )
            elif backend == "redis":
                with _redis(args.redis_connection, work / "redis") as connection:
                    started = _snapshot()
                    servers = {
                        pid
                        for pid, (name, _) in started.per_pid.items()
                        if name.startswith("redis-server") and pid not in before.per_pid
                    }
                    ours |= servers
                    cfg = FeastConfig(
                        repo_path=repo,
                        online_store=RedisOnlineStore(type="redis", connection_string=connection),
                    )
                    gc.freeze()
                    result = bench_backend(
                        backend, cfg, root, args.entities, args.reps, args.read_iters
                    )
                    done = _snapshot()
                    result["redis_server_cpu_s"] = round(
                        sum(
                            done.per_pid[p][1] - started.per_pid[p][1]
                            for p in servers
                            if p in done.per_pid
                        ),
                        2,
                    )
                    results.append(result)
            else:
                parser.error(f"unknown backend {backend!r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    others = _others(before, _snapshot(), ours)
    top = others.pop("top")
    load: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "others": others,
        "top": top,
    }
    print(_table(results, load))
    print(json.dumps({"results": results, "machine": load}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
