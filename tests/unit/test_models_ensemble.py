"""The ensemble vote behaves as `models.ensemble` documents, degraded cases included."""

from __future__ import annotations

import numpy as np
import pytest

from models.ensemble import decide, decide_batch, idle_voters, needs_transformer
from services.common.anomaly_types import AnomalyType
from services.common.config.model import (
    CascadeConfig,
    EnsembleConfig,
    FeatureFlags,
    ModelFlag,
)
from services.common.model_names import ModelName

IF, XGB, TF = ModelName.ISOLATION_FOREST, ModelName.XGBOOST, ModelName.TRANSFORMER


def config(strategy: str = "weighted", **kw: object) -> EnsembleConfig:
    base: dict[str, object] = {
        "strategy": strategy,
        "weights": {IF: 1.0, XGB: 2.0, TF: 1.0},
        "default_threshold": 0.9,
        "thresholds": {t: 0.9 for t in AnomalyType},
    }
    base.update(kw)
    return EnsembleConfig.model_validate(base)


def test_weighted_mean_against_the_threshold_of_the_predicted_type() -> None:
    cfg = config(thresholds={AnomalyType.PRICE_SPIKE: 0.8, AnomalyType.SLOW_DRIFT: 0.95})
    scores = {IF: 0.7, XGB: 0.9, TF: 0.8}  # 1 - (0.3 * 0.1**2 * 0.2) ** (1/4) = 0.8435
    spike = decide(scores, AnomalyType.PRICE_SPIKE, cfg)
    assert spike.anomalous and spike.score == pytest.approx(1 - (0.3 * 0.01 * 0.2) ** 0.25)
    assert spike.threshold == 0.8 and spike.anomaly_type is AnomalyType.PRICE_SPIKE
    drift = decide(scores, AnomalyType.SLOW_DRIFT, cfg)
    assert not drift.anomalous and drift.threshold == 0.95
    # A type without a configured threshold falls back to the default.
    burst = decide(scores, AnomalyType.VELOCITY_BURST, cfg)
    assert burst.threshold == 0.9
    assert (
        "weighted score 0.8435" in spike.explanation and "xgboost=0.9000 w=2" in spike.explanation
    )


def test_weighted_renormalises_over_present_models_and_marks_degraded() -> None:
    d = decide({IF: 0.95, XGB: None, TF: 0.93}, None, config())
    assert d.degraded and d.missing == (XGB,)
    assert d.score == pytest.approx(1 - (0.05 * 0.07) ** 0.5) and d.anomalous
    assert d.anomaly_type is None and d.threshold == 0.9  # unknown type: default threshold
    assert "degraded, missing: xgboost" in d.explanation


def test_no_score_at_all_never_alerts() -> None:
    d = decide({IF: None, XGB: None, TF: None}, None, config())
    assert not d.anomalous and d.degraded and np.isnan(d.score)
    assert "no model score" in d.explanation


@pytest.mark.parametrize(
    ("strategy", "k", "expected_score", "anomalous"),
    [
        ("k_of_n", 2, 0.92, True),  # two models above 0.9
        ("k_of_n", 3, 0.5, False),
        ("any", 2, 0.97, True),
        ("all", 2, 0.5, False),
    ],
)
def test_vote_strategies_use_order_statistics(
    strategy: str, k: int, expected_score: float, anomalous: bool
) -> None:
    d = decide({IF: 0.97, XGB: 0.92, TF: 0.5}, AnomalyType.PRICE_SPIKE, config(strategy, k=k))
    assert d.score == pytest.approx(expected_score)
    assert d.anomalous is anomalous


def test_k_of_n_with_fewer_models_than_k_lowers_k_and_is_degraded() -> None:
    d = decide({IF: 0.95, XGB: None, TF: None}, None, config("k_of_n", k=2))
    assert d.anomalous and d.degraded and d.score == pytest.approx(0.95)
    assert set(d.missing) == {XGB, TF}


def test_all_ignores_missing_models() -> None:
    d = decide({IF: 0.95, XGB: 0.99, TF: None}, None, config("all"))
    assert d.anomalous and d.degraded and d.score == pytest.approx(0.95)


def test_cascade_decides_outside_the_band_without_the_transformer() -> None:
    cfg = config("cascade", cascade=CascadeConfig(uncertain_low=0.5, uncertain_high=0.98))
    low = decide({IF: 0.3, XGB: 0.2, TF: None}, None, cfg)
    assert not low.anomalous and not low.degraded
    assert "transformer=missing w=1 not needed" in low.explanation
    high = decide({IF: 0.97, XGB: 0.99, TF: None}, None, cfg)  # cheap = 0.9856
    assert high.anomalous and not high.degraded
    band = decide({IF: 0.9, XGB: 0.9, TF: 0.99}, None, cfg)  # cheap 0.9: in the band
    assert band.anomalous and band.score == pytest.approx(1 - (0.1**3 * 0.01) ** 0.25)
    band_missing = decide({IF: 0.9, XGB: 0.92, TF: None}, None, cfg)
    assert band_missing.degraded and band_missing.missing == (TF,)
    assert band_missing.anomalous  # falls back to the cheap models: 0.9138 >= 0.9


def test_cascade_holds_the_cheap_score_to_the_type_threshold_outside_the_band() -> None:
    """Outside the band the cheap score is the score, judged like any other against the
    type's threshold: a decision must never read "score 0.985 >= threshold 0.995"."""
    band = CascadeConfig(uncertain_low=0.5, uncertain_high=0.98)
    strict = config("cascade", cascade=band, thresholds={AnomalyType.PRICE_SPIKE: 0.995})
    above = decide({IF: 0.97, XGB: 0.99, TF: None}, AnomalyType.PRICE_SPIKE, strict)
    assert above.score == pytest.approx(1 - (0.03 * 0.01**2) ** (1 / 3))  # 0.9856: above band
    assert not above.anomalous and not above.degraded
    lenient = config("cascade", cascade=band, thresholds={AnomalyType.PRICE_SPIKE: 0.3})
    below = decide({IF: 0.45, XGB: 0.45, TF: None}, AnomalyType.PRICE_SPIKE, lenient)
    assert below.score == pytest.approx(0.45) and below.anomalous and not below.degraded


def test_needs_transformer_selects_the_uncertain_band() -> None:
    cfg = config("cascade")
    cheap = {IF: np.array([0.1, 0.7, 0.99, np.nan]), XGB: np.array([0.1, 0.8, 0.995, np.nan])}
    assert needs_transformer(cheap, cfg).tolist() == [False, True, False, True]
    assert needs_transformer(cheap, config("weighted")).all()
    off = FeatureFlags(models={TF: ModelFlag(enabled=False)})
    assert not needs_transformer(cheap, cfg, off).any()


def test_shadow_and_disabled_models_do_not_vote() -> None:
    flags = FeatureFlags(models={TF: ModelFlag(shadow=True), IF: ModelFlag(enabled=False)})
    d = decide({IF: 0.0, XGB: 0.95, TF: 0.0}, AnomalyType.NOVELTY_JUMP, config(), flags)
    assert d.anomalous and d.score == pytest.approx(0.95) and not d.degraded
    assert "transformer=0.0000 shadow" in d.explanation
    assert "isolation_forest" not in d.explanation


def test_a_shadow_xgboost_does_not_choose_the_threshold() -> None:
    """Its predicted type would pick `thresholds[type]`, changing decisions it must not."""
    cfg = config(thresholds={AnomalyType.PRICE_SPIKE: 0.5}, default_threshold=0.9)
    scores = {IF: 0.6, XGB: 0.6, TF: 0.6}
    voting = decide(scores, AnomalyType.PRICE_SPIKE, cfg)
    assert voting.anomalous and voting.threshold == 0.5
    for flag in (ModelFlag(shadow=True), ModelFlag(enabled=False)):
        d = decide(scores, AnomalyType.PRICE_SPIKE, cfg, FeatureFlags(models={XGB: flag}))
        assert not d.anomalous and d.threshold == 0.9 and d.anomaly_type is None


def test_weight_zero_voters_are_idle_under_the_means_only() -> None:
    zero_if = {IF: 0.0, XGB: 2.0, TF: 1.0}
    assert idle_voters(config(weights=zero_if)) == {IF}
    assert idle_voters(config("cascade", weights=zero_if)) == {IF}
    # k_of_n / any / all ignore weights; XGBoost's type picks the threshold, so it stays.
    assert idle_voters(config("any", weights=zero_if)) == frozenset()
    assert idle_voters(config(weights={IF: 1.0, XGB: 0.0, TF: 1.0})) == frozenset()
    # A shadow is not a voter: it is still called (its scores are what shadow mode is for).
    assert (
        idle_voters(config(weights=zero_if), FeatureFlags(models={IF: ModelFlag(shadow=True)}))
        == frozenset()
    )
    # An idle voter's missing score does not degrade the decision; a needed one's does.
    d = decide({IF: None, XGB: 0.95, TF: 0.95}, None, config(weights=zero_if))
    assert d.anomalous and not d.degraded and d.missing == ()
    assert "isolation_forest=missing w=0 not needed" in d.explanation
    assert decide({IF: None, XGB: 0.95, TF: 0.95}, None, config()).degraded
    # Same score as when the idle model had answered: weight 0 never counted.
    full = decide({IF: 0.1, XGB: 0.95, TF: 0.8}, None, config(weights=zero_if))
    idle = decide({IF: None, XGB: 0.95, TF: 0.8}, None, config(weights=zero_if))
    assert idle.score == pytest.approx(full.score)


def test_cascade_never_sends_to_an_idle_transformer() -> None:
    cfg = config("cascade", weights={IF: 1.0, XGB: 2.0, TF: 0.0})
    cheap = {IF: np.array([0.7, 0.8]), XGB: np.array([0.8, 0.85])}
    assert not needs_transformer(cheap, cfg).any()
    d = decide_batch(cheap, None, cfg)
    assert not d.degraded.any()


def test_one_confident_model_is_not_averaged_away() -> None:
    d = decide({IF: 0.5, XGB: 0.9999, TF: 0.5}, None, config())
    assert d.score > 0.99 and d.anomalous
    saturated = decide({IF: 0.0, XGB: 1.0, TF: 0.0}, None, config())
    assert saturated.score == pytest.approx(1 - 1e-6**0.5)


def test_unweighted_model_counts_with_weight_one() -> None:
    cfg = config(weights={XGB: 3.0})
    d = decide({IF: 0.5, XGB: 0.9, TF: 0.5}, None, cfg)
    assert d.score == pytest.approx(1 - (0.5 * 0.1**3 * 0.5) ** (1 / 5))


def test_batch_vote_matches_single_votes() -> None:
    rng = np.random.default_rng(0)
    n = 200
    scores = {m: rng.random(n) for m in ModelName}
    scores[TF][rng.random(n) < 0.2] = np.nan
    types = rng.integers(-1, len(AnomalyType), n)
    for strategy in ("weighted", "k_of_n", "any", "all", "cascade"):
        cfg = config(strategy, thresholds={AnomalyType.PRICE_SPIKE: 0.5})
        batch = decide_batch(scores, types, cfg)
        for i in range(0, n, 17):
            kind = list(AnomalyType)[types[i]] if types[i] >= 0 else None
            one = decide({m: float(scores[m][i]) for m in ModelName}, kind, cfg)
            assert one.anomalous == batch.anomalous[i]
            assert one.degraded == batch.degraded[i]
            assert one == batch.decision(i)


def test_score_columns_of_wrong_length_are_refused() -> None:
    with pytest.raises(ValueError, match="expected 3"):
        decide_batch({IF: np.zeros(3), XGB: np.zeros(2)}, None, config())
