"""Fast parsing and validation of events, with a reason a producer's owner can act on.

This is on the ingest hot path (50,000 events/s on two cores), so it parses with orjson
and checks a precompiled table instead of building a model object per event. Every
rejection names the exact field and problem; the ingest service sends it, with the original
bytes, to the dead-letter topic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from services.common.events.schema import (
    EVENT_KINDS,
    MAX_EVENT_BYTES,
    MAX_MAGNITUDE,
    METRIC_FIELDS,
    METRIC_KIND,
    TRANSACTION_FIELDS,
    FieldSpec,
)

Event = dict[str, Any]
"""A validated event: the parsed JSON object with defaults filled in and numbers as floats."""


class EventError(ValueError):
    """An event that breaks the contract. `field` is None for whole-payload problems."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


Check = Callable[[Any], Any]
"""Takes the raw value, returns the normalised one or raises EventError."""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        str: "string",
        int: "integer",
        float: "number",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _compile(spec: FieldSpec) -> Check:
    """Turn one FieldSpec into a closure; done once at import, not per event."""
    name = spec.name
    pattern = re.compile(spec.pattern) if spec.pattern else None

    if spec.type == "string":

        def check_string(value: Any) -> Any:
            if type(value) is not str:
                raise EventError(f"field '{name}' must be a string, got {_type_name(value)}", name)
            if spec.min_length is not None and len(value) < spec.min_length:
                raise EventError(f"field '{name}' must not be empty", name)
            if spec.max_length is not None and len(value) > spec.max_length:
                raise EventError(
                    f"field '{name}' is {len(value)} characters, at most {spec.max_length} allowed",
                    name,
                )
            if spec.enum is not None and value not in spec.enum:
                allowed = ", ".join(spec.enum)
                raise EventError(f"field '{name}' is {value!r}, expected one of: {allowed}", name)
            if pattern is not None and pattern.fullmatch(value) is None:
                raise EventError(
                    f"field '{name}' is {value!r}, which does not match {spec.pattern}", name
                )
            return value

        return check_string

    is_integer = spec.type == "integer"

    def check_number(value: Any) -> Any:
        kind = type(value)
        if kind is bool or (kind is not int and kind is not float):
            expected = "an integer" if is_integer else "a number"
            raise EventError(f"field '{name}' must be {expected}, got {_type_name(value)}", name)
        if kind is float:
            if not math.isfinite(value):
                raise EventError(f"field '{name}' must be finite, got {value}", name)
            if is_integer:
                # JSON has one number type: 1.7e12 is an integer to JSON Schema, 1.5 is not.
                if not value.is_integer():
                    raise EventError(f"field '{name}' must be an integer, got {value}", name)
                value = int(value)
        if spec.minimum is not None and value < spec.minimum:
            raise EventError(f"field '{name}' is {value}, below the minimum {_fmt(spec)}", name)
        if spec.exclusive_minimum is not None and value <= spec.exclusive_minimum:
            raise EventError(
                f"field '{name}' is {value}, must be greater than {spec.exclusive_minimum:g}", name
            )
        if spec.maximum is not None and value > spec.maximum:
            raise EventError(f"field '{name}' is {value}, above the maximum {_fmt_max(spec)}", name)
        return value if is_integer else float(value)

    return check_number


def _fmt(spec: FieldSpec) -> str:
    if spec.name == "ts":
        return f"{spec.minimum:.0f} (2000-01-01 in ms; was it sent in seconds?)"
    return f"{spec.minimum:g}"


def _fmt_max(spec: FieldSpec) -> str:
    if spec.name == "ts":
        return f"{spec.maximum:.0f} (2100-01-01 in ms; was it sent in microseconds?)"
    return f"{spec.maximum:g}"


@dataclass(frozen=True, slots=True)
class _Shape:
    fields: tuple[tuple[str, Check, bool, Any], ...]
    allowed: frozenset[str]


def _shape(fields: tuple[FieldSpec, ...]) -> _Shape:
    return _Shape(
        fields=tuple((f.name, _compile(f), f.required, f.default) for f in fields),
        allowed=frozenset(f.name for f in fields),
    )


_FAST_KINDS = frozenset(("trade", "payment"))
_SHAPES = {
    "trade": _shape(TRANSACTION_FIELDS),
    "payment": _shape(TRANSACTION_FIELDS),
    METRIC_KIND: _shape(METRIC_FIELDS),
}


def validate_event(obj: Any) -> Event:
    """Check a parsed JSON value against the contract and return the normalised event."""
    if type(obj) is not dict:
        raise EventError(f"event must be a JSON object, got {_type_name(obj)}")
    kind = obj.get("kind")
    if kind is None:
        raise EventError("missing required field 'kind'", "kind")
    shape = _SHAPES.get(kind) if type(kind) is str else None
    if shape is None:
        raise EventError(
            f"field 'kind' is {kind!r}, expected one of: {', '.join(EVENT_KINDS)}", "kind"
        )
    extra = obj.keys() - shape.allowed
    if extra:
        unknown = sorted(extra)[0]
        raise EventError(
            f"unknown field '{unknown}' for kind {kind!r} "
            f"(allowed: {', '.join(sorted(shape.allowed))})",
            unknown,
        )
    out: Event = {}
    for name, check, required, default in shape.fields:
        value = obj.get(name)
        if value is None:
            if name in obj:
                raise EventError(f"field '{name}' must not be null", name)
            if required:
                raise EventError(f"missing required field '{name}'", name)
            if default is not None:
                out[name] = default
            continue
        out[name] = check(value)
    if kind == METRIC_KIND and "event_id" not in out:
        out["event_id"] = f"{out['entity_id']}:{out['ts']}"
    return out


_TX_ALLOWED = frozenset(f.name for f in TRANSACTION_FIELDS)
_TX_OPTIONAL_STR = tuple(
    (f.name, f.max_length or 10**9)
    for f in TRANSACTION_FIELDS
    if f.type == "string" and not f.required and f.pattern is None
)
_ID_MAX = next(f.max_length for f in TRANSACTION_FIELDS if f.name == "event_id") or 0
_TS_MIN = int(next(f.minimum for f in TRANSACTION_FIELDS if f.name == "ts") or 0)
_TS_MAX = int(next(f.maximum for f in TRANSACTION_FIELDS if f.name == "ts") or 0)
_MAGNITUDE: Final = MAX_MAGNITUDE


def _code(value: Any, size: int) -> bool:
    """An upper-case ASCII code of `size` letters (ISO country / currency), without a regex."""
    return (
        type(value) is str
        and len(value) == size
        and value.isascii()
        and value.isalpha()
        and value.isupper()
    )


def _fast_transaction(obj: dict[str, Any]) -> Event | None:
    """The well-formed transaction, checked inline; None sends it to the precise validator.

    Nearly every event is well-formed, so this path decides acceptance with plain type and
    range checks (about 3x faster than the table-driven validator); any doubt falls back to
    `validate_event`, which produces the exact message. The unit tests run every bad case
    through both and require the same verdict.
    """
    if not _TX_ALLOWED.issuperset(obj):
        return None
    event_id = obj.get("event_id")
    entity_id = obj.get("entity_id")
    ts = obj.get("ts")
    amount: Any = obj.get("amount")
    if (
        type(event_id) is not str
        or not 0 < len(event_id) <= _ID_MAX
        or type(entity_id) is not str
        or not 0 < len(entity_id) <= _ID_MAX
        or type(ts) is not int
        or not _TS_MIN <= ts <= _TS_MAX
    ):
        return None
    kind_amount = type(amount)
    if kind_amount is float:
        if not 0.0 < amount <= _MAGNITUDE:  # NaN fails every comparison, inf the bound
            return None
    elif kind_amount is int and 0 < amount <= _MAGNITUDE:
        obj["amount"] = float(amount)
    else:
        return None
    # Optional fields are checked in place: the parsed dict is ours, so it becomes the event.
    for name in ("quantity", "spread_bps"):
        if name in obj:
            v = obj[name]
            kind = type(v)
            if kind is int and 0 <= v <= _MAGNITUDE:
                obj[name] = float(v)
            elif not (kind is float and 0.0 <= v <= _MAGNITUDE):
                return None
    for name, longest in _TX_OPTIONAL_STR:
        if name in obj:
            v = obj[name]
            if type(v) is not str or len(v) > longest:
                return None
    if ("country" in obj and not _code(obj["country"], 2)) or (
        "currency" in obj and not _code(obj["currency"], 3)
    ):
        return None
    if "quantity" not in obj:
        obj["quantity"] = 1.0
    return obj


def parse_event(raw: bytes) -> Event:
    """Parse one Kafka message value into a validated event, or raise EventError."""
    size = len(raw)
    if size > MAX_EVENT_BYTES:
        raise EventError(f"payload of {size} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
    if size == 0:
        raise EventError("empty payload")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        hint = ""
        if b"NaN" in raw or b"Infinity" in raw:
            hint = " (NaN and Infinity are not JSON numbers; send a finite value)"
        raise EventError(f"not valid JSON: {exc}{hint}") from None
    # `kind` may be any JSON value, a list or an object included (unhashable): compare
    # strings only, and leave everything else to the validator's message.
    kind = obj.get("kind") if type(obj) is dict else None
    if type(kind) is str and kind in _FAST_KINDS:
        fast = _fast_transaction(obj)
        if fast is not None:
            return fast
    return validate_event(obj)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that failed validation, with where it sat in its batch."""

    index: int
    raw: bytes
    reason: str
    field: str | None


def parse_batch(raws: Iterable[bytes]) -> tuple[list[Event], list[int], list[Rejected]]:
    """Parse a micro-batch: valid events (with their batch positions) and rejections.

    One bad message never fails the batch; the caller sends each rejection to the DLQ.
    """
    events: list[Event] = []
    positions: list[int] = []
    rejected: list[Rejected] = []
    for i, raw in enumerate(raws):
        try:
            events.append(parse_event(raw))
            positions.append(i)
        except EventError as exc:
            rejected.append(Rejected(i, raw, exc.reason, exc.field))
    return events, positions, rejected


def encode_event(event: Event) -> bytes:
    """Serialise an event the way producers should: compact UTF-8 JSON."""
    return orjson.dumps(event)
