"""The event contract: valid events pass normalised, every kind of bad input names its problem."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from services.common.events import (
    MAX_EVENT_BYTES,
    EventError,
    event_json_schema,
    parse_batch,
    parse_event,
)

PUBLISHED_SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "event.schema.json"

TRADE: dict[str, Any] = {
    "event_id": "e-1",
    "entity_id": "acct-7",
    "ts": 1_767_571_200_000,
    "kind": "trade",
    "amount": 101.25,
    "quantity": 300,
    "spread_bps": 4.5,
    "instrument": "XYZ",
    "counterparty": "cp-9",
    "country": "DE",
    "channel": "api",
    "currency": "EUR",
}
PAYMENT: dict[str, Any] = {
    "event_id": "p-1",
    "entity_id": "card-1",
    "ts": 1_767_571_200_000,
    "kind": "payment",
    "amount": 12,
}
METRIC: dict[str, Any] = {
    "entity_id": "host-1/cpu",
    "ts": 1_767_571_200_000,
    "kind": "metric",
    "value": 0.93,
}


def strict_json(raw: bytes) -> Any:
    """Standard JSON only: Python's json module would accept NaN, Infinity and 1e999 (as inf)."""

    def reject_constant(name: str) -> Any:
        raise ValueError(name)

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return value

    return json.loads(raw, parse_constant=reject_constant, parse_float=finite)


def encode(obj: Any) -> bytes:
    return orjson.dumps(obj)


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if value is _DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


_DROP = object()


def test_valid_events_are_normalised() -> None:
    trade = parse_event(encode(TRADE))
    assert trade["quantity"] == 300.0 and isinstance(trade["quantity"], float)
    payment = parse_event(encode(PAYMENT))
    assert payment["amount"] == 12.0 and isinstance(payment["amount"], float)
    assert payment["quantity"] == 1.0  # documented default for payments
    integral_float_ts = parse_event(encode(with_(PAYMENT, ts=1.767e12)))
    assert integral_float_ts["ts"] == 1_767_000_000_000 and isinstance(integral_float_ts["ts"], int)
    metric = parse_event(encode(METRIC))
    assert metric["event_id"] == "host-1/cpu:1767571200000"  # derived when absent


BAD_CASES: list[tuple[str, bytes, str | None, str]] = [
    (
        "missing field",
        encode(with_(TRADE, amount=_DROP)),
        "amount",
        "missing required field 'amount'",
    ),
    ("missing kind", encode(with_(TRADE, kind=_DROP)), "kind", "missing required field 'kind'"),
    (
        "unknown kind",
        encode(with_(TRADE, kind="refund")),
        "kind",
        "expected one of: trade, payment, metric",
    ),
    (
        "wrong type string",
        encode(with_(TRADE, amount="12.5")),
        "amount",
        "must be a number, got string",
    ),
    ("wrong type bool", encode(with_(TRADE, ts=True)), "ts", "must be an integer, got boolean"),
    (
        "fractional timestamp",
        encode(with_(TRADE, ts=1.7e12 + 0.5)),
        "ts",
        "must be an integer, got 1",
    ),
    (
        "wrong type id",
        encode(with_(TRADE, entity_id=42)),
        "entity_id",
        "must be a string, got integer",
    ),
    ("null value", encode(with_(TRADE, counterparty=None)), "counterparty", "must not be null"),
    ("empty id", encode(with_(TRADE, event_id="")), "event_id", "must not be empty"),
    (
        "NaN literal",
        encode(TRADE).replace(b"101.25", b"NaN"),
        None,
        "NaN and Infinity are not JSON numbers",
    ),
    ("Infinity literal", encode(TRADE).replace(b"101.25", b"Infinity"), None, "NaN and Infinity"),
    ("overflow to inf", encode(TRADE).replace(b"101.25", b"1e999"), None, "infinity"),
    ("seconds not ms", encode(with_(TRADE, ts=1_767_571_200)), "ts", "was it sent in seconds?"),
    (
        "microseconds",
        encode(with_(TRADE, ts=1_767_571_200_000_000)),
        "ts",
        "was it sent in microseconds?",
    ),
    ("negative amount", encode(with_(TRADE, amount=-5.0)), "amount", "must be greater than 0"),
    ("zero amount", encode(with_(TRADE, amount=0)), "amount", "must be greater than 0"),
    ("negative quantity", encode(with_(TRADE, quantity=-1)), "quantity", "below the minimum 0"),
    # Past MAX_MAGNITUDE the float32 window sums overflow to inf and poison the entity's state.
    ("huge amount", encode(with_(TRADE, amount=1e308)), "amount", "above the maximum 1e+15"),
    ("huge int amount", encode(with_(TRADE, amount=10**16)), "amount", "above the maximum 1e+15"),
    ("huge quantity", encode(with_(TRADE, quantity=2e15)), "quantity", "above the maximum 1e+15"),
    ("huge spread", encode(with_(TRADE, spread_bps=1e300)), "spread_bps", "above the maximum"),
    ("huge metric", encode(with_(METRIC, value=1e308)), "value", "above the maximum 1e+15"),
    ("huge negative metric", encode(with_(METRIC, value=-1e20)), "value", "below the minimum"),
    ("bad country", encode(with_(TRADE, country="Germany")), "country", "does not match"),
    ("too long", encode(with_(TRADE, channel="x" * 33)), "channel", "at most 32 allowed"),
    ("unknown field", encode(with_(TRADE, label="price_spike")), "label", "unknown field 'label'"),
    ("metric field on trade", encode(with_(TRADE, value=1.0)), "value", "unknown field 'value'"),
    ("not an object", b"[1, 2, 3]", None, "must be a JSON object, got array"),
    ("not JSON", b"amount=12", None, "not valid JSON"),
    ("truncated JSON", encode(TRADE)[:-10], None, "not valid JSON"),
    ("empty payload", b"", None, "empty payload"),
    (
        "oversize payload",
        encode(with_(TRADE, channel="x")) + b" " * MAX_EVENT_BYTES,
        None,
        f"exceeds the {MAX_EVENT_BYTES}-byte limit",
    ),
    (
        "kind is an object",  # unhashable: must not be looked up in a set of kinds
        encode(with_(TRADE, kind={"name": "trade"})),
        "kind",
        "field 'kind' is {'name': 'trade'}, expected one of",
    ),
    (
        "metric without value",
        encode(with_(METRIC, value=_DROP)),
        "value",
        "missing required field 'value'",
    ),
]


@pytest.mark.parametrize(
    ("case", "raw", "field", "reason"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_events_name_the_exact_problem(
    case: str, raw: bytes, field: str | None, reason: str
) -> None:
    with pytest.raises(EventError) as info:
        parse_event(raw)
    assert reason in info.value.reason, info.value.reason
    assert info.value.field == field


def test_batch_keeps_going_past_bad_messages_and_keeps_their_bytes() -> None:
    raws = [encode(TRADE), b"{", encode(PAYMENT), encode(with_(TRADE, amount="x")), encode(METRIC)]
    events, positions, rejected = parse_batch(raws)
    assert [e["kind"] for e in events] == ["trade", "payment", "metric"]
    assert positions == [0, 2, 4]
    assert [(r.index, r.raw) for r in rejected] == [(1, b"{"), (3, raws[3])]
    assert rejected[1].field == "amount"


def test_published_schema_file_is_in_sync() -> None:
    """`schemas/event.schema.json` is what producers read; regenerate with `anomaly schema show`."""
    assert json.loads(PUBLISHED_SCHEMA.read_text()) == event_json_schema()


@pytest.mark.parametrize(
    ("case", "raw", "field", "reason"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_json_schema_agrees_with_the_validator(
    case: str, raw: bytes, field: str | None, reason: str
) -> None:
    """Whatever the fast validator rejects, the published JSON Schema rejects too."""
    schema = event_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    try:
        obj = strict_json(raw)
    except ValueError:
        return  # not JSON at all (NaN and Infinity included): nothing for a schema to say
    if case == "oversize payload":
        return  # a transport limit, stated in the schema's description
    assert not jsonschema.Draft202012Validator(schema).is_valid(obj)


@pytest.mark.parametrize("good", [TRADE, PAYMENT, METRIC], ids=["trade", "payment", "metric"])
def test_json_schema_accepts_valid_events(good: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(event_json_schema()).validate(good)


MUTATION_POOL: list[Any] = [
    None, True, 0, 1, -1, 7, 1.5, -0.5, 0.0, 1e308, "", "x", "DE", "de", "EUR", "eur", "D1",
    "y" * 65, "z" * 129, [], {}, 1_767_571_200_000, 946_684_799_999, 4_102_444_800_001, 1.7e12,
    1e15, 1.000001e15, 10**15 + 1,
]  # fmt: skip
"""Values that break some field's rule: wrong types, bounds, case, lengths, time limits."""


def mutated_events(
    rng: random.Random, templates: list[dict[str, Any]], n: int, share_mutated: float = 1.0
) -> list[dict[str, Any]]:
    """`n` copies of valid templates, `share_mutated` of them with 1-3 fields dropped or set
    to a value from MUTATION_POOL: the inputs on which two validators must agree."""
    fields = [*TRADE, "value", "label"]
    out = []
    for _ in range(n):
        obj = dict(rng.choice(templates))
        if share_mutated >= 1.0 or rng.random() < share_mutated:
            for _ in range(rng.randint(1, 3)):
                name = rng.choice(fields)
                if rng.random() < 0.2:
                    obj.pop(name, None)
                else:
                    obj[name] = rng.choice(MUTATION_POOL)
        out.append(obj)
    return out


def test_fast_path_and_precise_validator_agree_on_mutated_events() -> None:
    """The inline fast path may only accept what the table-driven validator accepts, identically."""
    from services.common.events.validation import _fast_transaction, validate_event

    disagreements = []
    for obj in mutated_events(random.Random(1), [TRADE, PAYMENT], 20_000):
        try:
            precise: dict[str, Any] | None = validate_event(dict(obj))
        except EventError:
            precise = None
        fast = _fast_transaction(dict(obj)) if obj.get("kind") in ("trade", "payment") else None
        if fast is not None and fast != precise:
            disagreements.append((obj, fast, precise))
    assert not disagreements, disagreements[:3]


@pytest.mark.parametrize(
    ("case", "raw", "field", "reason"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_fast_path_rejects_every_bad_case(
    case: str, raw: bytes, field: str | None, reason: str
) -> None:
    from services.common.events.validation import _fast_transaction

    if case == "oversize payload":
        return  # refused on size before any parsing
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    if isinstance(obj, dict) and obj.get("kind") in ("trade", "payment"):
        assert _fast_transaction(obj) is None
