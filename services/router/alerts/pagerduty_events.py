"""The PagerDuty Events API v2 contract: limits, enums and validation of an event.

Written down once and used by both sides we own: the sink builds events within these
limits, and the local receiver refuses events outside them with the 400 answer PagerDuty
gives (`{"status": "invalid event", "message": ..., "errors": [...]}`), so that a sink
bug shows up in tests rather than in production.

Reference: POST https://events.pagerduty.com/v2/enqueue; 202 on success, 400 for invalid
events, 429 when throttled (retry later), 5xx (retry).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

EVENT_ACTIONS: Final = frozenset({"trigger", "acknowledge", "resolve"})
SEVERITIES: Final = ("critical", "error", "warning", "info")
ROUTING_KEY_LENGTH: Final = 32
DEDUP_KEY_MAX: Final = 255
SUMMARY_MAX: Final = 1024
_OPTIONAL_PAYLOAD_STRINGS: Final = ("component", "group", "class")


def _text(value: object) -> str | None:
    """`value` if it is a non-blank string, else None."""
    return value if isinstance(value, str) and value.strip() else None


def _payload_errors(payload: object) -> list[str]:
    if not isinstance(payload, dict):
        return ["'payload' is missing or not an object (required for trigger events)"]
    errors: list[str] = []
    summary = _text(payload.get("summary"))
    if summary is None:
        errors.append("'payload.summary' is missing or blank")
    elif len(summary) > SUMMARY_MAX:
        errors.append(f"'payload.summary' is longer than {SUMMARY_MAX} characters")
    if _text(payload.get("source")) is None:
        errors.append("'payload.source' is missing or blank")
    severity = payload.get("severity")
    if severity not in SEVERITIES:
        errors.append(
            f"'payload.severity' is invalid ({severity!r}); must be one of {', '.join(SEVERITIES)}"
        )
    timestamp = payload.get("timestamp")
    if timestamp is not None:
        try:
            datetime.fromisoformat(str(timestamp))
        except ValueError:
            errors.append(f"'payload.timestamp' is not an ISO 8601 time ({timestamp!r})")
    for name in _OPTIONAL_PAYLOAD_STRINGS:
        if name in payload and not isinstance(payload[name], str):
            errors.append(f"'payload.{name}' must be a string")
    details = payload.get("custom_details")
    if details is not None and not isinstance(details, dict | str):
        errors.append("'payload.custom_details' must be an object or a string")
    return errors


def _list_errors(event: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    for name, required in (("links", "href"), ("images", "src")):
        items = event.get(name)
        if items is None:
            continue
        if not isinstance(items, list) or not all(
            isinstance(item, dict) and _text(item.get(required)) for item in items
        ):
            errors.append(f"'{name}' must be a list of objects with '{required}'")
    return errors


def validate_event(event: object) -> list[str]:
    """Every problem of an Events API v2 event; empty when PagerDuty would accept it."""
    if not isinstance(event, dict):
        return ["Event object is not a JSON object"]
    errors: list[str] = []
    routing_key = _text(event.get("routing_key"))
    if routing_key is None:
        errors.append("'routing_key' is missing or blank")
    elif len(routing_key) != ROUTING_KEY_LENGTH:
        errors.append(f"'routing_key' must be {ROUTING_KEY_LENGTH} characters")
    action = event.get("event_action")
    if action not in EVENT_ACTIONS:
        errors.append(
            f"'event_action' is invalid ({action!r}); must be trigger, acknowledge or resolve"
        )
    dedup_key = event.get("dedup_key")
    if dedup_key is not None and not isinstance(dedup_key, str):
        errors.append("'dedup_key' must be a string")
    elif isinstance(dedup_key, str) and len(dedup_key) > DEDUP_KEY_MAX:
        errors.append(f"'dedup_key' is longer than {DEDUP_KEY_MAX} characters")
    if action in ("acknowledge", "resolve") and _text(dedup_key) is None:
        errors.append(f"'dedup_key' is required for {action} events")
    if action == "trigger":
        errors.extend(_payload_errors(event.get("payload")))
    errors.extend(_list_errors(event))
    return errors
