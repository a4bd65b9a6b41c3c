"""Quantile calibration: raw detector scores -> the fraction of normal traffic they beat.

Why: the three detectors speak different units (isolation depth, log-odds, reconstruction
error). Mapped through the empirical distribution of their scores on *held-out normal*
events, each becomes "the share of normal events scoring lower", so a threshold of 0.997
means a 0.3% false-positive rate for any model, and the ensemble can average them.

The table is stored in the model metadata as (raw knot, level) pairs and applied by linear
interpolation, so the mapping is monotonic (non-decreasing), lands in [0, 1], is cheap, and
any runtime (ONNX, native, another language) can reproduce it from JSON. Knots are dense in
the upper tail, where thresholds live: a 0.1% false-positive rate needs resolution well
below 1e-3 there.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import TrainingDataError

F64 = npt.NDArray[np.float64]

MIN_NORMAL_SCORES = 100
"""Fewer held-out normal scores than this cannot support a quantile table."""


def _levels() -> F64:
    """Quantile levels: every 0.1% over the body, log-spaced towards 1 in the tail."""
    body = np.linspace(0.0, 1.0, 1001)
    tail = 1.0 - np.logspace(-6, -2, 401)
    levels: F64 = np.unique(np.concatenate([body, tail]))
    return levels


@dataclass(frozen=True, slots=True)
class QuantileCalibrator:
    """A monotonic map from raw scores to [0, 1] given by strictly increasing knots."""

    raw: tuple[float, ...]
    """Raw-score knots, strictly increasing."""
    level: tuple[float, ...]
    """Fraction of held-out normal scores at or below each knot, non-decreasing, in [0, 1]."""
    normal_count: int
    """How many held-out normal scores the table was built from (its resolution)."""
    _knot_array: F64 = field(init=False, repr=False, compare=False)
    _level_array: F64 = field(init=False, repr=False, compare=False)
    # The tables as arrays, built once: converting the ~1,100-knot tuples on every call cost
    # ~180 us, most of a single-row request's model time.

    def __post_init__(self) -> None:
        object.__setattr__(self, "_knot_array", np.asarray(self.raw, np.float64))
        object.__setattr__(self, "_level_array", np.asarray(self.level, np.float64))

    @classmethod
    def fit(cls, normal_scores: npt.ArrayLike) -> QuantileCalibrator:
        """Build the table from raw scores of held-out normal events."""
        scores = np.asarray(normal_scores, dtype=np.float64).ravel()
        if scores.size < MIN_NORMAL_SCORES:
            raise TrainingDataError(
                f"calibration needs at least {MIN_NORMAL_SCORES} held-out normal events, "
                f"got {scores.size}: provide more (normal) data"
            )
        if not np.isfinite(scores).all():
            raise TrainingDataError("calibration scores contain NaN or infinite values")
        ordered = np.sort(scores)
        knots = np.quantile(ordered, _levels(), method="inverted_cdf")
        raw = np.unique(knots)
        # The level of a knot is the ECDF there: the share of normal scores <= knot.
        level = np.searchsorted(ordered, raw, side="right") / ordered.size
        return cls(tuple(raw.tolist()), tuple(level.tolist()), int(ordered.size))

    def __call__(self, raw_scores: npt.ArrayLike) -> F64:
        """Calibrated scores in [0, 1]: 0 below every normal score, 1 above them all."""
        x = np.asarray(raw_scores, dtype=np.float64)
        knots, levels = self._knot_array, self._level_array
        if knots.size == 1:
            # Every normal score was the same value: below it is normal, at or above it is
            # not; NaN stays NaN (unscorable), as np.interp keeps it for larger tables.
            out: F64 = np.where(np.isnan(x), np.nan, np.where(x < knots[0], 0.0, 1.0))
            return out
        out = np.asarray(np.interp(x, knots, levels, left=0.0, right=1.0), dtype=np.float64)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in the model metadata."""
        return {"raw": list(self.raw), "level": list(self.level), "normal_count": self.normal_count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantileCalibrator:
        """Inverse of `to_dict`, checking the invariants a hand-edited file could break."""
        missing = [key for key in ("raw", "level") if key not in data]
        if missing:
            raise ValueError(f"calibration table: no {' or '.join(missing)} list")
        try:
            raw = tuple(float(v) for v in data["raw"])
            level = tuple(float(v) for v in data["level"])
        except (TypeError, ValueError):
            raise ValueError("calibration table: raw and level must be lists of numbers") from None
        if len(raw) != len(level) or not raw:
            raise ValueError("calibration table: raw and level must be non-empty and equal length")
        if not all(math.isfinite(v) for v in (*raw, *level)):
            # NaN compares false both ways, so it would slip through the order checks below
            # and np.interp would then answer NaN or garbage for every score near it.
            raise ValueError("calibration table: knots and levels must be finite numbers")
        if any(b <= a for a, b in itertools.pairwise(raw)):
            raise ValueError("calibration table: raw knots must be strictly increasing")
        if any(b < a for a, b in itertools.pairwise(level)) or not (
            level[0] >= 0.0 and level[-1] <= 1.0
        ):
            raise ValueError("calibration table: levels must be non-decreasing within [0, 1]")
        return cls(raw, level, int(data.get("normal_count", 0)))
