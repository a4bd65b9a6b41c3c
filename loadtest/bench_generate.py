"""How fast `anomaly generate` is, stage by stage, on this machine.

    python loadtest/bench_generate.py [--events 2000000] [--kafka] [--config PATH]

Stages (each on a fresh stream with the default spec, timeline 100,000 events/s):

* `columns`: drawing chunks (population, normal behaviour, anomalies), no encoding;
* `encoded`: plus event JSON and Kafka keys (the `null` output);
* `jsonl`: plus writing JSONL to /dev/null;
* `kafka`: (with --kafka) unpaced into the configured broker, flushed; needs the topics.

Reports events/s over wall time and per CPU second of this process (which includes
librdkafka's threads), the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from services.common.config import load_config
from services.generator import EventStream, GenerateRequest, Output, StreamSpec, generate

SPEC = StreamSpec(rate=100_000.0)


def _columns(events: int) -> None:
    for _ in EventStream(SPEC).chunks(events):
        pass


def _encoded(events: int) -> None:
    generate(GenerateRequest(spec=SPEC, output=Output.NULL, max_events=events))


def _jsonl(events: int) -> None:
    generate(
        GenerateRequest(spec=SPEC, output=Output.JSONL, out_path=Path("/dev/null"),
                        max_events=events)
    )  # fmt: skip


def _kafka(config: Path | None) -> Callable[[int], None]:
    cfg = load_config(config)

    def run(events: int) -> None:
        result = generate(
            GenerateRequest(spec=SPEC, output=Output.KAFKA, max_events=events, start_now=True),
            cfg.kafka,
        )
        if result.delivery_errors:
            raise SystemExit(f"kafka: {result.delivery_errors} delivery errors")

    return run


def measure(stage: Callable[[int], None], events: int, repeat: int) -> tuple[float, float]:
    """Median events/s over wall time and per CPU second."""
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        stage(events)
        wall.append(events / (time.perf_counter() - w0))
        cpu.append(events / (time.process_time() - c0))
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--kafka", action="store_true", help="also produce into the broker")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args()
    stages: dict[str, Callable[[int], None]] = {
        "columns": _columns,
        "encoded": _encoded,
        "jsonl": _jsonl,
    }
    if args.kafka:
        stages["kafka"] = _kafka(args.config)
    print(f"{'stage':<10} {'events/s':>12} {'events/cpu-s':>14}   ({args.events:,} events, "
          f"median of {args.repeat})")  # fmt: skip
    for name, stage in stages.items():
        wall, cpu = measure(stage, args.events, args.repeat)
        print(f"{name:<10} {wall:>12,.0f} {cpu:>14,.0f}", flush=True)


if __name__ == "__main__":
    main()
