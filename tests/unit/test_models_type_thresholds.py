"""Thresholds per predicted type sharing one false-positive budget (models/type_thresholds)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from models import type_thresholds
from models.metrics import threshold_for_fpr
from models.type_thresholds import allocate


def _flagged(
    score: np.ndarray, types: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
) -> tuple[int, int]:
    flagged = score >= thresholds
    return int((flagged & (labels == 0)).sum()), int((flagged & (labels > 0)).sum())


def _brute_force(
    score: np.ndarray, types: np.ndarray, labels: np.ndarray, n_types: int, budget: int
) -> int:
    """Every combination of per-type thresholds at the scores present: the most caught."""
    candidates = [np.append(np.unique(score[types == k]), np.inf) for k in range(n_types)]
    best = 0
    for combo in itertools.product(*candidates):
        fp, tp = _flagged(score, types, labels, np.asarray(combo)[types])
        if fp <= budget:
            best = max(best, tp)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_split_catches_as_many_as_the_best_of_every_combination(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    types = rng.integers(0, 3, n)
    labels = (rng.random(n) < 0.3).astype(np.int8) * (types + 1).astype(np.int8)
    # Anomalies score higher on average, by a margin that differs per type.
    score = rng.random(n) + (labels > 0) * np.array([0.1, 0.5, 0.9])[types]
    max_fpr = 0.12
    split = allocate(score, types, labels, 3, max_fpr)
    budget = int(np.floor(max_fpr * (labels == 0).sum()))
    fp, tp = _flagged(score, types, labels, split.thresholds(types))
    assert split.budget == budget
    assert fp <= budget
    assert fp == int(split.false_positives.sum())
    assert tp == split.caught == _brute_force(score, types, labels, 3, budget)


def test_a_type_separable_below_the_single_threshold_is_caught() -> None:
    # Type 0: normal scores reach 0.9-1.0 and its anomalies sit among them. Type 1: normal
    # scores stay below 0.5 and its anomalies at 0.6, under the single threshold for the
    # budget (which type 0's normals push up to ~0.99).
    rng = np.random.default_rng(1)
    normal0 = rng.uniform(0.0, 1.0, 5_000)
    normal1 = rng.uniform(0.0, 0.5, 5_000)
    anomalies0 = rng.uniform(0.9, 1.0, 50)
    anomalies1 = np.full(50, 0.6)
    score = np.concatenate([normal0, normal1, anomalies0, anomalies1])
    types = np.repeat([0, 1, 0, 1], [5_000, 5_000, 50, 50])
    labels = np.repeat(np.array([0, 0, 1, 2], np.int8), [5_000, 5_000, 50, 50])
    single = threshold_for_fpr(score[labels == 0], 0.003)
    _, caught_single = _flagged(score, types, labels, np.full(score.size, single))
    split = allocate(score, types, labels, 2, 0.003)
    assert caught_single < 50  # the single threshold misses every type-1 anomaly
    assert split.per_type[1] <= 0.6 < single
    # All of type 1 at no false positive, so the whole budget is left for type 0.
    assert split.caught >= 50 + caught_single
    assert split.false_positives.sum() <= split.budget == 30


def test_thresholds_never_go_below_the_lowest_normal_score_of_their_type() -> None:
    # Type 1 has two normal events and many anomalies below them: allowing both normals as
    # false positives must not open the type to everything scoring lower.
    score = np.concatenate([np.linspace(0, 1, 1_000), [0.8, 0.9], np.full(20, 0.1)])
    types = np.concatenate([np.zeros(1_000, np.int64), [1, 1], np.ones(20, np.int64)])
    labels = np.concatenate([np.zeros(1_002, np.int8), np.full(20, 2, np.int8)])
    split = allocate(score, types, labels, 2, 0.01)
    assert split.per_type[1] >= 0.8
    assert split.caught == 0


def test_a_type_without_normal_events_and_unknown_types_keep_the_single_threshold() -> None:
    rng = np.random.default_rng(2)
    score = rng.random(2_000)
    types = np.zeros(2_000, np.int64)
    labels = np.zeros(2_000, np.int8)
    types[:10], labels[:10] = 1, 2  # type 1: anomalies only
    split = allocate(score, types, labels, 3, 0.01)
    single = threshold_for_fpr(score[labels == 0], 0.01)
    assert split.per_type[1] == split.per_type[2] == split.default == single
    assert split.thresholds(np.array([-1, 1]))[0] == single


def test_unknown_types_share_the_budget_as_a_group_of_their_own() -> None:
    # Events of unknown type (-1, XGBoost missing): normal scores below 0.5, anomalies at
    # 0.6; type 0 as in the test above. The unknown group gets a threshold of its own.
    rng = np.random.default_rng(3)
    score = np.concatenate([rng.uniform(0, 1, 3_000), rng.uniform(0, 0.5, 3_000), [0.6] * 30])
    types = np.repeat([0, -1, -1], [3_000, 3_000, 30])
    labels = np.repeat(np.array([0, 0, 1], np.int8), [3_000, 3_000, 30])
    split = allocate(score, types, labels, 1, 0.003)
    fp, tp = _flagged(score, types, labels, split.thresholds(types))
    assert split.default <= 0.6 < split.per_type[0]
    assert fp <= split.budget and tp == split.caught >= 30


def test_a_budget_larger_than_the_step_limit_is_split_in_coarser_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(type_thresholds, "MAX_STEPS", 10)
    rng = np.random.default_rng(4)
    types = rng.integers(0, 2, 20_000)
    labels = (rng.random(20_000) < 0.05).astype(np.int8)
    score = rng.random(20_000) + labels * 0.3
    split = allocate(score, types, labels, 2, 0.01)
    fp, tp = _flagged(score, types, labels, split.thresholds(types))
    assert split.budget > 10 * 10
    assert fp <= split.budget and tp == split.caught > 0


def test_no_normal_events_is_an_error() -> None:
    with pytest.raises(ValueError, match="normal events"):
        allocate(np.ones(3), np.zeros(3, np.int64), np.ones(3, np.int8), 1, 0.01)
