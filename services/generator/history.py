"""What each entity has used so far, so that a novelty anomaly is genuinely new.

A label of `novelty_jump` promises a counterparty or country the entity never used
before. Entities also legitimately try new ones (unlabelled), so the promise can only be
kept by remembering those first uses. The usual sets count as used from the start, which
errs on the side of "not new".
"""

from __future__ import annotations

import numpy as np

from services.generator.columns import I64, Bools, Codes
from services.generator.population import Population
from services.generator.reference_data import COUNTRIES

_MAX_PICK_ATTEMPTS = 64


class UsageHistory:
    """Counterparties and countries used beyond each entity's usual ones."""

    def __init__(self, pop: Population) -> None:
        self._pop = pop
        bits = np.left_shift(np.uint64(1), pop.usual_countries.astype(np.uint64))
        in_use = np.arange(pop.usual_countries.shape[1]) < pop.usual_country_count[:, None]
        self._country_mask = np.bitwise_or.reduce(np.where(in_use, bits, np.uint64(0)), axis=1)
        self._extra_cps: dict[int, set[int]] = {}
        """Sparse: only entities that ever went beyond their usual set. Never iterated, so
        hash order cannot leak into the stream."""

    def record(
        self, entity: I64, counterparty: I64, country: Codes, cp_new: Bools, country_new: Bools
    ) -> None:
        """Remember the first uses flagged in a chunk."""
        for e, cp in zip(entity[cp_new].tolist(), counterparty[cp_new].tolist(), strict=True):
            self._extra_cps.setdefault(e, set()).add(cp)
        if country_new.any():
            bits = np.left_shift(np.uint64(1), country[country_new].astype(np.uint64))
            np.bitwise_or.at(self._country_mask, entity[country_new], bits)

    def used_counterparty(self, entity: int, counterparty: int) -> bool:
        """Whether the entity has (or may have) dealt with this counterparty before."""
        pop = self._pop
        usual = pop.usual_cps[entity, : pop.usual_cp_count[entity]]
        return bool((usual == counterparty).any()) or counterparty in self._extra_cps.get(
            entity, ()
        )

    def used_country(self, entity: int, country: int) -> bool:
        """Whether the entity has (or may have) been active in this country before."""
        return bool((int(self._country_mask[entity]) >> country) & 1)

    def new_counterparty(self, rng: np.random.Generator, entity: int) -> int:
        """A counterparty the entity never used, drawn uniformly (obscure ones included),
        and remembered as used from now on."""
        for _ in range(_MAX_PICK_ATTEMPTS):
            cp = int(rng.integers(0, self._pop.cp_pool_size))
            if not self.used_counterparty(entity, cp):
                self._extra_cps.setdefault(entity, set()).add(cp)
                return cp
        # The pool holds at least 2,000 and twice as many counterparties as entities, while
        # an entity uses a handful: 64 misses in a row mean the history itself is broken.
        raise RuntimeError(f"entity {entity} has used nearly every counterparty")

    def new_country(self, rng: np.random.Generator, entity: int) -> int | None:
        """A country the entity was never active in (remembered from now on), or None if it
        has been everywhere."""
        unused = [
            c for c in range(len(COUNTRIES)) if not (int(self._country_mask[entity]) >> c) & 1
        ]
        if not unused:
            return None
        country = unused[int(rng.integers(0, len(unused)))]
        self._country_mask[entity] |= np.uint64(1) << np.uint64(country)
        return country
