"""Statistical baselines: what the models must beat to be worth their cost.

Both are fitted on normal events only and score an event by its most extreme feature:

* z-score: max over features of |x - mean| / std;
* IQR rule: max over features of the distance outside [Q1, Q3], in IQRs (0 inside; the
  classic 1.5 x IQR fence is a threshold on this score).

Each is computed on the raw features and on asinh-compressed ones (heavy-tailed counts and
amounts make raw standard deviations meaningless); the report keeps all four and compares
the models with the best of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
_FLOOR: Final = 1e-9


def _transform(x: npt.ArrayLike, transform: str) -> F64:
    arr = np.asarray(x, dtype=np.float64)
    out: F64 = np.arcsinh(arr) if transform == "asinh" else arr
    return out


@dataclass(frozen=True, slots=True)
class ZScoreBaseline:
    """max |z| over features, with per-feature mean/std of normal data."""

    mean: F64
    std: F64
    transform: str = "none"

    @classmethod
    def fit(cls, x_normal: F32, transform: str = "none") -> ZScoreBaseline:
        """Per-feature mean and standard deviation of normal rows."""
        z = _transform(x_normal, transform)
        return cls(z.mean(axis=0), np.maximum(z.std(axis=0), _FLOOR), transform)

    def score(self, x: F32) -> F64:
        """Largest absolute z-score of each row."""
        out: F64 = np.abs((_transform(x, self.transform) - self.mean) / self.std).max(axis=1)
        return out


@dataclass(frozen=True, slots=True)
class IQRBaseline:
    """Distance outside the interquartile range, in IQRs, of the most extreme feature."""

    q1: F64
    q3: F64
    transform: str = "none"

    @classmethod
    def fit(cls, x_normal: F32, transform: str = "none") -> IQRBaseline:
        """Per-feature quartiles of normal rows."""
        z = _transform(x_normal, transform)
        q1, q3 = np.quantile(z, [0.25, 0.75], axis=0)
        return cls(q1, q3, transform)

    def score(self, x: F32) -> F64:
        """0 inside [Q1, Q3] on every feature, else the largest excess in IQRs."""
        z = _transform(x, self.transform)
        iqr = np.maximum(self.q3 - self.q1, _FLOOR)
        below = (self.q1 - z) / iqr
        above = (z - self.q3) / iqr
        out: F64 = np.maximum(0.0, np.maximum(below, above)).max(axis=1)
        return out


def fit_baselines(x_normal: F32) -> dict[str, ZScoreBaseline | IQRBaseline]:
    """The four baselines of the report, keyed by their report name."""
    return {
        "zscore_raw": ZScoreBaseline.fit(x_normal, "none"),
        "zscore_asinh": ZScoreBaseline.fit(x_normal, "asinh"),
        "iqr_raw": IQRBaseline.fit(x_normal, "none"),
        "iqr_asinh": IQRBaseline.fit(x_normal, "asinh"),
    }
