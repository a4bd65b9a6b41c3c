"""Feature vectors for load on the scoring doors, from the one window-feature definition.

Locust's scoring users send these rows (or only their entity ids, for the router to read from
the online store); a test writes the same rows to a store first, so both modes score
entities the router knows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.generator import StreamSpec


@dataclass(frozen=True)
class ScoringRows:
    """One row per generated event: its entity, event time and feature vector."""

    entity_ids: list[str]
    ts: npt.NDArray[np.int64]
    matrix: npt.NDArray[np.float32]
    """(rows, len(FEATURE_NAMES)), columns in FEATURE_NAMES order."""


@functools.cache
def scoring_rows(events: int = 5_000, entities: int = 500, seed: int = 7) -> ScoringRows:
    """Features of a generated stream (computed once per process: a second or two)."""
    from models.dataset import generated_features

    data = generated_features(StreamSpec(seed=seed, entities=entities), events)
    names = [data.entity_names[i] for i in data.entity.tolist()]
    return ScoringRows(names, data.ts, data.matrix)
