"""How fast the registered models score, per runtime and batch size, and how long training takes.

    python loadtest/bench_models.py score [--store model_store] [--threads 1] [--repeat 5]
        [--all-versions]
    python loadtest/bench_models.py train [--events 1000000] [--seed 42] [--store DIR]

`score`: rows (or sequences) per second of every registered model (the version that would
serve), native runtime against ONNX Runtime, at batch sizes 1, 64, 1024 and 8192, on one
thread by default (torch, ONNX Runtime and XGBoost all pinned), median of --repeat runs.
The inputs are real feature rows from a generated stream, so tree paths are realistic.

`train`: the wall time of `anomaly train --model all` on a generated stream of --events
events, split into features and per-model fit/calibrate/export, into a scratch registry.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from models.dataset import LabelledFeatures, generated_features
from models.errors import ModelsError
from models.progress import Stopwatch, stderr_progress
from models.registry import LoadedModel, Registry, Runtime
from models.sequences import gather_sequences, history_index
from models.training import TrainSettings, train_all
from services.common.model_names import ModelName
from services.generator import StreamSpec

BATCHES = (1, 64, 1024, 8192)


def generated(events: int, seed: int) -> LabelledFeatures:
    """Features of a generated stream with its labels."""
    return generated_features(StreamSpec(seed=seed), events, stderr_progress)


def _pin_threads(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def _rows_per_s(model: LoadedModel, runtime: Runtime, x: Any, batch: int, repeat: int) -> float:
    calls = max(1, min(len(x) // batch, 20_000 // batch, 500))
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(calls):
            model.predict_raw(x[i * batch : (i + 1) * batch], runtime)
        times.append(time.perf_counter() - start)
    return calls * batch / statistics.median(times)


def _versions_to_score(registry: Registry, name: ModelName, every: bool) -> list[str | None]:
    """The serving version (None), or every registered one, oldest first, to compare exports
    of the same fit side by side in one run."""
    if not every:
        return [None]
    return list(registry.versions(name)) or [None]


def bench_score(store: Path, threads: int, repeat: int, every_version: bool = False) -> None:
    """Print a Markdown table of rows/s per model (version), runtime and batch size."""
    _pin_threads(threads)
    registry = Registry(store)
    data = generated(60_000, seed=7)
    index = history_index(data.entity)
    print(f"| model | runtime | {' | '.join(f'batch {b}' for b in BATCHES)} |")
    print("|---|---|" + "---|" * len(BATCHES))
    for name in ModelName:
        for version in _versions_to_score(registry, name, every_version):
            try:
                model = registry.load(name, version)
            except ModelsError as exc:  # a missing model is reported, not fatal
                print(f"| {name.value} | – | {exc} |", file=sys.stderr)
                continue
            _score_rows(model, data, index, threads, repeat)


def _score_rows(
    model: LoadedModel, data: LabelledFeatures, index: Any, threads: int, repeat: int
) -> None:
    x = (
        gather_sequences(data.matrix, index[-16_384:])
        if model.sequence_length
        else data.matrix[-16_384:]
    )
    model.onnx_session(threads=threads)
    if model.name is ModelName.XGBOOST:
        native: Any = model.native()
        native._booster.set_param({"nthread": threads})
    runtimes: tuple[Runtime, ...] = ("native", "onnx")
    for runtime in runtimes:
        model.predict_raw(x[:64], runtime)  # warm-up
        rates = [_rows_per_s(model, runtime, x, b, repeat) for b in BATCHES]
        print(
            f"| {model.name.value} v{model.version} | {runtime} | "
            + " | ".join(f"{r:,.0f}" for r in rates)
            + " |"
        )


def bench_train(events: int, seed: int, store: Path | None) -> None:
    """Time features + training of all three models on a generated stream."""
    clock = Stopwatch()
    data = generated(events, seed)
    features_s = clock.seconds
    root = store or Path(tempfile.mkdtemp(prefix="bench-models-"))
    trained = train_all(data, TrainSettings(seed=seed), Registry(root), stderr_progress)
    total = clock.seconds
    print(f"events {events:,}: features {features_s:.1f} s, total {total:.1f} s")
    for name, t in trained.items():
        print(f"  {name.value:<17} fit {t.metadata['fit_seconds']:.1f} s, version {t.version}")
    print(f"registry: {root}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="scoring throughput per runtime and batch size")
    score.add_argument("--store", type=Path, default=Path("model_store"))
    score.add_argument("--threads", type=int, default=1)
    score.add_argument("--repeat", type=int, default=5)
    score.add_argument(
        "--all-versions",
        action="store_true",
        help="every registered version, not only the serving one",
    )
    train = sub.add_parser("train", help="training time of all three models")
    train.add_argument("--events", type=int, default=1_000_000)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--store", type=Path, default=None)
    args = parser.parse_args()
    np.seterr(all="ignore")
    if args.command == "score":
        bench_score(args.store, args.threads, args.repeat, args.all_versions)
    else:
        bench_train(args.events, args.seed, args.store)


if __name__ == "__main__":
    main()
