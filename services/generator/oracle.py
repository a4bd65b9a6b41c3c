"""The most any detector can reach on a generated stream: an oracle ceiling for the evaluation.

Why: `anomaly evaluate` reports the ensemble against a 95% TPR target at FPR 0.3%. Whether
that target is a matter of better models or is out of reach on this stream is a question
about the stream, and the generator can answer it, because it knows what no detector sees:
each entity's true level, dispersion, usual quantity and daily profile.

The oracle is generous on purpose, so that its figure is an upper bound and not an estimate:

* Velocity bursts, spread blow-outs, novelty jumps, slow drifts and price spikes on trades
  are *handed to it*: counted as detected, spending none of the false-positive budget. (A
  trade's price moves by 0.1-0.6% per event, a spike by x5 or more: hundreds of standard
  deviations.)
* Price spikes on payments and volume bursts are the two types whose magnitude overlaps the
  normal heavy tails (`population.heavy_tail_noise`). For them it computes the exact
  likelihood ratio of "anomaly of that type" against "normal" for each event's published
  value, given the entity's true parameters and the rounding of the published value (cents,
  whole units), and flags the events of highest ratio until the FPR budget is spent. By the
  Neyman-Pearson lemma no test on that value flags more of them at that FPR; the event's
  other fields carry no information about these two types (the generator draws them the same
  way for normal events).

What is left to any real detector is below the oracle's figure: it must estimate the entity
parameters from history and also spend budget on the other four types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from services.common.anomaly_types import AnomalyType
from services.generator.anomalies import (
    CODE,
    PRICE_SPIKE_FACTOR,
    TYPES,
    VOLUME_BURST_FACTOR,
)
from services.generator.columns import F64, NORMAL_CODE
from services.generator.population import (
    QUANTITY_LOG_STD,
    TAIL_CLIP,
    TAIL_DF,
    Population,
    daily_profile,
    hour_of_day,
)
from services.generator.reference_data import PAYMENT_AMOUNT, TRADE_QUANTITY
from services.generator.spec import StreamSpec
from services.generator.stream import EventStream

_SCALE: Final = math.sqrt(TAIL_DF / (TAIL_DF - 2.0))
_CLIP: Final = TAIL_CLIP / _SCALE
"""Largest |noise| (unit variance): the clipped tails are point masses here."""

_HARD: Final = (AnomalyType.PRICE_SPIKE, AnomalyType.VOLUME_BURST)
_PAYMENT_PROFILE: Final = np.asarray(PAYMENT_AMOUNT)
_QUANTITY_PROFILE: Final = np.asarray(TRADE_QUANTITY)


def _t4_cdf(t: F64) -> F64:
    """Student-t CDF with 4 degrees of freedom (closed form)."""
    u = t * t / 4.0
    cdf: F64 = 0.5 + 0.375 * (t / np.sqrt(1.0 + u)) * (1.0 - u / (3.0 * (1.0 + u)))
    return cdf


def noise_cdf(z: F64) -> F64:
    """CDF of `heavy_tail_noise` (clipped, unit-variance t4), jumps at the clip included."""
    inside = _t4_cdf(np.clip(z, -_CLIP, _CLIP) * _SCALE)
    cdf: F64 = np.where(z >= _CLIP, 1.0, np.where(z < -_CLIP, 0.0, inside))
    return cdf


@dataclass(frozen=True, slots=True, eq=False)
class _Part:
    """The oracle's view of the measured events: ground truth and hidden parameters."""

    label: np.ndarray[Any, np.dtype[np.int8]]
    is_trade: np.ndarray[Any, np.dtype[np.bool_]]
    amount: F64
    quantity: F64
    entity: np.ndarray[Any, np.dtype[np.int64]]
    local_hour: F64


def _measured_part(spec: StreamSpec, start: int, stop: int) -> tuple[_Part, Population]:
    stream = EventStream(spec)
    pieces: list[tuple[Any, ...]] = []
    seen = 0
    for chunk in stream.chunks(stop):
        c = chunk.columns
        lo = max(0, start - seen)
        seen += len(c)
        if lo >= len(c):
            continue
        s = slice(lo, None)
        pieces.append((c.label[s], c.is_trade[s], c.amount[s], c.quantity[s], c.entity[s], c.ts[s]))
    label, trade, amount, quantity, entity, ts = (
        np.concatenate(p) for p in zip(*pieces, strict=True)
    )
    pop = stream.population
    local = hour_of_day(ts / 1000.0, pop.utc_offset_h[entity])
    part = _Part(
        label, trade, amount.astype(np.float64), quantity.astype(np.float64), entity, local
    )
    return part, pop


def _payment_probabilities(part: _Part, pop: Population) -> tuple[F64, F64]:
    """P(published amount | normal) and P(... | price spike) per event (payments' model)."""
    disp = pop.dispersion[part.entity]
    centre = np.log(pop.level[part.entity] * daily_profile(_PAYMENT_PROFILE, part.local_hour))
    lo = (np.log(np.maximum(part.amount - 0.005, 1e-9)) - centre) / disp
    hi = (np.log(part.amount + 0.005) - centre) / disp
    p_normal: F64 = noise_cdf(hi) - noise_cdf(lo)
    # A spike adds log(factor) / disp, log-uniform factor: the noise CDF integrated over it,
    # a smooth density within a cent's width (midpoint rule).
    f_lo, f_hi = (math.log(f) for f in PRICE_SPIKE_FACTOR)
    mid = (lo + hi) / 2.0
    density = disp / (f_hi - f_lo) * (noise_cdf(mid - f_lo / disp) - noise_cdf(mid - f_hi / disp))
    p_spike: F64 = density * (hi - lo)
    return p_normal, p_spike


def _trade_probabilities(part: _Part, pop: Population) -> tuple[F64, F64]:
    """P(published quantity | normal) and P(... | volume burst) per event (trades' model)."""
    median = pop.qty_median[part.entity]
    centre = np.log(median * daily_profile(_QUANTITY_PROFILE, part.local_hour))
    q_lo = np.where(part.quantity <= 1.0, 1e-9, part.quantity - 0.5)  # published: >= 1 unit
    q_hi = part.quantity + 0.5
    z_lo = (np.log(q_lo) - centre) / QUANTITY_LOG_STD
    z_hi = (np.log(q_hi) - centre) / QUANTITY_LOG_STD
    p_normal: F64 = noise_cdf(z_hi) - noise_cdf(z_lo)
    # A burst is median x factor exactly (no noise, no daily profile), log-uniform factor.
    f_lo, f_hi = (math.log(f) for f in VOLUME_BURST_FACTOR)
    a = np.clip(np.log(q_lo / median), f_lo, f_hi)
    b = np.clip(np.log(q_hi / median), f_lo, f_hi)
    p_burst: F64 = (b - a) / (f_hi - f_lo)
    return p_normal, p_burst


def oracle_ceiling(spec: StreamSpec, start: int, stop: int, target_fpr: float) -> dict[str, Any]:
    """The oracle's TPR at `target_fpr` on events [start, stop) of the stream of `spec`."""
    if not 0 <= start < stop:
        raise ValueError(f"need 0 <= start < stop, got {start}, {stop}")
    part, pop = _measured_part(spec, start, stop)
    label = part.label
    normal = label == NORMAL_CODE
    anomalous = ~normal
    spike_pay = (label == CODE[AnomalyType.PRICE_SPIKE]) & ~part.is_trade
    burst = label == CODE[AnomalyType.VOLUME_BURST]
    hard = spike_pay | burst
    n_normal, n_hard = int(normal.sum()), int(hard.sum())
    detected = anomalous & ~hard  # handed over
    if n_hard and n_normal:
        pay_normal, pay_spike = _payment_probabilities(part, pop)
        trd_normal, trd_burst = _trade_probabilities(part, pop)
        # Likelihood ratio of the mixture of the two hard types against normal traffic, each
        # family weighted by its share (of hard anomalies / of normal events).
        w_pay = spike_pay.sum() / n_hard / max((normal & ~part.is_trade).sum() / n_normal, 1e-12)
        w_trd = burst.sum() / n_hard / max((normal & part.is_trade).sum() / n_normal, 1e-12)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(
                part.is_trade, w_trd * trd_burst / trd_normal, w_pay * pay_spike / pay_normal
            )
        ratio = np.nan_to_num(ratio, nan=0.0, posinf=np.finfo(np.float64).max)
        budget = math.floor(target_fpr * n_normal)
        ranked = np.sort(ratio[normal])[::-1]
        threshold = ranked[budget] if budget < n_normal else -1.0
        detected |= hard & (ratio > threshold)
        false_positives = int((normal & (ratio > threshold)).sum())
    else:
        false_positives = 0
    n_anomalous = int(anomalous.sum())
    per_type = {
        t.value: float(detected[label == CODE[t]].mean()) for t in TYPES if (label == CODE[t]).any()
    }
    return {
        "tpr": float(detected.sum() / n_anomalous) if n_anomalous else float("nan"),
        "fpr": false_positives / n_normal if n_normal else float("nan"),
        "recall_per_type": per_type,
        "payment_price_spike_recall": float(detected[spike_pay].mean())
        if spike_pay.any()
        else None,
        "events": int(stop - start),
        "anomalies": n_anomalous,
        "handed_over": [t.value for t in TYPES if t not in _HARD] + ["price_spike on trades"],
        "note": (
            "upper bound: knows each entity's true parameters, scores payment price spikes and "
            "volume bursts by their exact likelihood ratio, and gets every other anomaly for "
            "free (no false positives spent)"
        ),
    }
