"""Batches whose decisions are on their way to the broker, and which offsets may be committed.

The stream door pipelines: while the broker acknowledges batch n's decisions, batch n+1 is
being scored and n+2 consumed. Offsets must still be committed strictly in consumption
order, and only up to the last batch whose decisions are *all* acknowledged and whose alerts
are in the outbox, together with every batch before it: committing batch n+1 while n is
unacknowledged would lose n's decisions in a crash. Acknowledgements arrive in any order
(different partitions, different broker batches), so each batch counts its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from confluent_kafka import KafkaError, Message


class DeliveryError(RuntimeError):
    """Decisions of a batch were refused by the broker; its offsets must not be committed."""


class InFlightBatch:
    """One consumed batch: the offsets committing it means, and its outstanding acks."""

    __slots__ = ("commit_to", "emitted", "failed", "pending", "seq")

    def __init__(self, seq: int, commit_to: dict[int, int]) -> None:
        self.seq = seq
        self.commit_to = commit_to
        self.pending = 0
        self.failed: list[str] = []
        self.emitted = False
        """All decisions handed to the producer and alerts to the outbox."""

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        """The producer's delivery callback for this batch's decisions and dead letters."""
        self.pending -= 1
        if err is not None:
            self.failed.append(err.str())

    @property
    def durable(self) -> bool:
        """Every output of the batch is acknowledged (or it had none)."""
        return self.emitted and self.pending == 0


class InFlightBatches:
    """Batches in consumption order; `take_durable` hands out what may be committed."""

    def __init__(self) -> None:
        self._batches: deque[InFlightBatch] = deque()
        self._seq = 0

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, commit_to: dict[int, int]) -> InFlightBatch:
        """Register the next consumed batch (call in consumption order)."""
        batch = InFlightBatch(self._seq, dict(commit_to))
        self._seq += 1
        self._batches.append(batch)
        return batch

    def take_durable(self) -> dict[int, int]:
        """Offsets (partition -> next offset) of the durable prefix, removed from the queue.

        Raises DeliveryError when the next batch had a refused decision: nothing of it or after
        it may be committed, and the service must stop (a restart re-delivers). The durable
        batches before it are handed out first.
        """
        offsets: dict[int, int] = {}
        while self._batches:
            head = self._batches[0]
            if head.failed and offsets:
                break  # commit the good prefix now; the next call raises
            if head.failed:
                raise DeliveryError(
                    f"{len(head.failed)} decisions of batch {head.seq} were refused by the "
                    f"broker (first: {head.failed[0]}); not committing"
                )
            if not head.durable:
                break
            self._batches.popleft()
            for partition, offset in head.commit_to.items():
                offsets[partition] = max(offset, offsets.get(partition, 0))
        return offsets

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Partitions this member no longer owns: their offsets are not ours to commit (the
        new owner re-reads from the last commit; decisions already sent become duplicates,
        which consumers of `scores` tolerate)."""
        gone = set(partitions)
        for batch in self._batches:
            for p in gone:
                batch.commit_to.pop(p, None)
