"""The column layout of one generated chunk.

Events live as numpy columns from sampling to encoding: per-event Python objects would
cost more than the whole throughput budget (about 10 µs per event at 100,000 events/s on
one core, Kafka client included). Strings are kept as small integer codes into tables
and only become text in `encoding`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Bools = NDArray[np.bool_]
Codes = NDArray[np.int16]

NORMAL_CODE: Final = -1
"""Label code of an unlabelled event; anomaly codes index `anomalies.TYPES`."""


@dataclass(slots=True, eq=False)
class Columns:
    """One chunk of events, one array per field, all of the same length.

    Mutable on purpose: anomaly injection edits a few rows of the normal draw in place.
    """

    position: I64
    """Index in the whole stream; fixes the event id and (with the rate) the event time."""
    ts: I64
    """Event time, ms since the epoch."""
    entity: I64
    """Index into the population."""
    is_trade: Bools
    amount: F64
    """Payment amount or trade price."""
    quantity: F64
    """Trade quantity (whole units); 1 for payments."""
    spread_bps: F64
    """Trade spread; NaN for payments (the field is absent)."""
    counterparty: I64
    """Index into the counterparty pool (`cp-NNNNNN`; payments: also the merchant)."""
    country: Codes
    """Index into `reference_data.COUNTRIES`."""
    channel: Codes
    """Index into `reference_data.CHANNELS`."""
    label: NDArray[np.int8]
    """NORMAL_CODE or the anomaly type's code."""

    def __len__(self) -> int:
        return len(self.position)

    def slice(self, start: int, stop: int) -> Columns:
        """Rows [start, stop) as views (no copy): for cutting the last chunk of a run and
        for sending a chunk in paced slices."""
        s = slice(start, stop)
        return Columns(
            self.position[s],
            self.ts[s],
            self.entity[s],
            self.is_trade[s],
            self.amount[s],
            self.quantity[s],
            self.spread_bps[s],
            self.counterparty[s],
            self.country[s],
            self.channel[s],
            self.label[s],
        )

    def round_values(self) -> None:
        """Round to what is published (cents, whole units, 0.01 bp), once, after injection.

        Parquet and JSON outputs then carry the same numbers, and a price can never round
        down to zero (the contract wants amount > 0).
        """
        np.maximum(np.round(self.amount, 2), 0.01, out=self.amount)
        np.maximum(np.round(self.quantity), 1.0, out=self.quantity)
        np.round(self.spread_bps, 2, out=self.spread_bps)
