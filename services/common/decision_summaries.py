"""What readers of the `scores` topic take from a decision, without decoding all of it.

A `scores` message is ~550 bytes of JSON (every model's score and version, the explanation,
the top features). The main job's live summary and the end-to-end benchmark read every one
of them, on the same cores as the pipeline they watch, and need only a few fields: which
event, when it happened and was decided, whether it was flagged, alerted or degraded, and
its type. orjson builds the whole record as Python objects (11 µs a message on this
machine); msgspec decodes into a typed struct and skips the fields it is not asked for
(1.7 µs), so watching the pipeline no longer takes a large share of what it watches.

The full record is the router's `Decision` (`services/router/schemas.py`); a consumer that
needs more than this summary decodes the message as JSON itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class DecisionSummary(msgspec.Struct, frozen=True, gc=False):
    """The fields of a decision that monitors count and time (`gc=False`: no references to
    other objects, so the collector need not track millions of them)."""

    event_id: str
    ts: int
    """Event time, epoch milliseconds."""
    decided_at: int
    """When the router decided, epoch milliseconds."""
    anomalous: bool
    alert: bool
    degraded: bool
    anomaly_type: str | None = None


_DECODER = msgspec.json.Decoder(DecisionSummary)


def decode_summaries(values: Sequence[bytes]) -> tuple[list[DecisionSummary], list[str]]:
    """The summaries of the decodable messages, and a reason for each one that is not
    (not JSON, or a field missing or of the wrong type), for the caller to count and report.
    """
    decode = _DECODER.decode
    try:
        return [decode(v) for v in values], []
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    good: list[DecisionSummary] = []
    bad: list[str] = []
    for v in values:
        try:
            good.append(decode(v))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            bad.append(str(exc))
    return good, bad
