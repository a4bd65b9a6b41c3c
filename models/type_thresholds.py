"""Thresholds per predicted anomaly type that share one false-positive budget.

The ensemble holds each event to the threshold of the type XGBoost predicts for it
(`ensemble.thresholds`). One threshold for every type spends the false-positive budget
wherever normal traffic happens to score high, whatever that buys: on the main job's models
the normal events predicted as price spikes take 42% of a 0.3% budget (251 of 594 on a
tuning part) for the hardest type, while volume bursts, whose anomalies score just below
that threshold, get 122. Splitting the budget so that the anomalies caught are the most
for the false positives allowed is a knapsack over the types: each type's curve "anomalies
caught for f false positives" comes from its own normal and anomalous scores, and a dynamic
programme over the types finds the split with the most caught in total. It is exact on the
data it is given, so it is fitted on a tuning part and judged on a test part
(`anomaly evaluate` suggests it).

Measured (`anomaly evaluate --events 400000`, weights 0 / 4 / 0.5, test part): the main
job's models (`anomaly train --events 1000000 --event-rate 5000`) 74.6% with one tuned
threshold against 77.5% split per type at the same FPR (0.33%; volume bursts 78% -> 96%,
price spikes 53% -> 47%), and 76.9% -> 79.3% with the halves swapped (FPR 0.30%); on
a cold stream (no warm-up) 66.9% -> 70.4% at FPR 0.32% -> 0.38%. Models trained after a
4M-event warm-up gain -0.6 to +1.5 points: fitted on a few hundred anomalies per type, the
split also learns the tuning part's noise.

A type's threshold is always a score some normal event of the tuning part reached (it never
goes below the lowest of them), so a type with few normal events on the tuning part cannot
end up flagging every event of that type; a type without any normal event keeps the single
threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.metrics import threshold_for_fpr

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class TypeThresholds:
    """Thresholds per type code (index = AnomalyType code) and for unknown types."""

    per_type: F64
    default: float
    """For events of unknown type (XGBoost missing): the single threshold for the budget."""
    false_positives: I64
    """Normal events of the fitting data each type's threshold flags (unknown type last)."""
    budget: int
    caught: int
    """Anomalies of the fitting data the thresholds flag."""

    def thresholds(self, types: I64) -> F64:
        """The threshold of each event from its type code (-1 = unknown)."""
        table = np.append(self.per_type, self.default)
        out: F64 = table[np.where(types < 0, self.per_type.size, types)]
        return out


MAX_STEPS = 2_000
"""Budget steps of the dynamic programme (its cost grows with their square): a budget of
more false positives than this is split in steps of several."""


def _caught_for_budget(normal: F64, anomalous: F64, allowed: I64) -> tuple[I64, F64]:
    """For each f in `allowed`: the most anomalies a threshold flags while flagging at most f
    of these normal scores, and the lowest such threshold (the one catching them)."""
    if normal.size == 0:
        return np.zeros(allowed.size, np.int64), np.full(allowed.size, np.nan)
    levels = np.unique(normal)[::-1]  # distinct normal scores, highest first
    ascending = np.sort(normal)
    # Candidate i sits just above levels[i] (flags the normals above it); the last also
    # takes the lowest normal score itself (flags them all, never goes below them).
    cand = np.append(np.nextafter(levels, np.inf), levels[-1])
    flagged = ascending.size - np.searchsorted(ascending, cand, side="left")
    pos = np.sort(anomalous)
    caught = pos.size - np.searchsorted(pos, cand, side="left")
    # fp grows along the candidates (thresholds fall): the last one within f is the best.
    last = np.searchsorted(flagged, allowed, side="right") - 1
    return caught[last].astype(np.int64), cand[last]


def allocate(
    score: F64, types: I64, labels: npt.NDArray[np.integer], n_types: int, max_fpr: float
) -> TypeThresholds:
    """Thresholds per predicted type maximising the anomalies caught (labels > 0) while the
    normal events flagged (labels == 0) stay within `max_fpr` of them in total."""
    score = np.asarray(score, np.float64)
    types = np.asarray(types, np.int64)
    labels = np.asarray(labels)
    normal = labels == 0
    if not normal.any():
        raise ValueError("allocating a false-positive budget needs normal events")
    single = threshold_for_fpr(score[normal], max_fpr)
    budget = int(np.floor(max_fpr * int(normal.sum())))
    groups = np.where(types < 0, n_types, types)  # unknown type: its own group, last
    step = -(-budget // MAX_STEPS) if budget > MAX_STEPS else 1
    steps = budget // step
    allowed = np.arange(steps + 1, dtype=np.int64) * step
    curves, levels = [], []
    for g in range(n_types + 1):
        in_group = groups == g
        caught, thresholds = _caught_for_budget(
            score[in_group & normal], score[in_group & ~normal], allowed
        )
        curves.append(caught)
        levels.append(thresholds)
    # Knapsack over the groups: best[b] = most caught with at most b steps of the budget.
    b = np.arange(steps + 1)
    spent = b[:, None] - b[None, :]  # budget left for the groups before, per (b, f)
    best = np.zeros(steps + 1, np.int64)
    choices = []
    for caught in curves:
        total = np.where(spent >= 0, best[np.clip(spent, 0, None)] + caught[None, :], -1)
        choices.append(total.argmax(axis=1))
        best = total.max(axis=1)
    allocation = np.zeros(n_types + 1, np.int64)
    left = steps
    for g in range(n_types, -1, -1):
        allocation[g] = choices[g][left]
        left -= int(allocation[g])
    chosen = np.array([levels[g][allocation[g]] for g in range(n_types + 1)])
    chosen = np.where(np.isnan(chosen), single, chosen)  # no normal event of that group
    flagged = score >= chosen[groups]
    return TypeThresholds(
        per_type=chosen[:n_types],
        default=float(chosen[n_types]),
        false_positives=np.bincount(groups[flagged & normal], minlength=n_types + 1),
        budget=budget,
        caught=int((flagged & ~normal).sum()),
    )
