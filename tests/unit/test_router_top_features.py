"""Top contributing features: a flagged decision names the features furthest from the
traffic's normal, learnt by the router from what it scores; finite whatever the input."""

from __future__ import annotations

import asyncio
import math

import numpy as np
from prometheus_client import CollectorRegistry

from services.common.config import parse_config
from services.common.features.definition import FEATURE_NAMES
from services.router.core import LiveConfig, ScoringCore
from services.router.feature_baseline import FeatureBaseline
from services.router.metrics import RouterMetrics

N = len(FEATURE_NAMES)


def normal_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.lognormal(1.0, 0.5, (n, N)).astype(np.float32)


def test_no_z_until_enough_rows_then_an_outlier_stands_out() -> None:
    rng = np.random.default_rng(1)
    baseline = FeatureBaseline(N, sample_rows=64, min_rows=500)
    assert baseline.z(normal_rows(rng, 3)) is None
    for _ in range(10):  # 640 rows: warm
        baseline.observe(normal_rows(rng, 200))  # only 64 of each batch are sampled
    row = normal_rows(rng, 1)
    row[0, 7] = 5_000.0
    z = baseline.z(row)
    assert z is not None
    assert int(np.argmax(np.abs(z[0]))) == 7 and z[0, 7] > 5
    assert np.abs(np.delete(z[0], 7)).max() < 5


def test_missing_values_are_skipped_and_extremes_stay_finite() -> None:
    rng = np.random.default_rng(2)
    baseline = FeatureBaseline(N, min_rows=100)
    batch = normal_rows(rng, 64)
    batch[:, 3] = np.nan  # never seen: that feature's z stays 0, the others are warm
    for _ in range(3):
        baseline.observe(batch)
    row = normal_rows(rng, 1)
    row[0, 1], row[0, 2], row[0, 3] = np.finfo(np.float32).max, np.nan, 9.0
    z = baseline.z(row)
    assert z is not None and np.isfinite(z).all()
    assert z[0, 1] > 10 and z[0, 2] == 0.0 and z[0, 3] == 0.0


def test_flagged_decisions_carry_their_top_features_after_warm_up() -> None:
    """No models at all: the forced entity is what flags the decision (and alerts)."""
    cfg = parse_config({"flags": {"forced_entities": ["acct-odd"]}}, "test")
    core = ScoringCore(LiveConfig(cfg), {}, metrics=RouterMetrics(CollectorRegistry()))
    rng = np.random.default_rng(3)

    async def score(entity: str, matrix: np.ndarray) -> list[dict[str, object]]:
        ids = [f"{entity}-{i}" for i in range(len(matrix))]
        batch = await core.score(ids, [entity] * len(matrix), matrix, track_sequences=False)
        return [batch.record(i) for i in range(len(batch))]

    odd = normal_rows(rng, 1)
    odd[0, 11] = 1e6
    assert asyncio.run(score("acct-odd", odd))[0]["top_features"] == []  # nothing learnt yet
    for _ in range(20):
        asyncio.run(score("acct-normal", normal_rows(rng, 64)))
    (record,) = asyncio.run(score("acct-odd", odd))
    assert record["alert"] is True
    top = record["top_features"]
    assert isinstance(top, list) and len(top) == 3
    assert top[0]["feature"] == FEATURE_NAMES[11] and top[0]["z"] > 10
    assert all(math.isfinite(t["z"]) for t in top)
