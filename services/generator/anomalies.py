"""Injecting labelled anomalies (and unlabelled legitimate bursts) into normal chunks.

Budget. Each anomaly type that applies to the population gets an equal share of the
anomaly rate, counted in labelled *events*. A per-type credit grows by share x chunk
length and shrinks by every labelled event emitted; a multi-event episode starts whenever
credit minus the labels still expected from running episodes is positive. This feedback
keeps the realised rate within about one episode of the target at any stream length;
independent random starts would make it as noisy as a count of a few dozen episodes.

Episodes. Velocity bursts, spread blow-outs, slow drifts and legitimate bursts own
scheduled stream positions that may run over many chunks; the position is what decides
event time, so a run "within seconds" stays within seconds at any `--rate`. When two
episodes want the same position, anomalies win over legitimate bursts and, within a
kind, the older episode wins; the loser simply has one event fewer.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from enum import Enum
from typing import Final

import numpy as np

from services.common.anomaly_types import AnomalyType
from services.generator.columns import F64, I64, Bools, Columns
from services.generator.history import UsageHistory
from services.generator.population import Population
from services.generator.reference_data import CHANNELS
from services.generator.spec import StreamSpec

TYPES: Final[tuple[AnomalyType, ...]] = tuple(AnomalyType)
"""Label codes are indexes into this tuple (declaration order of the enum)."""
CODE: Final[dict[AnomalyType, int]] = {t: i for i, t in enumerate(TYPES)}
TRADE_ONLY: Final = frozenset({AnomalyType.VOLUME_BURST, AnomalyType.SPREAD_BLOWOUT})
"""Quantity and spread only mean something for trades (a payment has quantity 1)."""

PRICE_SPIKE_FACTOR: Final = (5.0, 50.0)
VOLUME_BURST_FACTOR: Final = (10.0, 100.0)
"""Times the entity's median quantity."""
SPREAD_BLOWOUT_FACTOR: Final = (10.0, 50.0)
SPREAD_RUN_EVENTS: Final = (1, 8)
SPREAD_RUN_SECONDS: Final = (1.0, 30.0)
VELOCITY_RUN_EVENTS: Final = (15, 60)
VELOCITY_RUN_SECONDS: Final = (1.0, 20.0)
VELOCITY_PAYMENT_AMOUNT: Final = (0.5, 5.0)
"""Card testing probes with tiny amounts; for an entity whose usual amounts are small too,
only the count gives it away (a subtle case on purpose)."""
VELOCITY_PAYMENT_SHARE: Final = 0.75
"""Share of velocity bursts on payment accounts (card testing); the rest hit instruments
(quote stuffing: tiny quantities)."""
NOVELTY_AMOUNT_FACTOR: Final = (1.0, 4.0)
DRIFT_STEP: Final = (0.01, 0.04)
"""Growth of the entity's amount level per event of that entity."""
DRIFT_PEAK: Final = (2.0, 5.0)
"""Level reached when the drift ends (the entity then returns to normal)."""
DRIFT_LABEL_FROM: Final = 0.30
"""Drift events are labelled once the level is at least 30% above the entity's baseline;
before that no detector could be asked to see it."""
DRIFT_GAP_SECONDS: Final = (0.1, 2.0)
"""Mean spacing of a drift's scheduled events; the entity's own events step it too."""
LEGIT_BURST_SHARE: Final = 0.01
"""Fraction of events that belong to unlabelled legitimate bursts (a shopping spree, a
news-driven flurry of trades): dense activity alone must not mean anomaly."""
LEGIT_BURST_EVENTS: Final = (5, 20)
LEGIT_BURST_SECONDS: Final = (10.0, 300.0)
_MAX_STARTS_PER_CHUNK: Final = 10_000

_WEB_CHANNEL: Final = CHANNELS.index("web")


class EpisodeKind(Enum):
    """Multi-event patterns that own scheduled positions.

    Declaration order is the order in which they claim positions: anomalies before
    legitimate bursts, so a collision never costs a label.
    """

    VELOCITY = AnomalyType.VELOCITY_BURST
    SPREAD = AnomalyType.SPREAD_BLOWOUT
    DRIFT = AnomalyType.SLOW_DRIFT
    LEGIT_BURST = None


_CLAIM_ORDER: Final = {kind: rank for rank, kind in enumerate(EpisodeKind)}


@dataclass(slots=True, eq=False)
class Episode:
    """One running multi-event pattern of one entity."""

    kind: EpisodeKind
    entity: int
    positions: I64
    """Absolute stream positions, increasing; `cursor` is the next one not yet reached."""
    cursor: int = 0
    next_at: int = 0
    """positions[cursor] (or past the end): lets `place` skip idle episodes cheaply; at
    100,000 events/s thousands of legitimate bursts are open at once."""
    factor: float = 1.0
    """Spread multiplier (blow-out) or per-event growth (drift)."""
    counterparty: int = -1
    """Velocity: the one merchant or dealer the whole run hits."""
    steps: int = 0
    """Drift: events of the entity stepped so far."""
    total_steps: int = 0
    label_from_step: int = 0

    def __post_init__(self) -> None:
        self.next_at = int(self.positions[0])

    def expected_labels(self) -> int:
        """Labelled events this episode should still emit (what the budget counts on)."""
        if self.kind is EpisodeKind.DRIFT:
            return self.total_steps - max(self.steps, self.label_from_step - 1)
        return len(self.positions) - self.cursor

    def finished(self) -> bool:
        """All positions passed, or (drift) the peak reached."""
        if self.kind is EpisodeKind.DRIFT and self.steps >= self.total_steps:
            return True
        return self.cursor >= len(self.positions)


def _loguniform(rng: np.random.Generator, bounds: tuple[float, float], size: int) -> F64:
    lo, hi = bounds
    values: F64 = np.exp(rng.uniform(math.log(lo), math.log(hi), size))
    return values


def applicable_types(pop: Population) -> tuple[AnomalyType, ...]:
    """Types the population can carry: trade-only types need trade entities."""
    has_trades = len(pop.trade_ids) > 0
    return tuple(t for t in TYPES if has_trades or t not in TRADE_ONLY)


class Injector:
    """Turns a chunk of normal events into one with anomalies, keeping the budget."""

    def __init__(
        self, spec: StreamSpec, pop: Population, history: UsageHistory, rng: np.random.Generator
    ) -> None:
        self._spec = spec
        self._pop = pop
        self._history = history
        self._rng = rng
        self.types = applicable_types(pop)
        share = spec.anomaly_rate / len(self.types)
        self._share = np.array([share if t in self.types else 0.0 for t in TYPES])
        self._credit = np.zeros(len(TYPES))
        self._legit_credit = 0.0
        self._running: dict[EpisodeKind, list[Episode]] = {
            EpisodeKind.VELOCITY: [],
            EpisodeKind.SPREAD: [],
            EpisodeKind.DRIFT: [],
        }
        """Open anomaly episodes (a few hundred at most), for the budget's pending count."""
        self._schedule: list[tuple[int, int, Episode]] = []
        """Heap of (next position, creation number, episode), legitimate bursts included:
        at 100,000 events/s thousands are open, and a chunk must only touch those due."""
        self._creation = itertools.count()
        self._busy: set[int] = set()
        """Entities in a running anomaly episode: one at a time per entity (two drifts would
        compound, two bursts would merge into one); membership only, never iterated."""
        self._activity_cdf = np.cumsum(pop.activity)

    # ------------------------------------------------------------------ scheduling

    def start_episodes(self, first: int, n: int) -> None:
        """Open the episodes whose budget is due, each starting inside [first, first + n)."""
        self._credit += self._share * n
        self._legit_credit += LEGIT_BURST_SHARE * n
        for kind in (EpisodeKind.VELOCITY, EpisodeKind.SPREAD, EpisodeKind.DRIFT):
            code = CODE[kind.value]
            if self._share[code] == 0.0:
                continue
            pending = sum(e.expected_labels() for e in self._running[kind])
            for _ in range(_MAX_STARTS_PER_CHUNK):
                if self._credit[code] - pending <= 0:
                    break
                episode = self._new_episode(kind, first + int(self._rng.integers(0, n)))
                if episode is None:
                    break
                pending += episode.expected_labels()
        # Unlabelled, so no feedback needed: each burst is paid for when it starts.
        for _ in range(_MAX_STARTS_PER_CHUNK):
            if self._legit_credit <= 0:
                break
            episode = self._new_episode(
                EpisodeKind.LEGIT_BURST, first + int(self._rng.integers(0, n))
            )
            if episode is None:
                break
            self._legit_credit -= len(episode.positions)

    def _pick_entity(self, candidates: I64) -> int | None:
        """A uniformly drawn entity of the candidates that is not in another episode."""
        if len(candidates) == 0:
            return None
        for _ in range(16):
            entity = int(candidates[int(self._rng.integers(0, len(candidates)))])
            if entity not in self._busy:
                return entity
        return None

    def _spread_positions(self, start: int, count: int, seconds: float) -> I64:
        """`count` distinct positions within `seconds` of event time from `start`."""
        span = max(2 * count, self._spec.positions_in(seconds))
        offsets = np.sort(self._rng.choice(span, size=count, replace=False))
        positions: I64 = start + offsets.astype(np.int64)
        return positions

    def _new_episode(self, kind: EpisodeKind, start: int) -> Episode | None:
        rng, pop = self._rng, self._pop
        if kind is EpisodeKind.VELOCITY:
            on_payment = len(pop.payment_ids) > 0 and (
                len(pop.trade_ids) == 0 or rng.random() < VELOCITY_PAYMENT_SHARE
            )
            entity = self._pick_entity(pop.payment_ids if on_payment else pop.trade_ids)
            if entity is None:
                return None
            count = int(rng.integers(VELOCITY_RUN_EVENTS[0], VELOCITY_RUN_EVENTS[1] + 1))
            seconds = float(_loguniform(rng, VELOCITY_RUN_SECONDS, 1)[0])
            if rng.random() < 0.5:
                counterparty = self._history.new_counterparty(rng, entity)
            else:
                counterparty = int(pop.usual_cps[entity, 0])
            episode = Episode(
                kind,
                entity,
                self._spread_positions(start, count, seconds),
                counterparty=counterparty,
            )
        elif kind is EpisodeKind.SPREAD:
            entity = self._pick_entity(pop.trade_ids)
            if entity is None:
                return None
            count = int(rng.integers(SPREAD_RUN_EVENTS[0], SPREAD_RUN_EVENTS[1] + 1))
            seconds = float(_loguniform(rng, SPREAD_RUN_SECONDS, 1)[0])
            episode = Episode(
                kind,
                entity,
                self._spread_positions(start, count, seconds),
                factor=float(_loguniform(rng, SPREAD_BLOWOUT_FACTOR, 1)[0]),
            )
        elif kind is EpisodeKind.DRIFT:
            entity = self._pick_entity(np.arange(pop.size, dtype=np.int64))
            if entity is None:
                return None
            growth = float(rng.uniform(*DRIFT_STEP))
            peak = float(rng.uniform(*DRIFT_PEAK))
            total = math.ceil(math.log(peak) / math.log1p(growth))
            label_from = math.ceil(math.log1p(DRIFT_LABEL_FROM) / math.log1p(growth))
            gap = float(_loguniform(rng, DRIFT_GAP_SECONDS, 1)[0]) * self._spec.rate
            steps = np.maximum(1, np.round(rng.exponential(gap, total))).astype(np.int64)
            episode = Episode(
                kind,
                entity,
                start + np.cumsum(steps) - steps[0],
                factor=growth,
                total_steps=total,
                label_from_step=label_from,
            )
        else:
            entity = int(np.searchsorted(self._activity_cdf, rng.random() * self._activity_cdf[-1]))
            entity = min(entity, pop.size - 1)
            count = int(rng.integers(LEGIT_BURST_EVENTS[0], LEGIT_BURST_EVENTS[1] + 1))
            seconds = float(_loguniform(rng, LEGIT_BURST_SECONDS, 1)[0])
            episode = Episode(kind, entity, self._spread_positions(start, count, seconds))
        if kind is not EpisodeKind.LEGIT_BURST:
            self._running[kind].append(episode)
            self._busy.add(entity)
        heapq.heappush(self._schedule, (episode.next_at, next(self._creation), episode))
        return episode

    def place(self, first: int, entity: I64) -> tuple[list[tuple[Episode, I64]], Bools]:
        """Hand each running episode its positions in this chunk (overriding the drawn
        entity there); returns the placements and the mask of claimed rows."""
        n = len(entity)
        taken = np.zeros(n, dtype=np.bool_)
        placements: list[tuple[Episode, I64]] = []
        end = first + n
        due: list[tuple[int, int, Episode]] = []
        while self._schedule and self._schedule[0][0] < end:
            due.append(heapq.heappop(self._schedule))
        due.sort(key=lambda item: (_CLAIM_ORDER[item[2].kind], item[1]))
        for _, created, episode in due:
            if episode.finished():  # a drift that peaked early drops its remaining positions
                continue
            hi = int(np.searchsorted(episode.positions, end, side="left"))
            rows = episode.positions[episode.cursor : hi] - first
            episode.cursor = hi
            if hi < len(episode.positions):
                episode.next_at = int(episode.positions[hi])
                heapq.heappush(self._schedule, (episode.next_at, created, episode))
            rows = rows[~taken[rows]]
            taken[rows] = True
            entity[rows] = episode.entity
            placements.append((episode, rows))
        return placements, taken

    # ------------------------------------------------------------------ injection

    def inject(self, cols: Columns, placements: list[tuple[Episode, I64]], taken: Bools) -> None:
        """Apply episode effects and single-event anomalies, label them, settle the budget."""
        for episode, rows in placements:
            if episode.kind is EpisodeKind.VELOCITY:
                self._velocity(cols, episode, rows)
            elif episode.kind is EpisodeKind.SPREAD:
                self._spread(cols, episode, rows)
        for episode in self._running[EpisodeKind.DRIFT]:
            self._drift(cols, episode, taken)
        self._credit -= np.bincount(cols.label[cols.label >= 0], minlength=len(TYPES))
        self._single_events(cols, taken)

        for kind, episodes in self._running.items():
            if any(e.finished() for e in episodes):
                for episode in episodes:
                    if episode.finished():
                        self._busy.discard(episode.entity)
                self._running[kind] = [e for e in episodes if not e.finished()]

    def _velocity(self, cols: Columns, episode: Episode, rows: I64) -> None:
        if len(rows) == 0:
            return
        cols.counterparty[rows] = episode.counterparty
        if self._pop.is_trade[episode.entity]:
            cols.quantity[rows] = self._rng.integers(1, 10, len(rows))
        else:
            cols.amount[rows] = self._rng.uniform(*VELOCITY_PAYMENT_AMOUNT, len(rows))
            cols.channel[rows] = _WEB_CHANNEL
        cols.label[rows] = CODE[AnomalyType.VELOCITY_BURST]

    def _spread(self, cols: Columns, episode: Episode, rows: I64) -> None:
        if len(rows) == 0:
            return
        jitter = self._rng.uniform(0.8, 1.25, len(rows))
        cols.spread_bps[rows] *= episode.factor * jitter
        cols.quantity[rows] *= self._rng.uniform(0.1, 0.6, len(rows))
        cols.label[rows] = CODE[AnomalyType.SPREAD_BLOWOUT]

    def _drift(self, cols: Columns, episode: Episode, taken: Bools) -> None:
        """Step the drift on every event of the entity (scheduled or its own), in order."""
        rows = np.flatnonzero(
            (cols.entity == episode.entity) & (cols.position >= episode.positions[0])
        )
        rows = rows[: episode.total_steps - episode.steps]
        if len(rows) == 0:
            return
        steps = episode.steps + 1 + np.arange(len(rows))
        cols.amount[rows] *= np.power(1.0 + episode.factor, steps)
        labelled = rows[steps >= episode.label_from_step]
        cols.label[labelled] = CODE[AnomalyType.SLOW_DRIFT]
        taken[rows] = True
        episode.steps += len(rows)

    def _single_events(self, cols: Columns, taken: Bools) -> None:
        rng, pop = self._rng, self._pop
        for kind in (AnomalyType.PRICE_SPIKE, AnomalyType.VOLUME_BURST, AnomalyType.NOVELTY_JUMP):
            code = CODE[kind]
            due = int(self._credit[code])
            if due <= 0:
                continue
            eligible = ~taken & cols.is_trade if kind in TRADE_ONLY else ~taken
            candidates = np.flatnonzero(eligible)
            count = min(due, len(candidates))
            if count == 0:
                continue
            rows = np.sort(rng.choice(candidates, size=count, replace=False))
            taken[rows] = True
            if kind is AnomalyType.PRICE_SPIKE:
                cols.amount[rows] *= _loguniform(rng, PRICE_SPIKE_FACTOR, count)
            elif kind is AnomalyType.VOLUME_BURST:
                median = pop.qty_median[cols.entity[rows]]
                cols.quantity[rows] = median * _loguniform(rng, VOLUME_BURST_FACTOR, count)
            else:
                self._novelty(cols, rows)
            cols.label[rows] = code
            self._credit[code] -= count

    def _novelty(self, cols: Columns, rows: I64) -> None:
        """New counterparty, new country, or both (a third each)."""
        rng = self._rng
        variants = rng.integers(0, 3, len(rows))
        cols.amount[rows] *= _loguniform(rng, NOVELTY_AMOUNT_FACTOR, len(rows))
        for row, variant in zip(rows.tolist(), variants.tolist(), strict=True):
            entity = int(cols.entity[row])
            country = self._history.new_country(rng, entity) if variant >= 1 else None
            if country is not None:
                cols.country[row] = country
            if variant != 1 or country is None:
                cols.counterparty[row] = self._history.new_counterparty(rng, entity)
