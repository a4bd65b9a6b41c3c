"""The one definition of the window features: names, order, windows and panes.

Training (`models/`) and serving (`services/ingest`, `services/router`) import these names;
a model records them in its registry metadata, and a mismatch is refused at load time.
Changing the order or meaning of a feature is a breaking change: bump FEATURE_SCHEMA_VERSION.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Window:
    """A sliding event-time window made of fixed panes (tumbling sub-buckets).

    A window of `size_ms` with `panes` panes covers the current pane plus the `panes - 1`
    previous ones, so it spans between `size_ms - pane_ms` and `size_ms` of history: the
    standard pane trade-off (bounded memory, O(panes) per read) that stream processors make.
    """

    name: str
    size_ms: int
    panes: int

    @property
    def pane_ms(self) -> int:
        """Width of one pane."""
        return self.size_ms // self.panes


WINDOWS: Final[tuple[Window, ...]] = (
    Window("1m", 60_000, 6),
    Window("5m", 300_000, 10),
    Window("1h", 3_600_000, 12),
)

FEATURE_DOCS: Final[dict[str, str]] = {
    # velocity per window
    "count_1m": "Events of the entity in the last minute, this one included.",
    "count_5m": "Events of the entity in the last 5 minutes, this one included.",
    "count_1h": "Events of the entity in the last hour, this one included.",
    "rate_ratio_1m_1h": "Per-minute rate of the last minute over the last hour's (burstiness).",
    # amounts per window
    "amount_sum_1m": "Sum of amounts in the last minute.",
    "amount_sum_1h": "Sum of amounts in the last hour.",
    "amount_mean_5m": "Mean amount in the last 5 minutes.",
    "amount_mean_1h": "Mean amount in the last hour.",
    "log_amount_std_1h": "Standard deviation of log(1 + amount) in the last hour.",
    # the current event against the entity's baselines
    "log_amount": "log(1 + amount) of this event (the metric value for metric samples).",
    "amount_zscore": "z-score of log(1 + amount) against the entity's long-run baseline (EWMA).",
    "price_dev_ma": "Relative deviation of the amount from its short moving average (EWMA).",
    "volume_ratio_median": "Quantity over the entity's rolling median quantity (log-EWMA sketch).",
    "spread_ratio": "Spread over the entity's typical spread (1 when the event has none).",
    "level_shift": "Medium-run over long-run mean of log amount, in long-run standard deviations.",
    "time_since_prev_s": "Seconds since the entity's previous event (capped at one hour).",
    "log_gap_recent": "Recent mean (EWMA) of log(1 + seconds between the entity's events).",
    "gap_shift": "Long-run minus recent mean of log(1 + seconds between the entity's events): "
    "positive when the entity sends faster than it usually does, whatever its usual pace.",
    # novelty
    "distinct_counterparties_1h": "Distinct counterparties of the entity in the last hour.",
    "distinct_countries_1h": "Distinct countries of the entity in the last hour.",
    "counterparty_novel": "1 if the counterparty is not in the entity's remembered history.",
    "counterparty_streak": "log(1 + consecutive events of the entity with this counterparty, "
    "this one included): a run at one merchant (card testing) or venue.",
    "country_novel": "1 if the country is not in the entity's remembered history.",
    # history depth and context
    "entity_events_seen": "log(1 + events seen from the entity): how far to trust its baselines.",
    "global_rate_1m": "All-entity events per second over the last minute (per micro-batch).",
}

FEATURE_NAMES: Final[tuple[str, ...]] = tuple(FEATURE_DOCS)
"""Column order of every feature matrix and vector."""

FEATURE_SCHEMA_VERSION: Final = 3

IDLE_TTL_MS_DEFAULT: Final = 30 * 86_400_000
"""30 days: an entity silent longer starts over (`EngineSettings.idle_ttl_ms`). Far longer
than any window (1 h) or baseline memory, so it bounds state without touching the features
of entities that are active."""


def feature_schema_hash() -> str:
    """Short hash of names, order and version; stored with models to refuse mismatches."""
    text = f"v{FEATURE_SCHEMA_VERSION}:" + ",".join(FEATURE_NAMES)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
