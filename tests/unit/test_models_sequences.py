"""Sequences for the Transformer: the streaming ring equals the whole-stream gather."""

from __future__ import annotations

import numpy as np
import pytest

from models.sequences import (
    PAD_INDEX,
    EntitySequences,
    gather_sequences,
    history_index,
)


def test_history_index_lists_previous_rows_of_the_same_entity() -> None:
    entity = np.array([0, 1, 0, 0, 1, 2, 0])
    index = history_index(entity, length=3)
    assert index.tolist() == [
        [PAD_INDEX, PAD_INDEX, 0],
        [PAD_INDEX, PAD_INDEX, 1],
        [PAD_INDEX, 0, 2],
        [0, 2, 3],
        [PAD_INDEX, 1, 4],
        [PAD_INDEX, PAD_INDEX, 5],
        [2, 3, 6],
    ]


def test_gather_pads_with_nan_rows() -> None:
    matrix = np.arange(6, dtype=np.float32).reshape(3, 2)
    seq = gather_sequences(matrix, history_index(np.array([0, 0, 0]), length=4))
    assert seq.shape == (3, 4, 2)
    assert np.isnan(seq[0, :3]).all() and seq[0, 3].tolist() == [0.0, 1.0]
    assert seq[2, 1:].tolist() == matrix.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ring_buffer_matches_gather_for_any_batching(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, width = 3_000, 5
    entity = rng.integers(0, 40, n)
    matrix = rng.normal(size=(n, width)).astype(np.float32)
    expected = gather_sequences(matrix, history_index(entity, length=6))
    ring = EntitySequences(length=6, n_features=width, capacity=2)  # forces growth
    parts, start = [], 0
    while start < n:
        stop = start + int(rng.integers(1, 400))
        parts.append(ring.push([f"e{e}" for e in entity[start:stop]], matrix[start:stop]))
        start = stop
    got = np.concatenate(parts)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.array_equal(np.nan_to_num(got), np.nan_to_num(expected))
    assert len(ring) == len(np.unique(entity))


def test_forget_releases_entities_and_restarts_their_history() -> None:
    ring = EntitySequences(length=3, n_features=2)
    ring.push(["a", "a", "b"], np.ones((3, 2), np.float32))
    assert ring.forget(["a", "zzz"]) == 1
    assert "a" not in ring and "b" in ring
    seq = ring.push(["a"], np.full((1, 2), 7, np.float32))
    assert np.isnan(seq[0, :2]).all() and seq[0, 2].tolist() == [7.0, 7.0]


def test_wrong_row_shape_is_refused() -> None:
    ring = EntitySequences(length=3, n_features=2)
    with pytest.raises(ValueError, match="shape"):
        ring.push(["a"], np.ones((1, 3), np.float32))
