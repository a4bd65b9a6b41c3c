"""Columns to wire bytes: event JSON, Kafka keys and label records.

Events are formatted with one `%` template per kind over whole columns, not with
`orjson.dumps` of a dict per event: measured on the 2-core dev machine, the template path
is about twice as fast (~0.8 M vs ~0.4 M events/s for 10k-event chunks) and produces the
same compact JSON. It is safe because every string field comes from our own tables
(ASCII letters, digits and '-'), so nothing needs escaping; tests parse a large sample
back through the contract's validator to keep it honest.
"""

from __future__ import annotations

from typing import Any, Final, TypedDict

import numpy as np

from services.generator.anomalies import TYPES
from services.generator.columns import Columns
from services.generator.population import Population
from services.generator.reference_data import CHANNELS, COUNTRIES

_COUNTRY_CODES = np.array([c.code for c in COUNTRIES], dtype=object)
_CURRENCIES = np.array([c.currency for c in COUNTRIES], dtype=object)
_CHANNEL_NAMES = np.array(CHANNELS, dtype=object)

_PAYMENT: Final = (
    '{"event_id":"{prefix}%d","entity_id":"%s","ts":%d,"kind":"payment","amount":%.2f,'
    '"instrument":"m-%06d","counterparty":"cp-%06d","country":"%s","channel":"%s",'
    '"currency":"%s"}'
)
_TRADE: Final = (
    '{"event_id":"{prefix}%d","entity_id":"%s","ts":%d,"kind":"trade","amount":%.2f,'
    '"quantity":%d,"spread_bps":%.2f,"instrument":"%s","counterparty":"cp-%06d",'
    '"country":"%s","channel":"%s","currency":"%s"}'
)


class LabelRecord(TypedDict):
    """Ground truth of one anomalous event; events without a record are normal."""

    event_id: str
    entity_id: str
    ts: int
    label: str


class EventEncoder:
    """Formats a stream's events; the event-id prefix is baked into the templates."""

    def __init__(self, pop: Population, id_prefix: str) -> None:
        self._pop = pop
        self.id_prefix = id_prefix
        escaped = id_prefix.replace("%", "%%")
        self._payment = _PAYMENT.replace("{prefix}", escaped)
        self._trade = _TRADE.replace("{prefix}", escaped)

    def values(self, cols: Columns) -> list[bytes]:
        """Compact JSON of every event, in stream order."""
        pop = self._pop
        out = np.empty(len(cols), dtype=object)
        for is_trade in (False, True):
            rows = np.flatnonzero(cols.is_trade == is_trade)
            if len(rows) == 0:
                continue
            entity = cols.entity[rows]
            position = cols.position[rows].tolist()
            names = pop.names[entity].tolist()
            ts = cols.ts[rows].tolist()
            amount = cols.amount[rows].tolist()
            cp = cols.counterparty[rows].tolist()
            country = _COUNTRY_CODES[cols.country[rows]].tolist()
            channel = _CHANNEL_NAMES[cols.channel[rows]].tolist()
            currency = _CURRENCIES[pop.home[entity]].tolist()
            if is_trade:
                template = self._trade
                args = zip(
                    position, names, ts, amount,
                    cols.quantity[rows].tolist(), cols.spread_bps[rows].tolist(),
                    pop.tickers[entity].tolist(), cp, country, channel, currency,
                    strict=True,
                )  # fmt: skip
            else:
                template = self._payment
                args = zip(position, names, ts, amount, cp, cp, country, channel, currency,
                           strict=True)  # fmt: skip
            out[rows] = [(template % a).encode() for a in args]
        values: list[bytes] = out.tolist()
        return values

    def keys(self, cols: Columns) -> list[bytes]:
        """Kafka keys (entity ids), looked up from per-entity bytes."""
        keys: list[bytes] = self._pop.keys[cols.entity].tolist()
        return keys

    def labels(self, cols: Columns) -> list[LabelRecord]:
        """One record per anomalous event of the chunk, in stream order."""
        rows = np.flatnonzero(cols.label >= 0)
        prefix = self.id_prefix
        return [
            {
                "event_id": f"{prefix}{position}",
                "entity_id": name,
                "ts": ts,
                "label": TYPES[code].value,
            }
            for position, name, ts, code in zip(
                cols.position[rows].tolist(),
                self._pop.names[cols.entity[rows]].tolist(),
                cols.ts[rows].tolist(),
                cols.label[rows].tolist(),
                strict=True,
            )
        ]

    def table_columns(self, cols: Columns) -> dict[str, Any]:
        """The chunk as named columns for a columnar writer, in the validated (normalised)
        form: payments carry quantity 1.0 and a null (NaN) spread, as `parse_event`
        returns them."""
        pop = self._pop
        entity = cols.entity
        trade = cols.is_trade
        cp = cols.counterparty.tolist()
        prefix = self.id_prefix
        return {
            "event_id": [f"{prefix}{p}" for p in cols.position.tolist()],
            "entity_id": pop.names[entity],
            "ts": cols.ts,
            "kind": np.where(trade, "trade", "payment").astype(object),
            "amount": cols.amount,
            "quantity": cols.quantity,
            "spread_bps": np.where(trade, cols.spread_bps, np.nan),
            "instrument": np.where(
                trade, pop.tickers[entity], np.array([f"m-{c:06d}" for c in cp], dtype=object)
            ),
            "counterparty": np.array([f"cp-{c:06d}" for c in cp], dtype=object),
            "country": _COUNTRY_CODES[cols.country],
            "channel": _CHANNEL_NAMES[cols.channel],
            "currency": _CURRENCIES[pop.home[entity]],
        }
