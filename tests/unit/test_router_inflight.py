"""Commit order of the pipelined stream door: only the durable prefix, strictly in order."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from services.router.inflight import DeliveryError, InFlightBatch, InFlightBatches


def emitted(batches: InFlightBatches, commit_to: dict[int, int], outputs: int) -> InFlightBatch:
    batch = batches.add(commit_to)
    batch.pending += outputs
    batch.emitted = True
    return batch


def ack(batch: InFlightBatch, n: int, err: KafkaError | None = None) -> None:
    for _ in range(n):
        batch.on_delivery(err, None)  # type: ignore[arg-type]


def test_a_later_batch_acknowledged_first_waits_for_the_earlier_one() -> None:
    q = InFlightBatches()
    first = emitted(q, {0: 10, 1: 5}, outputs=3)
    second = emitted(q, {0: 20}, outputs=2)
    ack(second, 2)
    assert q.take_durable() == {}, "committing batch 2 now would lose batch 1 in a crash"
    ack(first, 2)
    assert q.take_durable() == {}, "one decision of batch 1 is still unacknowledged"
    ack(first, 1)
    assert q.take_durable() == {0: 20, 1: 5}  # both, merged per partition
    assert len(q) == 0


def test_a_batch_still_being_scored_holds_back_every_later_one() -> None:
    q = InFlightBatches()
    scoring = q.add({2: 7})  # consumed, not yet produced: nothing pending, not emitted
    later = emitted(q, {3: 9}, outputs=1)
    ack(later, 1)
    assert q.take_durable() == {}
    scoring.emitted = True
    assert q.take_durable() == {2: 7, 3: 9}


def test_commits_stop_at_the_first_unacknowledged_batch() -> None:
    q = InFlightBatches()
    batches = [emitted(q, {0: 100 * (i + 1)}, outputs=1) for i in range(4)]
    ack(batches[0], 1)
    ack(batches[1], 1)
    ack(batches[3], 1)
    assert q.take_durable() == {0: 200}
    assert len(q) == 2
    ack(batches[2], 1)
    assert q.take_durable() == {0: 400}


def test_a_refused_decision_stops_all_commits() -> None:
    q = InFlightBatches()
    ok = emitted(q, {0: 1}, outputs=1)
    bad = emitted(q, {0: 2}, outputs=1)
    ack(ok, 1)
    ack(bad, 1, KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert q.take_durable() == {0: 1}
    with pytest.raises(DeliveryError, match="refused by the broker"):
        q.take_durable()


def test_revoked_partitions_are_not_committed_by_the_old_owner() -> None:
    q = InFlightBatches()
    batch = emitted(q, {0: 10, 1: 20}, outputs=0)
    q.drop_partitions([1])
    assert batch.durable
    assert q.take_durable() == {0: 10}
