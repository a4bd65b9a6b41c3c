"""Evaluation on a labelled stream the models never saw: models, ensemble, baselines.

Protocol (stated in every report): the stream's first `warmup_events` events only warm
the per-entity window state up (never scored: they are the sequence models' history); the
rest is split by order into a *tuning* part (default its first half) and a *test* part.
The tuning part fits the statistical baselines on its normal events and chooses the one
ensemble threshold that gives the target FPR there; all figures are measured on the test
part only. Nothing about the test part is used to choose anything, so the test figures
are honest estimates for a stream of that kind.

Why a warm-up: window features and entity baselines depend on how long the stream has run
(one-hour windows take an hour to fill; `entity_events_seen` only grows). Models calibrated
on the end of a training stream see a younger stream as shifted, so the CLI by default
warms an evaluation stream up for as many events as preceded the models' hold-out part in
training (their warm-up and fit part, `models.metadata.calibration_stream_age`), and its
test part then sits at the stream age the calibration was made at.

The suggested vote (`report["ensemble"]["suggested"]`) is chosen on the tuning part too:
the weights of the weighted vote and thresholds per predicted type (`type_thresholds`),
measured on the test part beside the single tuned threshold of the same weights.

Figures per detector: ROC-AUC, PR-AUC, TPR at FPR <= 0.1% / 0.3% / 1% (each at the lowest
threshold meeting the FPR bound on the test part) and recall per anomaly type there. For
the ensemble, additionally the decision with the configured thresholds ("as configured")
and with the tuned threshold ("tuned").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from models.baselines import fit_baselines
from models.calibration import QuantileCalibrator
from models.dataset import LabelledFeatures
from models.ensemble import TYPES, UNKNOWN_TYPE, decide_batch, thresholds_for
from models.metrics import (
    decision_metrics,
    detection_metrics,
    fpr_key,
    operating_point,
    threshold_for_fpr,
)
from models.progress import Progress, silent
from models.registry import ScoreBatch
from models.scoring import ModelScorer, score_stream
from models.type_thresholds import F64, TypeThresholds, allocate
from services.common.config.model import EnsembleConfig, FeatureFlags
from services.common.model_names import ModelName

STRATEGIES: Final = ("weighted", "k_of_n", "any", "all", "cascade")
TARGET_TPR: Final = 0.95
TARGET_GAIN: Final = 0.12


@dataclass(frozen=True, slots=True)
class EvaluationSettings:
    """How the held-out stream is used."""

    tune_fraction: float = 0.5
    """Share of the measured (post-warm-up) events used for tuning."""
    target_fpr: float = 0.003
    warmup_events: int = 0
    """Leading events that only warm the state up."""
    recalibrate: bool = False
    """Refit each model's calibration table on the tuning part's normal events: what a
    deployment gets by recalibrating on its own recent traffic. Off by default: the
    registered tables are what serving uses."""

    def __post_init__(self) -> None:
        if not 0.1 <= self.tune_fraction <= 0.9:
            raise ValueError(f"tune_fraction must be within [0.1, 0.9], got {self.tune_fraction}")


@dataclass(frozen=True, slots=True, eq=False)
class EvaluationResult:
    """The report (JSON-ready) and the curves' inputs for the plots."""

    report: dict[str, Any]
    test_labels: np.ndarray[Any, np.dtype[np.int8]]
    test_scores: dict[str, np.ndarray[Any, np.dtype[np.float64]]]
    """Detector name -> score per test event (models, ensemble strategies, baselines)."""


def _with_strategy(config: EnsembleConfig, strategy: str) -> EnsembleConfig:
    return config.model_copy(update={"strategy": strategy})


def evaluate_stream(
    data: LabelledFeatures,
    scorers: Mapping[ModelName, ModelScorer],
    ensemble: EnsembleConfig,
    flags: FeatureFlags | None = None,
    settings: EvaluationSettings | None = None,
    progress: Progress = silent,
    versions: Mapping[ModelName, str] | None = None,
) -> EvaluationResult:
    """Score the stream with every model, the ensemble and the baselines; measure."""
    settings = settings or EvaluationSettings()
    data.validate()
    n = len(data)
    start = settings.warmup_events
    if not 0 <= start < n - 1:
        raise ValueError(f"warmup_events ({start}) must leave events to measure (stream: {n})")
    cut = start + round((n - start) * settings.tune_fraction)
    tune, test = slice(start, cut), slice(cut, n)
    # Model scores exist for the measured events only (the warm-up is history): the same
    # parts, counted from the first measured event.
    m_tune, m_test = slice(0, cut - start), slice(cut - start, n - start)
    labels = data.labels[start:]
    test_labels = labels[m_test]
    tune_normal = labels[m_tune] == 0
    if (test_labels > 0).sum() == 0:
        raise ValueError("the test part of the stream has no labelled anomalies to measure")

    batches: dict[ModelName, ScoreBatch] = {}
    for name, scorer in scorers.items():
        progress(f"[evaluate] scoring with {name.value}")
        batch = score_stream(scorer, data, progress, start=start)
        if settings.recalibrate:
            table = QuantileCalibrator.fit(batch.raw[m_tune][tune_normal])
            batch = ScoreBatch(table(batch.raw), batch.raw, batch.anomaly_type)
        batches[name] = batch
    test_scores: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
    report: dict[str, Any] = {
        "protocol": {
            "warmup_events": start,
            "recalibrated_on_tuning_part": settings.recalibrate,
            "tune_fraction": settings.tune_fraction,
            "target_fpr": settings.target_fpr,
            "note": (
                f"first {start:,} events: state warm-up only; then a tuning part (baseline "
                "fitting, ensemble threshold tuning) and a test part that all figures are on"
            ),
        },
        "stream": {
            "events": n,
            "warmup_events": start,
            "tune_events": cut - start,
            "test_events": n - cut,
            "test_label_counts": _counts(test_labels),
        },
        "models": {},
        "baselines": {},
        "ensemble": {"configured_strategy": ensemble.strategy, "strategies": {}},
    }
    for name, batch in batches.items():
        metrics = detection_metrics(test_labels, batch.score[m_test])
        metrics["version"] = (versions or {}).get(name)
        if batch.anomaly_type is not None:
            anomalous = test_labels > 0
            metrics["type_accuracy"] = float(
                (batch.anomaly_type[m_test][anomalous] + 1 == test_labels[anomalous]).mean()
            )
        report["models"][name.value] = metrics
        test_scores[name.value] = batch.score[m_test]

    progress("[evaluate] baselines")
    for key, baseline in fit_baselines(data.matrix[tune][tune_normal]).items():
        score = baseline.score(data.matrix[test])
        report["baselines"][key] = detection_metrics(test_labels, score)
        test_scores[f"baseline:{key}"] = score

    types = batches[ModelName.XGBOOST].anomaly_type if ModelName.XGBOOST in batches else None
    scores = {name: batch.score for name, batch in batches.items()}
    strategies = (ensemble.strategy, *(s for s in STRATEGIES if s != ensemble.strategy))
    for strategy in strategies:
        decided = decide_batch(scores, types, _with_strategy(ensemble, strategy), flags)
        threshold = threshold_for_fpr(decided.score[m_tune][tune_normal], settings.target_fpr)
        tuned = decided.score[m_test] >= threshold
        entry = {
            "metrics": detection_metrics(test_labels, decided.score[m_test]),
            "as_configured": decision_metrics(test_labels, decided.anomalous[m_test]),
            "tuned": {
                "threshold": threshold,
                **decision_metrics(test_labels, tuned),
            },
        }
        report["ensemble"]["strategies"][strategy] = entry
        test_scores[f"ensemble:{strategy}"] = decided.score[m_test]
    report["ensemble"]["suggested"] = _suggest_weights(
        scores, types, ensemble, flags, labels, m_tune, m_test, settings.target_fpr
    )
    report["comparison"] = _comparison(
        report, test_labels, test_scores, ensemble.strategy, settings
    )
    return EvaluationResult(report, test_labels, test_scores)


WEIGHT_GRID: Final = {
    ModelName.ISOLATION_FOREST: (0.0, 0.5, 1.0),
    ModelName.XGBOOST: (1.0, 2.0, 4.0),
    ModelName.TRANSFORMER: (0.0, 0.5, 1.0),
}


def _suggest_weights(
    scores: Mapping[ModelName, np.ndarray[Any, np.dtype[np.float64]]],
    types: np.ndarray[Any, np.dtype[np.int64]] | None,
    ensemble: EnsembleConfig,
    flags: FeatureFlags | None,
    labels: np.ndarray[Any, np.dtype[np.int8]],
    tune: slice,
    test: slice,
    target_fpr: float,
) -> dict[str, Any]:
    """Weights and thresholds of the weighted vote chosen on the tuning part, with the
    figures they then give on the test part: a data-driven starting point for the
    `ensemble` section, never fitted on the test part.

    For each weight combination the false-positive budget of the target FPR is split over
    the predicted types (`type_thresholds.allocate`), and the combination catching the most
    anomalies of the tuning part wins. The single tuned threshold of those weights is
    reported beside it, on the same test part, so that the gain of per-type thresholds is
    a measured figure (it is not always positive: the split is fitted on a few hundred
    anomalies per type)."""
    import itertools

    tune_labels = labels[tune]
    n_types = len(TYPES)
    no_types = np.full(tune_labels.size, UNKNOWN_TYPE, np.int64)
    best: tuple[int, dict[ModelName, float], TypeThresholds, F64] | None = None
    names = [m for m in WEIGHT_GRID if m in scores]
    for combo in itertools.product(*(WEIGHT_GRID[m] for m in names)):
        weights = dict(zip(names, combo, strict=True))
        if sum(weights.values()) == 0:
            continue
        config = ensemble.model_copy(update={"strategy": "weighted", "weights": weights})
        score = decide_batch(scores, types, config, flags).score
        split = allocate(
            score[tune], no_types if types is None else types[tune], tune_labels, n_types,
            target_fpr,
        )  # fmt: skip
        if best is None or split.caught > best[0]:
            best = (split.caught, weights, split, score)
    if best is None:
        return {}
    _, weights, split, score = best
    single = threshold_for_fpr(score[tune][tune_labels == 0], target_fpr)
    per_type = {t.value: _round_up(float(v)) for t, v in zip(TYPES, split.per_type, strict=True)}
    default = _round_up(split.default)
    test_types = np.full(score[test].size, UNKNOWN_TYPE, np.int64) if types is None else types[test]
    table = EnsembleConfig(thresholds=per_type, default_threshold=default)
    return {
        "strategy": "weighted",
        "weights": {m.value: w for m, w in weights.items()},
        "threshold": single,
        "tune_tpr": float((score[tune][tune_labels > 0] >= single).mean()),
        "test": decision_metrics(labels[test], score[test] >= single),
        "thresholds_per_type": per_type if types is not None else {},
        "default_threshold": default,
        "tune_false_positives_per_type": {
            t.value: int(f) for t, f in zip(TYPES, split.false_positives[:n_types], strict=True)
        },
        "tune_tpr_per_type_thresholds": split.caught / max(int((tune_labels > 0).sum()), 1),
        "test_per_type_thresholds": decision_metrics(
            labels[test], score[test] >= thresholds_for(test_types, table)
        ),
    }


def _round_up(threshold: float) -> float:
    """A threshold as a config file holds it (6 decimals), rounded up so that it flags no
    more normal events than the exact one."""
    return math.ceil(threshold * 1e6) / 1e6


def _counts(labels: np.ndarray[Any, Any]) -> dict[str, int]:
    from services.common.anomaly_types import ALL_LABELS

    counts = np.bincount(labels.astype(np.int64), minlength=len(ALL_LABELS))
    return {label: int(c) for label, c in zip(ALL_LABELS, counts, strict=True)}


def _comparison(
    report: dict[str, Any],
    labels: np.ndarray[Any, Any],
    scores: Mapping[str, np.ndarray[Any, np.dtype[np.float64]]],
    strategy: str,
    settings: EvaluationSettings,
) -> dict[str, Any]:
    """The targets: ensemble TPR at FPR <= target, and its gain over the best baseline."""
    is_anomaly = labels > 0
    target = settings.target_fpr

    def point(key: str) -> dict[str, float]:
        clean = np.nan_to_num(scores[key], nan=-np.inf)
        p = operating_point(is_anomaly, clean, target)
        return {"tpr": p.tpr, "fpr": p.fpr, "threshold": p.threshold}

    ensemble = point(f"ensemble:{strategy}")
    baseline_keys = [k for k in scores if k.startswith("baseline:")]
    baseline_points = {k.split(":", 1)[1]: point(k) for k in baseline_keys}
    best = max(baseline_points, key=lambda k: baseline_points[k]["tpr"])
    base = baseline_points[best]
    tuned = report["ensemble"]["strategies"][strategy]["tuned"]
    gain = ensemble["tpr"] - base["tpr"]
    relative = ensemble["tpr"] / base["tpr"] - 1.0 if base["tpr"] > 0 else float("inf")
    return {
        "target_fpr": target,
        "fpr_key": fpr_key(target),
        "ensemble_strategy": strategy,
        "ensemble_at_target": ensemble,
        "ensemble_tuned_threshold": {
            "threshold": tuned["threshold"], "tpr": tuned["tpr"], "fpr": tuned["fpr"],
        },
        "best_baseline": best,
        "baseline_at_target": base,
        "recall_gain_points": gain,
        "recall_gain_relative": relative,
        "target_tpr": TARGET_TPR,
        "tpr_target_met": ensemble["tpr"] >= TARGET_TPR,
        "target_gain": TARGET_GAIN,
        "gain_target_met": gain >= TARGET_GAIN,
    }  # fmt: skip
