"""Operating points and baselines: the yardsticks of the evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from models.baselines import IQRBaseline, ZScoreBaseline, fit_baselines
from models.metrics import decision_metrics, detection_metrics, operating_point, threshold_for_fpr


def test_threshold_for_fpr_flags_at_most_the_allowed_share() -> None:
    normal = np.arange(1000.0)
    t = threshold_for_fpr(normal, 0.003)
    assert (normal >= t).sum() == 3


def test_operating_point_respects_the_fpr_bound() -> None:
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(10_000, bool), np.ones(100, bool)]
    score = np.r_[rng.normal(size=10_000), rng.normal(3, 1, size=100)]
    point = operating_point(labels, score, 0.01)
    flagged = score >= point.threshold
    assert flagged[~labels].mean() <= 0.01
    assert flagged[labels].mean() == pytest.approx(point.tpr)


def test_detection_metrics_report_per_type_recall() -> None:
    labels = np.array([0] * 1000 + [1] * 10 + [3] * 10, dtype=np.int8)
    score = np.r_[np.linspace(0, 1, 1000), np.full(10, 2.0), np.full(10, 0.5)]
    m = detection_metrics(labels, score)
    per_type = m["recall_per_type_at_fpr"]["0.3%"]
    assert per_type["price_spike"] == 1.0 and per_type["velocity_burst"] == 0.0
    assert per_type["volume_burst"] is None
    d = decision_metrics(labels, score >= 1.5)
    assert d["tpr"] == 0.5 and d["fpr"] == 0.0 and d["precision"] == 1.0


def test_baselines_score_the_most_extreme_feature() -> None:
    normal = np.random.default_rng(1).normal(size=(5000, 3)).astype(np.float32)
    z = ZScoreBaseline.fit(normal)
    iqr = IQRBaseline.fit(normal)
    x = np.array([[0, 0, 0], [0, 6, 0]], np.float32)
    assert z.score(x)[1] > 5 > z.score(x)[0]
    assert iqr.score(x)[0] == 0.0 and iqr.score(x)[1] > 3
    assert set(fit_baselines(normal)) == {"zscore_raw", "zscore_asinh", "iqr_raw", "iqr_asinh"}
