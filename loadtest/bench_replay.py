"""How fast `anomaly replay --models registry` backtests a recorded stream, stage by stage.

    python loadtest/bench_replay.py --store model_store [--events 100000] [-c config/platform.yaml]

Generates --events labelled events to a JSONL file (plus the labels side file), then runs,
side by side in one process: reading + validation alone, reading + window features, and the
whole replay (features, the router's scoring core with the registry models in-process,
decisions to JSONL and to Parquet). Each stage's events/s over the same file, the ratio of
the full replay to reading alone, and the load average before and after (what else shared
the cores) are printed as JSON and as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from services.common.config import load_config
from services.common.config.model import ModelStoreConfig
from services.generator import EventStream, StreamSpec
from services.replay import EventSource, ReplayRequest, run_replay
from services.replay.features import StreamFeatures


def write_stream(root: Path, events: int, seed: int) -> tuple[Path, Path]:
    """A generated stream as JSONL with its labels side file."""
    path, labels = root / "stream.jsonl", root / "labels.jsonl"
    with path.open("wb") as fh, labels.open("wb") as lf:
        for chunk in EventStream(StreamSpec(seed=seed)).chunks(events):
            fh.write(b"".join(v + b"\n" for v in chunk.values()))
            lf.write(b"".join(orjson.dumps(r) + b"\n" for r in chunk.labels()))
    return path, labels


def timed(run: Callable[[], int]) -> tuple[float, int]:
    """Seconds and the event count `run` reports."""
    start = time.perf_counter()
    count = run()
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="model registry to replay with")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--seed", type=int, default=7, help="stream seed (models are trained on seed 42)"
    )
    parser.add_argument("--batch-size", type=int, default=4_096)
    parser.add_argument("-c", "--config", type=Path, default=Path("config/platform.yaml"))
    args = parser.parse_args()

    cfg = load_config(args.config)
    cfg = cfg.model_copy(update={"model_store": ModelStoreConfig(path=str(args.store))})
    root = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    stream, labels = write_stream(root, args.events, args.seed)
    load_before = os.getloadavg()

    def read_only() -> int:
        return sum(len(b.events) for b in EventSource(stream, batch_rows=args.batch_size).batches())

    def read_and_features() -> int:
        features = StreamFeatures(
            cfg.ingest.allowed_lateness_ms, round(cfg.ingest.idle_state_ttl_s * 1000)
        )
        n = 0
        for batch in EventSource(stream, batch_rows=args.batch_size).batches():
            n += len(features.rows(batch.events).event_ids)
        return n

    def replay_to(suffix: str) -> Callable[[], int]:
        def run() -> int:
            request = ReplayRequest(
                stream, root / f"decisions{suffix}", labels=labels, models="registry",
                batch_size=args.batch_size,
            )  # fmt: skip
            return run_replay(request, cfg).decisions

        return run

    stages: list[tuple[str, Callable[[], int]]] = [
        ("read + validate", read_only),
        ("read + validate + features", read_and_features),
        ("replay, registry models, JSONL out", replay_to(".jsonl")),
        ("replay, registry models, Parquet out", replay_to(".parquet")),
    ]
    results: list[dict[str, Any]] = []
    for name, run in stages:
        seconds, events = timed(run)
        results.append({"stage": name, "events": events, "seconds": round(seconds, 3),
                        "events_per_s": round(events / seconds, 1)})  # fmt: skip
    load_after = os.getloadavg()
    base = results[0]["events_per_s"]
    for r in results:
        r["vs_read"] = round(r["events_per_s"] / base, 3)
    report = {
        "events": args.events,
        "batch_size": args.batch_size,
        "store": str(args.store),
        "cpus": os.cpu_count(),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in load_after],
        "stages": results,
    }
    print(json.dumps(report, indent=2))
    print()
    print(f"| stage ({args.events:,} events) | seconds | events/s | vs read |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['stage']} | {r['seconds']:.2f} | {r['events_per_s']:,.0f} | "
              f"{r['vs_read']:.3f} |")  # fmt: skip
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} CPUs)")  # fmt: skip


if __name__ == "__main__":
    main()
