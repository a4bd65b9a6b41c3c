#!/usr/bin/env python3
"""A scoring answer's JSON: the shared encoder against a `Decision` per row.

The REST door answers with `ScoredRows.json()`, the text the `scores` topic carries
(`services/router/decision_json`, one `%` format for a whole batch); before, it validated a
pydantic `Decision` per row from `ScoredBatch.record` and serialised the response. Both are
timed here on the same weighted-vote batches of 1 to 1,000 decisions (three models, no top
features), in this process, one after the other, so the ratio holds on a noisy machine.

    .venv/bin/python loadtest/bench_decision_json.py [--sizes 1,2,16,1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from loadtest.bench_output import emit  # noqa: E402
from models.ensemble import decide_batch  # noqa: E402
from services.common.config.model import EnsembleConfig  # noqa: E402
from services.common.model_names import ModelName  # noqa: E402
from services.router.core import ScoredBatch  # noqa: E402
from services.router.schemas import ScoredRows, ScoreResponse, _SharedBatch  # noqa: E402


def scored(n: int, seed: int = 0) -> ScoredBatch:
    rng = np.random.default_rng(seed)
    scores = {m: rng.random(n) for m in ModelName}
    config = EnsembleConfig(strategy="weighted", thresholds={})
    decision = decide_batch(scores, rng.integers(-1, 6, n), config, None)
    return ScoredBatch(
        [f"evt-{i}" for i in range(n)], [f"acct-{i % 97:06d}" for i in range(n)],
        np.arange(n, dtype=np.int64) + 1_700_000_000_000, decision,
        decision.anomalous.copy(), dict.fromkeys(ModelName, "1"), {}, 1_700_000_000_123,
    )  # fmt: skip


def per_call_us(fn: Callable[[], object], budget_s: float) -> float:
    for _ in range(20):  # warm: the first calls of a fresh process pay for lazy set-up
        fn()
    calls, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < budget_s:
        fn()
        calls += 1
    return elapsed / calls * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,2,16,1000")
    p.add_argument("--seconds", type=float, default=1.0, help="timing budget per case")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    rows: list[dict[str, Any]] = []
    for n in (int(s) for s in a.sizes.split(",")):
        batch = scored(n)

        def encoder(batch: ScoredBatch = batch, n: int = n) -> bytes:
            return ScoredRows(_SharedBatch(batch), 0, n).json()

        def per_row(batch: ScoredBatch = batch, n: int = n) -> bytes:
            decisions = ScoredRows(_SharedBatch(batch), 0, n).decisions()
            return ScoreResponse(decisions=decisions).model_dump_json().encode()

        assert ScoreResponse.model_validate_json(encoder()) == ScoreResponse.model_validate_json(
            per_row()
        )
        enc, row = per_call_us(encoder, a.seconds), per_call_us(per_row, a.seconds)
        rows.append({"decisions": n, "encoder_us": round(enc, 1), "per_row_us": round(row, 1),
                     "speedup": round(row / enc, 2)})  # fmt: skip
    report = {"cases": rows, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    table = "\n".join(
        ["| decisions | encoder µs | Decision per row µs | speed-up |", "|---|---|---|---|"]
        + [f"| {r['decisions']:,} | {r['encoder_us']:,.1f} | {r['per_row_us']:,.1f} "
           f"| {r['speedup']:.2f}x |" for r in rows]
    )  # fmt: skip
    emit(report, table, a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
