"""The event contract: schema, fast validation and encoding."""

from services.common.events.schema import MAX_EVENT_BYTES, event_json_schema
from services.common.events.validation import (
    Event,
    EventError,
    Rejected,
    encode_event,
    parse_batch,
    parse_event,
    validate_event,
)

__all__ = [
    "MAX_EVENT_BYTES",
    "Event",
    "EventError",
    "Rejected",
    "encode_event",
    "event_json_schema",
    "parse_batch",
    "parse_event",
    "validate_event",
]
