"""The entities and how they behave when nothing is wrong.

Normal behaviour has to be rich enough that an anomaly detector cannot win by spotting
any deviation at all: amounts are heavy-tailed per entity, activity is Zipf-like, both
follow the entity's local time of day, entities have legitimate bursts (see `anomalies`)
and occasionally use a new counterparty or country. Every per-entity trait is drawn once,
up front, so the whole behaviour of an entity is fixed by the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from services.generator.columns import F64, I64, NORMAL_CODE, Bools, Codes, Columns
from services.generator.reference_data import (
    CHANNELS,
    COUNTRIES,
    PAYMENT_ACTIVITY,
    PAYMENT_AMOUNT,
    PAYMENT_CHANNEL_WEIGHTS,
    TRADE_ACTIVITY,
    TRADE_QUANTITY,
    TRADE_SPREAD,
)

ZIPF_EXPONENT: Final = 0.9
"""Activity weight of the entity of rank r is r^-0.9 (times a little noise): with 5,000
entities the busiest 1% send about half of the events: skewed, yet every entity is seen."""
MAX_USUAL_COUNTERPARTIES: Final = 8
MAX_USUAL_COUNTRIES: Final = 3
MAX_USUAL_CHANNELS: Final = 3
NEW_COUNTERPARTY_P: Final = 0.004
"""Legitimate first use of a counterparty outside the usual set (per event)."""
NEW_COUNTRY_P: Final = 0.0005
"""Legitimate use of a country outside the usual set (travel; per event)."""
TAIL_DF: Final = 4.0
"""Student-t degrees of freedom of log-amount noise: heavy tails, finite variance."""
TAIL_CLIP: Final = 6.0
"""Largest |t| kept, so a legitimate amount is at most ~45x its entity's median."""
QUANTITY_LOG_STD: Final = 0.8
"""Log-scale spread of trade quantities around the instrument's median (heavy-tailed)."""

_PAY_ACT = np.asarray(PAYMENT_ACTIVITY)
_TRD_ACT = np.asarray(TRADE_ACTIVITY)
_PAY_AMT = np.asarray(PAYMENT_AMOUNT)
_TRD_QTY = np.asarray(TRADE_QUANTITY)
_TRD_SPR = np.asarray(TRADE_SPREAD)
_COUNTRY_WEIGHTS = np.asarray([c.weight for c in COUNTRIES], dtype=np.float64)
_COUNTRY_OFFSETS = np.asarray([c.utc_offset_h for c in COUNTRIES], dtype=np.float64)
_CHANNEL_INDEX = {name: i for i, name in enumerate(CHANNELS)}


def hour_of_day(t_s: F64 | float, utc_offset_h: F64) -> F64:
    """Fractional local hour of day at event time `t_s` (epoch seconds)."""
    hour: F64 = (t_s / 3600.0 + utc_offset_h) % 24.0
    return hour


def daily_profile(profile: F64, local_hour: F64) -> F64:
    """Value of a 24-point daily profile at fractional hours, linearly interpolated."""
    base = np.floor(local_hour)
    frac = local_hour - base
    i = base.astype(np.int64) % 24
    return profile[i] * (1.0 - frac) + profile[(i + 1) % 24] * frac


def _ticker(i: int) -> str:
    """A unique 3+ letter symbol per index (base 26, offset so that it has 3 letters)."""
    x = i + 26 * 26
    letters = []
    while x:
        x, r = divmod(x, 26)
        letters.append(chr(65 + r))
    return "".join(reversed(letters))


def _weighted(rng: np.random.Generator, weights: F64, size: int | tuple[int, ...]) -> I64:
    cdf = np.cumsum(weights)
    picks: I64 = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
    return np.minimum(picks, len(weights) - 1)


@dataclass(frozen=True, slots=True, eq=False)
class Population:
    """Per-entity traits, one array element per entity."""

    size: int
    names: NDArray[np.object_]
    """entity_id strings: `acct-NNNNNN` (payments) or `inst-NNNNNN` (trades)."""
    keys: NDArray[np.object_]
    """The same as UTF-8 bytes: the Kafka key, looked up rather than encoded per event."""
    is_trade: Bools
    trade_ids: I64
    payment_ids: I64
    tickers: NDArray[np.object_]
    """Instrument symbol of trade entities ('' for payments)."""
    activity: F64
    """Zipf-like share of all events (before the daily profile)."""
    home: Codes
    utc_offset_h: F64
    level: F64
    """Median payment amount, or reference price of an instrument."""
    dispersion: F64
    """Log-scale spread of payment amounts; per-event price volatility of trades."""
    wave_amp: F64
    wave_period_s: F64
    wave_phase: F64
    qty_median: F64
    spread_median: F64
    usual_cps: NDArray[np.int64]
    """(entities, MAX_USUAL_COUNTERPARTIES); the first `usual_cp_count` are used, the
    first ones more often."""
    usual_cp_count: I64
    usual_countries: Codes
    """(entities, MAX_USUAL_COUNTRIES); column 0 is home."""
    usual_country_count: I64
    p_home: F64
    usual_channels: Codes
    usual_channel_count: I64
    cp_pool_size: int
    cp_popularity_cdf: F64
    """Legitimate new counterparties are popular ones (big merchants, main dealers)."""

    def selection_weights(self, t_s: float) -> F64:
        """Share of the next events each entity gets at event time t_s (epoch seconds).

        The total rate is the target rate; only its split moves with the local hour, so
        pacing and event time stay in step while each entity keeps its daily rhythm.
        """
        local = hour_of_day(t_s, self.utc_offset_h)
        profile = np.where(
            self.is_trade, daily_profile(_TRD_ACT, local), daily_profile(_PAY_ACT, local)
        )
        weights: F64 = self.activity * profile
        return weights

    def sample_entities(self, rng: np.random.Generator, t_s: float, n: int) -> I64:
        """Which entity each of the next n events belongs to."""
        return _weighted(rng, self.selection_weights(t_s), n)


def build_population(rng: np.random.Generator, entities: int, payment_share: float) -> Population:
    """Draw every entity's traits; the draw order is part of the seeded stream."""
    n = entities
    n_pay = round(n * payment_share)
    is_trade = np.zeros(n, dtype=np.bool_)
    is_trade[rng.permutation(n)[n_pay:]] = True
    trade_flags = is_trade.tolist()
    names = np.array(
        [f"inst-{i:06d}" if t else f"acct-{i:06d}" for i, t in enumerate(trade_flags)],
        dtype=object,
    )
    keys = np.array([name.encode() for name in names.tolist()], dtype=object)
    tickers = np.array([_ticker(i) if t else "" for i, t in enumerate(trade_flags)], dtype=object)

    ranks = rng.permutation(n).astype(np.float64) + 1.0
    activity = ranks**-ZIPF_EXPONENT * rng.lognormal(0.0, 0.3, n)
    activity /= activity.sum()

    home = _weighted(rng, _COUNTRY_WEIGHTS, n)
    usual_countries = np.empty((n, MAX_USUAL_COUNTRIES), dtype=np.int16)
    usual_countries[:, 0] = home
    usual_countries[:, 1:] = _weighted(rng, _COUNTRY_WEIGHTS, (n, MAX_USUAL_COUNTRIES - 1))
    usual_country_count = 1 + _weighted(rng, np.asarray([0.6, 0.3, 0.1]), n)
    p_home = np.where(usual_country_count > 1, rng.uniform(0.85, 0.99, n), 1.0)

    pay_level = rng.lognormal(3.4, 1.0, n)
    trade_level = rng.lognormal(3.6, 1.2, n)
    level = np.where(is_trade, trade_level, pay_level)
    dispersion = np.where(is_trade, rng.uniform(0.001, 0.006, n), rng.uniform(0.3, 0.9, n))

    cp_pool_size = max(2_000, 2 * n)
    cp_ranks = rng.permutation(cp_pool_size).astype(np.float64) + 1.0
    cp_popularity_cdf = np.cumsum(cp_ranks**-0.8)
    usual_cps = np.searchsorted(
        cp_popularity_cdf,
        rng.random((n, MAX_USUAL_COUNTERPARTIES)) * cp_popularity_cdf[-1],
        side="right",
    ).astype(np.int64)
    np.minimum(usual_cps, cp_pool_size - 1, out=usual_cps)
    usual_cp_count = np.where(is_trade, rng.integers(2, 7, n), rng.integers(3, 9, n))

    usual_channels = np.empty((n, MAX_USUAL_CHANNELS), dtype=np.int16)
    usual_channels[:] = _weighted(rng, np.asarray(PAYMENT_CHANNEL_WEIGHTS), (n, MAX_USUAL_CHANNELS))
    venues = [[_CHANNEL_INDEX[v] for v in c.venues] for c in COUNTRIES]
    width = max(len(v) for v in venues)
    venue_table = np.array([v + [v[0]] * (width - len(v)) for v in venues], dtype=np.int16)
    venue_count = np.array([len(v) for v in venues])
    pick = np.floor(rng.random((n, 2)) * venue_count[home][:, None]).astype(np.int64)
    trade_channels = venue_table[home[:, None], pick]
    usual_channels[is_trade, :2] = trade_channels[is_trade]
    usual_channels[is_trade, 2] = usual_channels[is_trade, 0]
    usual_channel_count = np.where(is_trade, 2, rng.integers(1, MAX_USUAL_CHANNELS + 1, n))

    return Population(
        size=n,
        names=names,
        keys=keys,
        is_trade=is_trade,
        trade_ids=np.flatnonzero(is_trade).astype(np.int64),
        payment_ids=np.flatnonzero(~is_trade).astype(np.int64),
        tickers=tickers,
        activity=activity,
        home=home.astype(np.int16),
        utc_offset_h=_COUNTRY_OFFSETS[home],
        level=level,
        dispersion=dispersion,
        wave_amp=rng.uniform(0.005, 0.03, n),
        wave_period_s=rng.uniform(1_800.0, 6 * 3_600.0, n),
        wave_phase=rng.uniform(0.0, 2 * math.pi, n),
        qty_median=np.where(is_trade, np.round(rng.lognormal(4.0, 1.0, n)) + 1.0, 1.0),
        spread_median=np.where(is_trade, rng.lognormal(math.log(4.0), 0.7, n), np.nan),
        usual_cps=usual_cps,
        usual_cp_count=usual_cp_count.astype(np.int64),
        usual_countries=usual_countries,
        usual_country_count=usual_country_count,
        p_home=p_home,
        usual_channels=usual_channels,
        usual_channel_count=usual_channel_count.astype(np.int64),
        cp_pool_size=cp_pool_size,
        cp_popularity_cdf=cp_popularity_cdf,
    )


@dataclass(frozen=True, slots=True, eq=False)
class NormalDraw:
    """Normal events plus which of them legitimately used something new."""

    columns: Columns
    new_counterparty: Bools
    new_country: Bools


def heavy_tail_noise(rng: np.random.Generator, n: int) -> F64:
    """Unit-variance, clipped Student-t noise (log scale) for amounts and quantities."""
    t: F64 = np.clip(rng.standard_t(TAIL_DF, n), -TAIL_CLIP, TAIL_CLIP)
    return t / math.sqrt(TAIL_DF / (TAIL_DF - 2.0))


def sample_normal(
    pop: Population, rng: np.random.Generator, position: I64, ts: I64, entity: I64
) -> NormalDraw:
    """Attributes of events whose entities are already chosen, as an honest entity acts."""
    n = len(entity)
    trade = pop.is_trade[entity]
    t_s = ts / 1000.0
    local = hour_of_day(t_s, pop.utc_offset_h[entity])
    noise = heavy_tail_noise(rng, n)
    gauss = rng.standard_normal(n)
    disp = pop.dispersion[entity]

    wave = pop.wave_amp[entity] * np.sin(
        2 * math.pi * t_s / pop.wave_period_s[entity] + pop.wave_phase[entity]
    )
    price_log = wave + disp * gauss
    payment_log = np.log(daily_profile(_PAY_AMT, local)) + disp * noise
    amount = pop.level[entity] * np.exp(np.where(trade, price_log, payment_log))

    qty_noise = heavy_tail_noise(rng, n)
    quantity = np.where(
        trade,
        pop.qty_median[entity]
        * daily_profile(_TRD_QTY, local)
        * np.exp(QUANTITY_LOG_STD * qty_noise),
        1.0,
    )
    spread = np.where(
        trade,
        pop.spread_median[entity]
        * daily_profile(_TRD_SPR, local)
        * np.exp(0.25 * rng.standard_normal(n)),
        np.nan,
    )

    u = rng.random((5, n))
    slot = np.floor(pop.usual_cp_count[entity] * u[0] ** 2).astype(np.int64)
    counterparty = pop.usual_cps[entity, slot]
    new_cp = u[1] < NEW_COUNTERPARTY_P
    if new_cp.any():
        counterparty[new_cp] = np.minimum(
            np.searchsorted(
                pop.cp_popularity_cdf,
                rng.random(int(new_cp.sum())) * pop.cp_popularity_cdf[-1],
                side="right",
            ),
            pop.cp_pool_size - 1,
        )

    abroad = u[2] >= pop.p_home[entity]
    others = pop.usual_country_count[entity] - 1
    alt = 1 + np.floor(u[4] * np.maximum(others, 1)).astype(np.int64)
    country = np.where(abroad, pop.usual_countries[entity, alt], pop.usual_countries[entity, 0])
    new_country = u[1] > 1.0 - NEW_COUNTRY_P
    if new_country.any():
        country[new_country] = _weighted(rng, _COUNTRY_WEIGHTS, int(new_country.sum()))

    channel_slot = np.floor(u[3] * pop.usual_channel_count[entity]).astype(np.int64)
    channel = pop.usual_channels[entity, channel_slot]

    columns = Columns(
        position=position,
        ts=ts,
        entity=entity,
        is_trade=trade,
        amount=amount,
        quantity=quantity,
        spread_bps=spread,
        counterparty=counterparty,
        country=country.astype(np.int16),
        channel=channel.astype(np.int16),
        label=np.full(n, NORMAL_CODE, dtype=np.int8),
    )
    return NormalDraw(columns, new_cp, new_country)
