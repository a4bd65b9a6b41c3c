"""What "normal" looks like for each feature, learnt from the traffic the router scores, so
that a flagged decision can say which of its features were furthest from it.

The router holds no model artifacts (in a cluster it only talks to the V2 servers), so the
baseline cannot come from the registry; it is kept here instead, from the rows the router
scores anyway. Each batch adds at most `sample_rows` rows (a fixed, small cost per batch,
~20 µs, whatever its size), as exponentially decayed sums: the baseline follows the traffic
over about `halflife_rows` sampled rows and forgets a change of regime as it goes.
Anomalies are rare enough not to move it.

Values are compared on an asinh scale, the Transformer's own input scale: amounts, counts
and ratios are heavy-tailed, and on their raw scale one large legitimate payment would make
every later amount look ordinary. asinh keeps the sign, is ~log for large values and
linear near zero, and is finite for every float32, so a z-score here never overflows.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class FeatureBaseline:
    """Decayed mean and spread of asinh(feature), per feature; `z` once `min_rows` seen."""

    def __init__(
        self,
        n_features: int,
        *,
        sample_rows: int = 64,
        halflife_rows: float = 200_000.0,
        min_rows: float = 1_000.0,
    ) -> None:
        self.sample_rows = sample_rows
        self.halflife_rows = halflife_rows
        self.min_rows = min_rows
        self._count = np.zeros(n_features)
        self._sum = np.zeros(n_features)
        self._sum_sq = np.zeros(n_features)

    def observe(self, matrix: F32) -> None:
        """Add the first `sample_rows` rows of a batch; missing values (NaN) are skipped."""
        x = np.arcsinh(matrix[: self.sample_rows].astype(np.float64))
        if x.shape[0] == 0:
            return
        ok = np.isfinite(x)
        x = np.where(ok, x, 0.0)
        decay = 0.5 ** (x.shape[0] / self.halflife_rows)
        self._count = self._count * decay + ok.sum(axis=0)
        self._sum = self._sum * decay + x.sum(axis=0)
        self._sum_sq = self._sum_sq * decay + (x * x).sum(axis=0)

    def z(self, matrix: F32) -> F64 | None:
        """z-scores of the rows on the asinh scale; 0 for a missing value and for a feature
        with fewer than `min_rows` values behind it; None while no feature has."""
        warm = self._count >= self.min_rows
        if not warm.any():
            return None
        count = np.maximum(self._count, 1.0)
        mean = self._sum / count
        spread = np.sqrt(np.maximum(self._sum_sq / count - mean * mean, 0.0))
        # A constant feature (spread 0) makes any change stand out, but not infinitely.
        z = (np.arcsinh(matrix.astype(np.float64)) - mean) / np.maximum(spread, 1e-3)
        return np.where(warm, np.nan_to_num(z, nan=0.0), 0.0)
