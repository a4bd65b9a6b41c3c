"""Quantile calibration: monotonic, within [0, 1], and meaning "share of normals below"."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import QuantileCalibrator
from models.errors import TrainingDataError


def test_calibrated_scores_are_monotonic_and_in_unit_interval() -> None:
    rng = np.random.default_rng(0)
    cal = QuantileCalibrator.fit(rng.standard_t(3, 50_000))
    raw = np.linspace(-100, 100, 20_001)
    out = cal(raw)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(np.diff(out) >= 0)
    assert out[0] == 0.0 and out[-1] == 1.0


def test_calibrated_score_is_share_of_normal_scores_below() -> None:
    rng = np.random.default_rng(1)
    normal = rng.normal(size=100_000)
    cal = QuantileCalibrator.fit(normal)
    fresh = rng.normal(size=200_000)
    # A threshold t on calibrated scores flags about 1 - t of normal traffic, in the tail too.
    for t in (0.5, 0.99, 0.997, 0.999):
        assert (cal(fresh) > t).mean() == pytest.approx(1 - t, rel=0.3)


def test_ties_and_constant_scores_stay_valid() -> None:
    scores = np.r_[np.zeros(900), np.linspace(1, 2, 100)]
    cal = QuantileCalibrator.fit(scores)
    assert cal(np.array([0.0]))[0] == pytest.approx(0.9)
    assert cal(np.array([-1.0]))[0] == 0.0
    constant = QuantileCalibrator.fit(np.ones(500))
    assert constant(np.array([0.5, 1.0, 2.0])).tolist() == [0.0, 1.0, 1.0]


def test_nan_passes_through_as_missing() -> None:
    cal = QuantileCalibrator.fit(np.arange(1000.0))
    assert np.isnan(cal(np.array([np.nan]))[0])
    # A table of one knot (every normal score equal) must not call NaN "most anomalous".
    constant = QuantileCalibrator.fit(np.ones(500))
    out = constant(np.array([np.nan, 0.0, 3.0]))
    assert np.isnan(out[0]) and out[1:].tolist() == [0.0, 1.0]


def test_a_scalar_score_is_calibrated_like_a_one_element_batch() -> None:
    cal = QuantileCalibrator.fit(np.arange(1000.0))
    assert float(cal(499.5)) == pytest.approx(cal(np.array([499.5]))[0])
    assert np.isnan(cal(float("nan")))


def test_round_trip_and_tampered_tables_are_refused() -> None:
    cal = QuantileCalibrator.fit(np.random.default_rng(2).normal(size=5_000))
    again = QuantileCalibrator.from_dict(cal.to_dict())
    x = np.linspace(-4, 4, 101)
    assert np.array_equal(cal(x), again(x))
    broken = cal.to_dict()
    broken["raw"] = list(reversed(broken["raw"]))
    with pytest.raises(ValueError, match="strictly increasing"):
        QuantileCalibrator.from_dict(broken)
    broken = cal.to_dict()
    broken["level"][-1] = 1.5
    with pytest.raises(ValueError, match="within"):
        QuantileCalibrator.from_dict(broken)
    # NaN compares false both ways: it would pass the order checks unnoticed.
    for key, where in (("raw", 10), ("level", 10), ("raw", -1)):
        broken = cal.to_dict()
        broken[key][where] = float("nan")
        with pytest.raises(ValueError, match="finite"):
            QuantileCalibrator.from_dict(broken)
    with pytest.raises(ValueError, match="no level"):
        QuantileCalibrator.from_dict({"raw": [0.0, 1.0]})
    with pytest.raises(ValueError, match="lists of numbers"):
        QuantileCalibrator.from_dict({"raw": [0.0, "x"], "level": [0.0, 1.0]})


def test_too_few_or_non_finite_normal_scores_are_training_data_errors() -> None:
    with pytest.raises(TrainingDataError, match="at least"):
        QuantileCalibrator.fit(np.arange(10.0))
    with pytest.raises(TrainingDataError, match="NaN"):
        QuantileCalibrator.fit(np.r_[np.arange(500.0), np.nan])
