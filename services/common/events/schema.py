"""The event contract: one table of fields from which both the validator and the JSON Schema come.

Events are JSON objects on the `events` topic, keyed by `entity_id`. Two shapes share the topic,
told apart by `kind`:

* transactions (`kind` = `trade` or `payment`): a trade of an instrument or a card/account payment;
* metric samples (`kind` = `metric`): one value of an infrastructure time series.

Keeping the fields in a table (rather than a pydantic model per shape) lets the hot-path validator
run without per-event object construction while the published JSON Schema stays in lock-step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

MAX_EVENT_BYTES: Final = 4096
"""Larger payloads are rejected before parsing: no legitimate event comes near it."""

MIN_TS_MS: Final = 946_684_800_000
"""2000-01-01T00:00:00Z. Earlier timestamps are unit mistakes (seconds instead of ms)."""
MAX_TS_MS: Final = 4_102_444_800_000
"""2100-01-01T00:00:00Z. Later timestamps are unit mistakes (microseconds instead of ms)."""

MAX_MAGNITUDE: Final = 1e15
"""Largest amount, quantity, spread or metric value accepted (a quadrillion). Window sums of
larger values overflow the float32 features the models read, and an infinite sum would sit
in the entity's windows for an hour and in its baselines for longer; no real price, volume
or sample comes near it."""

TRANSACTION_KINDS: Final = ("trade", "payment")
METRIC_KIND: Final = "metric"
EVENT_KINDS: Final = (*TRANSACTION_KINDS, METRIC_KIND)

FieldType = Literal["string", "integer", "number"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of an event shape."""

    name: str
    type: FieldType
    description: str
    required: bool = True
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    default: Any = None


_ID_MAX = 128
_TS = FieldSpec(
    "ts",
    "integer",
    "Event time, milliseconds since the Unix epoch (UTC). Windows use this, not arrival time.",
    minimum=MIN_TS_MS,
    maximum=MAX_TS_MS,
)

TRANSACTION_FIELDS: Final[tuple[FieldSpec, ...]] = (
    FieldSpec(
        "event_id",
        "string",
        "Unique id of the event; decisions and alerts carry it.",
        min_length=1,
        max_length=_ID_MAX,
    ),
    FieldSpec(
        "entity_id",
        "string",
        "Account, card or instrument the event belongs to; the Kafka key.",
        min_length=1,
        max_length=_ID_MAX,
    ),
    _TS,
    FieldSpec("kind", "string", "`trade` or `payment`.", enum=TRANSACTION_KINDS),
    FieldSpec(
        "amount",
        "number",
        "Trade price, or payment amount in `currency` units. Positive, at most 1e15.",
        exclusive_minimum=0,
        maximum=MAX_MAGNITUDE,
    ),
    FieldSpec(
        "quantity",
        "number",
        "Traded volume; 1 for a payment when absent.",
        required=False,
        minimum=0,
        maximum=MAX_MAGNITUDE,
        default=1.0,
    ),
    FieldSpec(
        "spread_bps",
        "number",
        "Quoted bid/ask spread in basis points at the time of a trade.",
        required=False,
        minimum=0,
        maximum=MAX_MAGNITUDE,
    ),
    FieldSpec(
        "instrument",
        "string",
        "Instrument symbol (trades) or merchant id (payments).",
        required=False,
        max_length=64,
    ),
    FieldSpec(
        "counterparty", "string", "Counterparty or beneficiary id.", required=False, max_length=64
    ),
    FieldSpec(
        "country",
        "string",
        "ISO 3166-1 alpha-2 country of the counterparty or the card use.",
        required=False,
        pattern=r"^[A-Z]{2}$",
    ),
    FieldSpec(
        "channel",
        "string",
        "Where the event came from: web, pos, api, venue code, ...",
        required=False,
        max_length=32,
    ),
    FieldSpec(
        "currency", "string", "ISO 4217 currency code.", required=False, pattern=r"^[A-Z]{3}$"
    ),
)

METRIC_FIELDS: Final[tuple[FieldSpec, ...]] = (
    FieldSpec(
        "event_id",
        "string",
        "Unique id of the sample; `<entity_id>:<ts>` when absent.",
        required=False,
        min_length=1,
        max_length=_ID_MAX,
    ),
    FieldSpec(
        "entity_id",
        "string",
        "The series: host, service or metric name; the Kafka key.",
        min_length=1,
        max_length=_ID_MAX,
    ),
    _TS,
    FieldSpec("kind", "string", "Always `metric`.", enum=(METRIC_KIND,)),
    FieldSpec(
        "value",
        "number",
        "The sampled value, between -1e15 and 1e15.",
        minimum=-MAX_MAGNITUDE,
        maximum=MAX_MAGNITUDE,
    ),
)


def _property(spec: FieldSpec) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": spec.type, "description": spec.description}
    for key, attr in (
        ("minLength", spec.min_length),
        ("maxLength", spec.max_length),
        ("pattern", spec.pattern),
        ("minimum", spec.minimum),
        ("exclusiveMinimum", spec.exclusive_minimum),
        ("maximum", spec.maximum),
    ):
        if attr is not None:
            prop[key] = attr
    if spec.enum is not None:
        prop["enum"] = list(spec.enum)
    if spec.default is not None:
        prop["default"] = spec.default
    return prop


def _object_schema(title: str, fields: tuple[FieldSpec, ...]) -> dict[str, Any]:
    return {
        "title": title,
        "type": "object",
        "properties": {f.name: _property(f) for f in fields},
        "required": [f.name for f in fields if f.required],
        "additionalProperties": False,
    }


def event_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of an event on the `events` topic, as published in `schemas/`.

    NaN and infinities cannot be expressed in JSON; the validator also rejects the
    non-standard `NaN`/`Infinity` tokens some producers emit.
    """
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://anomaly-platform.dev/schemas/event.json",
        "title": "Event",
        "description": (
            "One event on the `events` topic, keyed by entity_id. "
            f"At most {MAX_EVENT_BYTES} bytes of UTF-8 JSON."
        ),
        "oneOf": [
            _object_schema("Transaction", TRANSACTION_FIELDS),
            _object_schema("MetricSample", METRIC_FIELDS),
        ],
    }
