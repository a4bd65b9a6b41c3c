"""The columnar batch parser gives the same verdicts, reasons and columns as the per-event path."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest

from services.common.events import parse_batch
from services.common.events.columnar import parse_columns
from services.common.features.columns import (
    EventColumns,
    columns_from_events,
    columns_from_parsed,
)
from services.generator import generate_batch
from services.generator.spec import StreamSpec
from tests.unit.test_events import BAD_CASES, METRIC, PAYMENT, TRADE, mutated_events, with_

_ARRAYS = ("partition", "offset", "ts", "amount", "quantity", "spread", "counterparty", "country")


def reference(raws: list[bytes]) -> tuple[EventColumns, list[tuple[int, str, str | None]]]:
    """What the per-event path (orjson + validator + dict columns) makes of a batch."""
    events, positions, rejected = parse_batch(raws)
    offsets = list(range(len(raws)))
    cols = columns_from_events(events, [p % 4 for p in positions], [offsets[p] for p in positions])
    return cols, [(r.index, r.reason, r.field) for r in rejected]


def columnar(raws: list[bytes]) -> tuple[EventColumns, list[tuple[int, str, str | None]]]:
    parsed = parse_columns(raws)
    index = np.arange(len(raws))
    cols = columns_from_parsed(parsed, index % 4, index)
    assert [r.raw for r in parsed.rejected] == [raws[r.index] for r in parsed.rejected]
    return cols, [(r.index, r.reason, r.field) for r in parsed.rejected]


def assert_same(raws: list[bytes]) -> None:
    want, want_rejected = reference(raws)
    got, got_rejected = columnar(raws)
    assert got_rejected == want_rejected
    assert got.event_ids == want.event_ids
    assert got.entity_ids == want.entity_ids
    for name in _ARRAYS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype, name
        assert np.array_equal(a, b, equal_nan=True), name


def test_generated_stream_parses_to_identical_columns() -> None:
    values = generate_batch(StreamSpec(rate=50_000), 12_000).values
    for start in range(0, len(values), 5_000):
        assert_same(values[start : start + 5_000])


@pytest.mark.parametrize(
    ("case", "raw", "field", "reason"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_every_bad_case_among_good_events_is_rejected_with_the_same_reason(
    case: str, raw: bytes, field: str | None, reason: str
) -> None:
    good = [orjson.dumps(with_(TRADE, event_id=f"t-{i}")) for i in range(100)]
    raws = [*good[:40], raw, *good[40:], raw]
    assert_same(raws)
    _, rejected = columnar(raws)
    assert [i for i, _, _ in rejected] == [40, 101]
    assert all(reason in r and f == field for _, r, f in rejected)


RAW_EDGE_CASES: list[bytes] = [
    b'{"event_id":"d","entity_id":"a","entity_id":"b","ts":1767571200000,'
    b'"kind":"trade","amount":2}',  # duplicate key: orjson keeps the last
    b"\xef\xbb\xbf" + orjson.dumps(TRADE),  # byte-order mark
    b"  " + orjson.dumps(PAYMENT) + b" ",  # surrounding whitespace is JSON
    orjson.dumps(TRADE) + b"\n" + orjson.dumps(PAYMENT),  # two objects in one message
    orjson.dumps(TRADE, option=orjson.OPT_INDENT_2),  # pretty-printed, line breaks inside
    orjson.dumps(with_(TRADE, counterparty="null-bank")),  # the token inside a string
    orjson.dumps(with_(TRADE, counterparty=None)),  # an explicit null
    orjson.dumps(with_(TRADE, instrument="Zürich-é", entity_id="ä" * 128)),  # non-ASCII
    orjson.dumps(with_(TRADE, entity_id="ä" * 129)),  # 129 characters, 258 bytes
    b'{"event_id":"u","entity_id":"\xff","ts":1767571200000,"kind":"trade","amount":2}',
    orjson.dumps(TRADE).replace(b"101.25", b"NaN"),
    orjson.dumps(TRADE).replace(b"101.25", b"1e400"),
    orjson.dumps(TRADE).replace(b"101.25", b"-0.0"),
    orjson.dumps(TRADE).replace(b"1767571200000", b"1.7675712e12"),  # integral float ts
    orjson.dumps(TRADE).replace(b"1767571200000", b"99999999999999999999999"),
    orjson.dumps(with_(TRADE, quantity=0, spread_bps=0)),
    orjson.dumps(with_(TRADE, country="DE\n")),
    orjson.dumps(with_(PAYMENT, value=1.0)),  # a metric field on a transaction
    orjson.dumps(METRIC),
    orjson.dumps(with_(METRIC, event_id="m-1", value=-3)),
    orjson.dumps(with_(METRIC, amount=1.0)),
    b"[1, 2]",
    b'"just a string"',
    b"{}",
    b"",
    b"{" + b" " * 5000 + b"}",
]


def test_raw_edge_cases_get_the_per_event_verdict_in_place() -> None:
    good = [orjson.dumps(with_(PAYMENT, event_id=f"p-{i}")) for i in range(50)]
    raws: list[bytes] = []
    for i, raw in enumerate(RAW_EDGE_CASES):
        raws += [*good[i % 7 : i % 7 + 3], raw]
    assert_same(raws)


def test_each_edge_case_alone() -> None:
    for raw in RAW_EDGE_CASES:
        assert_same([raw])


def test_one_bad_event_in_a_large_batch_keeps_order_and_everything_else() -> None:
    values = generate_batch(StreamSpec(rate=50_000), 4_000).values
    raws = [*values[:2_345], orjson.dumps(with_(TRADE, amount="12")), *values[2_345:]]
    assert_same(raws)
    parsed = parse_columns(raws)
    assert len(parsed) == 4_000 and [r.index for r in parsed.rejected] == [2_345]


def test_mutated_events_in_batches_agree_with_the_per_event_path() -> None:
    templates = [TRADE, PAYMENT, METRIC]
    objs = mutated_events(random.Random(3), templates, 6_000, share_mutated=0.5)
    raws = [orjson.dumps(obj) for obj in objs]
    for start in range(0, len(raws), 1_000):
        assert_same(raws[start : start + 1_000])
