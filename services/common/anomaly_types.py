"""The closed set of anomaly types, shared by the generator, the models and the router.

One enum rather than free strings, so that a threshold configured for a type that
no model predicts is a configuration error instead of a silent no-op.
"""

from __future__ import annotations

from enum import StrEnum


class AnomalyType(StrEnum):
    """Kinds of anomaly the platform labels, predicts and thresholds separately."""

    PRICE_SPIKE = "price_spike"
    """A trade price or payment amount far outside the entity's recent range."""
    VOLUME_BURST = "volume_burst"
    """Quantity far above the entity's rolling median."""
    VELOCITY_BURST = "velocity_burst"
    """Many small events in a short time (card testing, quote stuffing)."""
    SPREAD_BLOWOUT = "spread_blowout"
    """Quoted spread widens abnormally (liquidity disappears)."""
    NOVELTY_JUMP = "novelty_jump"
    """A counterparty or geography the entity has not used before."""
    SLOW_DRIFT = "slow_drift"
    """A gradual level shift that no single event betrays."""


NORMAL_LABEL = "normal"
"""Label of non-anomalous events in ground-truth files and multi-class models."""

ALL_LABELS: tuple[str, ...] = (NORMAL_LABEL, *(t.value for t in AnomalyType))
"""Class order of multi-class models: index 0 is normal, then the types in declaration order."""
