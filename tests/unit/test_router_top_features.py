"""Top contributing features: the furthest from the baseline, finite whatever the input."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry

from services.common.config import parse_config
from services.common.features.definition import FEATURE_NAMES
from services.router.core import LiveConfig, ScoringCore
from services.router.metrics import RouterMetrics


def core(mean: np.ndarray, std: np.ndarray) -> ScoringCore:
    live = LiveConfig(parse_config({}, "test"))
    return ScoringCore(live, {}, metrics=RouterMetrics(CollectorRegistry()),
                       feature_baseline=(mean, std))  # fmt: skip


def test_flagged_rows_get_their_three_furthest_features_and_others_none() -> None:
    n = len(FEATURE_NAMES)
    mean, std = np.zeros(n, np.float32), np.ones(n, np.float32)
    matrix = np.zeros((3, n), np.float32)
    matrix[0, [4, 9, 2]] = [-7.0, 5.0, 3.0]
    matrix[2, 1] = np.nan  # a missing value is no reason
    matrix[2, 0] = 2.0
    top = core(mean, std)._top_features(matrix, np.array([True, False, True]))
    assert top[0] == [(FEATURE_NAMES[4], -7.0), (FEATURE_NAMES[9], 5.0), (FEATURE_NAMES[2], 3.0)]
    assert top[1] == []
    assert top[2][0] == (FEATURE_NAMES[0], 2.0)
    assert all(z == 0.0 for name, z in top[2][1:])


def test_an_extreme_float32_over_a_tiny_spread_stays_finite() -> None:
    n = len(FEATURE_NAMES)
    mean, std = np.zeros(n, np.float32), np.full(n, 1e-9, np.float32)
    matrix = np.zeros((1, n), np.float32)
    matrix[0, 3] = np.finfo(np.float32).max
    matrix[0, 5] = -np.finfo(np.float32).max
    (top,) = core(mean, std)._top_features(matrix, np.array([True]))
    assert {name for name, _ in top[:2]} == {FEATURE_NAMES[3], FEATURE_NAMES[5]}
    assert all(math.isfinite(z) for _, z in top)
    assert max(abs(z) for _, z in top) > 1e44  # the float32 quotient would have been inf
