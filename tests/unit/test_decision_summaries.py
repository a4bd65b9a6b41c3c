"""Monitors read `scores` through `decode_summaries`: the router's own fields, or a reason."""

from __future__ import annotations

import orjson
import pytest

from services.common.decision_summaries import DecisionSummary, decode_summaries
from services.router.decision_json import encode_decisions
from tests.unit.test_router_stream_encoding import GAPS, STRATEGIES, batch


@pytest.mark.parametrize("gaps", GAPS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_summaries_are_the_fields_of_the_routers_messages(strategy: str, gaps: str) -> None:
    scored = batch(strategy, seed=1, gaps=gaps)
    summaries, unreadable = decode_summaries(encode_decisions(scored))
    assert unreadable == []
    assert len(summaries) == len(scored)
    for i, summary in enumerate(summaries):
        record = scored.record(i)
        assert summary == DecisionSummary(
            event_id=record["event_id"],
            ts=record["ts"],
            decided_at=record["decided_at"],
            anomalous=record["anomalous"],
            alert=record["alert"],
            degraded=record["degraded"],
            anomaly_type=record["anomaly_type"],
        ), i


def test_undecodable_messages_are_reported_and_the_rest_kept() -> None:
    good = encode_decisions(batch("weighted", seed=2))[:3]
    record = orjson.loads(good[0])
    no_ts = orjson.dumps({k: v for k, v in record.items() if k != "ts"})
    text_ts = orjson.dumps({**record, "ts": "yesterday"})
    values = [good[0], b"not json", good[1], no_ts, text_ts, b"", good[2]]
    summaries, unreadable = decode_summaries(values)
    assert [s.event_id for s in summaries] == [orjson.loads(g)["event_id"] for g in good]
    assert len(unreadable) == 4
    assert "ts" in unreadable[1] and "ts" in unreadable[2]  # names the field at fault
