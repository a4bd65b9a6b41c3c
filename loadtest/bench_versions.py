#!/usr/bin/env python3
"""Two registry versions of one model, side by side in one model server.

Before promoting a version, the question is whether it serves as cheaply as the one it
replaces. Both versions are loaded into one `anomaly serve <model> --versions A,B` process
(so they share the process, the runtimes and the machine), and are called over V2 gRPC in
interleaved rounds, one request at a time: per batch size, the wall time per call, the
server's CPU time per call (from /proc; its CPU time is read as clock ticks, 10 ms, hence
`--seconds` per cell) and rows per CPU-second, as the median of the rounds.
Their answers are compared too: two versions of the same fit (a re-export) must agree. The
inputs are real feature rows of a generated stream (sequences for the Transformer), so tree
paths are realistic.

    python loadtest/bench_versions.py --model isolation_forest --versions 1,2
    python loadtest/bench_versions.py --model xgboost --versions 1,2 --batches 1,64,4096
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from local_process import free_port  # noqa: E402

from loadtest.bench_output import emit  # noqa: E402
from loadtest.bench_serving import (  # noqa: E402
    GrpcClient,
    Subprocess,
    feature_rows,
    inputs_for,
    tile,
)
from loadtest.procstat import load_average, process_cpu_seconds  # noqa: E402
from models.registry import Registry  # noqa: E402
from services.common.model_names import ModelName  # noqa: E402


def start_server(
    store: Path, model: str, versions: list[str], work: Path
) -> tuple[Subprocess, int]:
    """`anomaly serve <model> --versions A,B`, ready; returns it and its gRPC port."""
    config = work / "serve.yaml"
    config.write_text(f"model_store: {{path: {store.resolve()}}}\n")
    http, grpc_port = free_port(), free_port()
    server = Subprocess(
        "model server",
        [sys.executable, "-m", "services.cli.main", "serve", model, "--versions",
         ",".join(versions), "-c", str(config), "--http-port", str(http),
         "--grpc-port", str(grpc_port), "--log-level", "WARNING"],
        work / "serve.log", f"http://127.0.0.1:{http}/v2/health/ready",
    )  # fmt: skip
    server.wait_ready()
    return server, grpc_port


async def measure(args: argparse.Namespace, pid: int, grpc_port: int) -> list[dict[str, Any]]:
    """Per batch size: each version's median wall and server CPU per call over the rounds."""
    # Real feature rows (realistic tree paths), shaped as the first version expects them.
    model = Registry(args.store).load(ModelName(args.model), args.versions[0])
    rows_pool = inputs_for(model, feature_rows(args.events, args.seed), args.events)
    client = GrpcClient(f"127.0.0.1:{grpc_port}")
    out = []
    try:
        for rows in args.batches:
            x = tile(rows_pool, rows)
            answers = {}
            for v in args.versions:
                for _ in range(3):  # warm-up
                    answer = await client.infer(args.model, x, v)
                answers[v] = np.frombuffer(answer.raw_output_contents[0], np.float32)
            rounds: dict[str, list[tuple[float, float]]] = {v: [] for v in args.versions}
            for _ in range(args.rounds):
                for v in args.versions:
                    call, calls = client.caller(args.model, x, v), 0
                    cpu0, t0 = process_cpu_seconds(pid), time.perf_counter()
                    while calls < 3 or time.perf_counter() - t0 < args.seconds:
                        await call()
                        calls += 1
                    wall = (time.perf_counter() - t0) / calls
                    rounds[v].append((wall, (process_cpu_seconds(pid) - cpu0) / calls))
            first = answers[args.versions[0]]
            for v in args.versions:
                wall = statistics.median(w for w, _ in rounds[v])
                cpu = statistics.median(c for _, c in rounds[v])
                out.append({
                    "batch": rows, "version": v, "ms_per_call": round(wall * 1e3, 3),
                    "server_cpu_ms_per_call": round(cpu * 1e3, 3),
                    "rows_per_cpu_s": round(rows / cpu) if cpu > 0 else None,
                    "max_abs_diff_vs_first": float(np.max(np.abs(answers[v] - first))),
                })  # fmt: skip
    finally:
        await client.close()
    return out


def table(rows: list[dict[str, Any]], versions: list[str]) -> str:
    lines = [
        "| batch | version | ms / call | server CPU ms / call | rows / CPU-s | CPU vs "
        f"v{versions[0]} | max abs diff vs v{versions[0]} |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {r["batch"]: r["server_cpu_ms_per_call"] for r in rows if r["version"] == versions[0]}
    for r in rows:
        ratio = r["server_cpu_ms_per_call"] / base[r["batch"]] if base[r["batch"]] else float("nan")
        lines.append(
            f"| {r['batch']:,} | {r['version']} | {r['ms_per_call']:.2f} | "
            f"{r['server_cpu_ms_per_call']:.2f} | {r['rows_per_cpu_s'] or 0:,} | {ratio:.2f}x | "
            f"{r['max_abs_diff_vs_first']:.2g} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="isolation_forest")
    parser.add_argument("--versions", default="1,2", help="comma list; the first is the reference")
    parser.add_argument("--store", type=Path, default=REPO_ROOT / "model_store")
    parser.add_argument("--batches", default="1,4096")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5,
                        help="per version, batch size and round (at least 3 calls)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--events", type=int, default=20_000, help="generated events for inputs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    if len(args.versions) < 2:
        parser.error("--versions needs at least two versions")
    load0 = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-versions-") as tmp:
        server, grpc_port = start_server(args.store, args.model, args.versions, Path(tmp))
        try:
            rows = asyncio.run(measure(args, server.proc.pid, grpc_port))
        finally:
            server.stop()
    report = {
        "model": args.model, "versions": args.versions, "store": str(args.store),
        "rounds": args.rounds, "results": rows,
        "load_average_before_after": [load0, load_average()],
    }  # fmt: skip
    emit(report, table(rows, args.versions), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
