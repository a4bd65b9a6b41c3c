"""The ensemble vote: per-model calibrated scores (+ XGBoost's predicted type) -> decision.

A pure function of its inputs, shared by the router (live decisions) and the evaluation
(offline figures), so the numbers in the evaluation report are those of the code that alerts.

Inputs per event: each model's calibrated score in [0, 1] (missing = the model failed, timed
out, or was not asked), the anomaly type XGBoost finds most likely (index into AnomalyType,
-1 = unknown), the `EnsembleConfig` and, optionally, the feature flags.

Who votes: models that are enabled and not in shadow mode (shadow models are reported in the
explanation but never change a decision). A model without a configured weight counts with
weight 1.

Threshold: `thresholds[type]` for the predicted type, `default_threshold` when the type is
unknown (XGBoost missing, disabled or in shadow mode: a shadow's type would change the
threshold, hence the decision) or has no threshold. Every strategy reduces the scores to one
ensemble score and flags the event when that score is >= the threshold:

* `weighted`: weighted mean of the present models' evidence, taken on the log of their
  tail probabilities: score = 1 - prod((1 - s_i) ** (w_i / sum w)) over present models
  (weights renormalised over them), i.e. one minus the weighted geometric mean of
  "share of normal traffic scoring higher". Equal scores give that score back, as an
  arithmetic mean would; but one confident detector (1 - s = 1e-4) is not averaged away by
  two unsure ones (1 - s = 0.5), which is what an ensemble of detectors that each see
  different anomaly types needs (measured on a held-out stream with weights 1/2/1: TPR at
  0.3% FPR 40% with this rule against 18% with the arithmetic mean). 1 - s is floored at
  TAIL_FLOOR so that a saturated score (1.0) stays finite evidence;
* `k_of_n`: the k-th highest present score, i.e. "at least k models are above the
  threshold"; with fewer than k models present, k drops to the number present;
* `any`: the highest present score; `all`: the lowest present score;
* `cascade`: the weighted mean of the cheap models (all but the Transformer) where it is
  below `cascade.uncertain_low` or at or above `cascade.uncertain_high` (the cheap models
  are sure: no Transformer call); in between, the weighted mean of all present models.
  Either is held to the type's threshold like every other strategy's score (with the
  thresholds inside the band, as shipped, below it is normal and above it anomalous).
  `needs_transformer` tells the router which events to send to the Transformer.

Idle voters (`idle_voters`): under `weighted` and `cascade`, a voter with weight 0 adds
nothing to the mean, so the router does not call it (evaluation gave the shipped Isolation
Forest weight 0; calling it anyway cost a fifth of the model server's CPU). XGBoost is never
idle while it votes, since its predicted type picks the threshold. To see an idle model's
scores without a vote, put it in shadow mode.

Degraded: an event is degraded when a voting model's score is missing where it was needed
(for `cascade`, the Transformer only inside the band; an idle voter never). The vote then
goes on with the models present, as documented per strategy; with no score at all the event
is not flagged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from services.common.anomaly_types import AnomalyType
from services.common.config.model import EnsembleConfig, FeatureFlags
from services.common.model_names import ModelName

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

TYPES: Final = tuple(AnomalyType)
UNKNOWN_TYPE: Final = -1
TAIL_FLOOR: Final = 1e-6
"""Smallest tail probability (1 - calibrated score) a model can contribute to `weighted`."""
CHEAP_MODELS: Final = (ModelName.ISOLATION_FOREST, ModelName.XGBOOST)
"""Models the cascade always runs; the Transformer is the expensive one."""

ScoreInput = Mapping[ModelName, npt.ArrayLike | None]


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one event."""

    anomalous: bool
    score: float
    """Ensemble score compared with the threshold (NaN when no model scored)."""
    threshold: float
    anomaly_type: AnomalyType | None
    """Type predicted by XGBoost (None when unknown)."""
    strategy: str
    degraded: bool
    missing: tuple[ModelName, ...]
    """Voting models without a score for this event."""
    explanation: str


@dataclass(frozen=True, slots=True, eq=False)
class BatchDecision:
    """Verdicts on a batch, column-wise; `decision(i)` builds one event's full Decision."""

    anomalous: Bools
    score: F64
    threshold: F64
    anomaly_type: I64
    degraded: Bools
    scores: dict[ModelName, F64]
    voters: tuple[ModelName, ...]
    shadows: tuple[ModelName, ...]
    weights: dict[ModelName, float]
    strategy: str
    needed: dict[ModelName, Bools]
    """Per voter, the events on which its score was needed (all, except the cascade's
    Transformer outside the band)."""

    def __len__(self) -> int:
        return int(self.anomalous.size)

    def decision(self, i: int) -> Decision:
        """The Decision of event i, with its explanation."""
        code = int(self.anomaly_type[i])
        kind = TYPES[code] if code >= 0 else None
        missing = tuple(m for m in self.voters if self.needed[m][i] and np.isnan(self.scores[m][i]))
        return Decision(
            anomalous=bool(self.anomalous[i]),
            score=float(self.score[i]),
            threshold=float(self.threshold[i]),
            anomaly_type=kind,
            strategy=self.strategy,
            degraded=bool(self.degraded[i]),
            missing=missing,
            explanation=self._explain(i, kind, missing),
        )

    def _explain(self, i: int, kind: AnomalyType | None, missing: tuple[ModelName, ...]) -> str:
        verdict = ">=" if self.anomalous[i] else "<"
        if np.isnan(self.score[i]):
            head = f"{self.strategy}: no model score"
        else:
            head = f"{self.strategy} score {self.score[i]:.4f} {verdict} {self.threshold[i]:.4f}"
        head += f" (threshold for {kind.value if kind else 'unknown type'})"
        parts = []
        for m in (*self.voters, *self.shadows):
            value = self.scores[m][i]
            text = "missing" if np.isnan(value) else f"{value:.4f}"
            if m in self.shadows:
                text += " shadow"
            elif self.strategy in ("weighted", "cascade"):
                text += f" w={self.weights[m]:g}"
            if m in self.voters and not self.needed[m][i]:
                text += " not needed"
            parts.append(f"{m.value}={text}")
        tail = f"; degraded, missing: {', '.join(m.value for m in missing)}" if missing else ""
        return f"{head}; " + ", ".join(parts) + tail


_NO_FLAGS: Final = FeatureFlags(models={})
"""No flags: every model votes."""


def _roles(flags: FeatureFlags | None) -> tuple[tuple[ModelName, ...], tuple[ModelName, ...]]:
    return (flags if flags is not None else _NO_FLAGS).roles()


def _column(value: npt.ArrayLike | None, n: int) -> F64:
    if value is None:
        return np.full(n, np.nan)
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1 and n != 1:
        return np.full(n, float(arr[0]))
    if arr.size != n:
        raise ValueError(f"expected {n} scores per model, got {arr.size}")
    return arr


def _batch_size(scores: ScoreInput, anomaly_type: npt.ArrayLike | None) -> int:
    for value in (*scores.values(), anomaly_type):
        if value is not None:
            return int(np.asarray(value).reshape(-1).size)
    return 0


def _weighted(columns: list[F64], weights: list[float], n: int) -> F64:
    """1 - weighted geometric mean of the present models' tail probabilities (1 - score)."""
    if not columns:
        return np.full(n, np.nan)
    s = np.vstack(columns)
    w = np.asarray(weights, dtype=np.float64)[:, None] * ~np.isnan(s)
    total = w.sum(axis=0)
    log_tail = np.log(np.clip(1.0 - np.nan_to_num(s, nan=0.0), TAIL_FLOOR, 1.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_log_tail = (log_tail * w).sum(axis=0) / total
    out: F64 = np.where(total > 0, 1.0 - np.exp(mean_log_tail), np.nan)
    return out


def _order_statistic(columns: list[F64], k: int, n: int) -> F64:
    """k-th highest present score per event (k capped at the number present)."""
    if not columns:
        return np.full(n, np.nan)
    s = np.vstack(columns)
    present = (~np.isnan(s)).sum(axis=0)
    ordered = -np.sort(-np.where(np.isnan(s), -np.inf, s), axis=0)  # descending, NaN last
    pick = np.clip(np.minimum(k, present) - 1, 0, s.shape[0] - 1)
    out: F64 = np.where(present > 0, ordered[pick, np.arange(n)], np.nan)
    return out


def thresholds_for(anomaly_type: I64, config: EnsembleConfig) -> F64:
    """Threshold per event from its predicted type (default for unknown types)."""
    table = np.array(
        [config.thresholds.get(t, config.default_threshold) for t in TYPES]
        + [config.default_threshold]
    )
    codes = np.where(anomaly_type < 0, len(TYPES), anomaly_type)
    out: F64 = table[codes]
    return out


def idle_voters(config: EnsembleConfig, flags: FeatureFlags | None = None) -> frozenset[ModelName]:
    """Voters whose score cannot change any decision, so they need not be called."""
    if config.strategy not in ("weighted", "cascade"):
        return frozenset()
    voters, _ = _roles(flags)
    return frozenset(m for m in voters if m is not ModelName.XGBOOST and config.weight(m) == 0.0)


def needs_transformer(
    scores: ScoreInput, config: EnsembleConfig, flags: FeatureFlags | None = None
) -> Bools:
    """Cascade: events whose cheap-model score falls in the uncertain band (or that no
    cheap model scored), i.e. those to send to the Transformer. All events for the other
    strategies (when the Transformer votes)."""
    n = _batch_size(scores, None)
    voters, _ = _roles(flags)
    if ModelName.TRANSFORMER not in voters or ModelName.TRANSFORMER in idle_voters(config, flags):
        return np.zeros(n, dtype=np.bool_)
    if config.strategy != "cascade":
        return np.ones(n, dtype=np.bool_)
    cheap_names = [m for m in voters if m in CHEAP_MODELS]
    cheap = _weighted(
        [_column(scores.get(m), n) for m in cheap_names],
        [config.weight(m) for m in cheap_names],
        n,
    )
    band = (cheap >= config.cascade.uncertain_low) & (cheap < config.cascade.uncertain_high)
    out: Bools = band | np.isnan(cheap)
    return out


def decide_batch(
    scores: ScoreInput,
    anomaly_type: npt.ArrayLike | None,
    config: EnsembleConfig,
    flags: FeatureFlags | None = None,
) -> BatchDecision:
    """Vote on a batch. `scores[model]` holds calibrated scores (NaN = missing for that
    event; an absent key or None = missing for all); `anomaly_type` holds AnomalyType
    indexes (-1 or None = unknown)."""
    n = _batch_size(scores, anomaly_type)
    voters, shadows = _roles(flags)
    cols = {m: _column(scores.get(m), n) for m in ModelName}
    types = (
        np.full(n, UNKNOWN_TYPE, dtype=np.int64)
        if anomaly_type is None or ModelName.XGBOOST not in voters
        else np.asarray(anomaly_type, dtype=np.int64).reshape(-1)
    )
    weights = {m: config.weight(m) for m in ModelName}
    threshold = thresholds_for(types, config)
    idle = idle_voters(config, flags)
    needed = {m: np.full(n, m not in idle, dtype=np.bool_) for m in voters}
    voter_cols = [cols[m] for m in voters]
    strategy = config.strategy
    if strategy == "weighted":
        score = _weighted(voter_cols, [weights[m] for m in voters], n)
        anomalous = score >= threshold
    elif strategy in ("k_of_n", "any", "all"):
        k = {"k_of_n": config.k, "any": 1, "all": len(voters)}[strategy]
        score = _order_statistic(voter_cols, k, n)
        anomalous = score >= threshold
    else:
        cheap_names = [m for m in voters if m in CHEAP_MODELS]
        cheap = _weighted([cols[m] for m in cheap_names], [weights[m] for m in cheap_names], n)
        full = _weighted(voter_cols, [weights[m] for m in voters], n)
        band = (cheap >= config.cascade.uncertain_low) & (cheap < config.cascade.uncertain_high)
        band |= np.isnan(cheap)
        score = np.where(band, full, cheap)
        anomalous = score >= threshold
        if ModelName.TRANSFORMER in needed and ModelName.TRANSFORMER not in idle:
            needed[ModelName.TRANSFORMER] = band
    anomalous &= ~np.isnan(score)
    degraded = np.zeros(n, dtype=np.bool_)
    for m in voters:
        degraded |= needed[m] & np.isnan(cols[m])
    return BatchDecision(
        anomalous=anomalous,
        score=score,
        threshold=threshold,
        anomaly_type=types,
        degraded=degraded,
        scores=cols,
        voters=voters,
        shadows=shadows,
        weights=weights,
        strategy=strategy,
        needed=needed,
    )


def decide(
    scores: Mapping[ModelName, float | None],
    anomaly_type: AnomalyType | None,
    config: EnsembleConfig,
    flags: FeatureFlags | None = None,
) -> Decision:
    """Vote on one event (see `decide_batch`); missing scores are None or NaN."""
    code = TYPES.index(anomaly_type) if anomaly_type is not None else UNKNOWN_TYPE
    batch = decide_batch(
        {m: np.array([np.nan if v is None else v]) for m, v in scores.items()},
        np.array([code]),
        config,
        flags,
    )
    return batch.decision(0)
