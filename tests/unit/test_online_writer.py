"""The coalescing online writer: newest row per entity, bounded busy time, flush on demand."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry

from services.ingest.metrics import IngestMetrics
from services.ingest.online_writer import CoalescingOnlineWriter, OnlineWriteError


class TimedSink:
    """An online store whose every write takes `seconds`; remembers what it was given."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.starts: list[float] = []
        self.rows: dict[str, tuple[int, float]] = {}
        self.lock = threading.Lock()

    def write_latest(
        self,
        entity_ids: Sequence[str],
        event_ts_ms: npt.NDArray[np.int64],
        matrix: npt.NDArray[np.float32],
    ) -> None:
        self.starts.append(time.monotonic())
        time.sleep(self.seconds)
        with self.lock:
            for entity, ts, row in zip(entity_ids, event_ts_ms.tolist(), matrix, strict=True):
                self.rows[entity] = (ts, float(row[0]))


def writer(sink: TimedSink, **kwargs: float) -> CoalescingOnlineWriter:
    return CoalescingOnlineWriter(sink, IngestMetrics(CollectorRegistry()), **kwargs)


def test_writes_are_spaced_by_the_busy_fraction_and_keep_the_newest_rows() -> None:
    sink = TimedSink(0.2)
    w = writer(sink, min_interval_s=0.0, max_busy_fraction=0.25)
    try:
        deadline = time.monotonic() + 2.5
        seq = 0
        while time.monotonic() < deadline:
            ts = np.array([seq, seq], dtype=np.int64)
            w.add(seq, ["a", "b"], ts, np.array([[seq], [seq]], dtype=np.float32))
            seq += 1
            time.sleep(0.005)
        w.flush()
    finally:
        w.close()
    gaps = np.diff(sink.starts[:-1])  # the last write was the flush
    assert len(gaps) >= 1
    # 0.2 s writing, then at least 3 x 0.2 s idle: starts at least 0.8 s apart.
    assert gaps.min() >= 0.75, gaps
    assert sink.rows == {"a": (seq - 1, float(seq - 1)), "b": (seq - 1, float(seq - 1))}
    assert w.durable_seq == seq - 1


def test_flush_writes_at_once_whatever_the_interval() -> None:
    sink = TimedSink(0.0)
    w = writer(sink, min_interval_s=30.0)
    try:
        w.add(0, ["a"], np.array([5], np.int64), np.ones((1, 1), np.float32))
        w.flush(timeout_s=5)  # written now, not 30 s from now
        started = time.monotonic()
        w.add(1, ["a"], np.array([6], np.int64), np.ones((1, 1), np.float32))
        assert w.flush(timeout_s=5) == 1
        assert time.monotonic() - started < 5
    finally:
        w.close()
    assert sink.rows["a"] == (6, 1.0)


@pytest.mark.parametrize("use_groups", [False, True])
def test_newest_event_time_wins_ties_go_to_the_later_row(use_groups: bool) -> None:
    sink = TimedSink(0.0)
    w = writer(sink, min_interval_s=30.0)
    entities = ["a", "b", "a", "c", "b", "a", "c"]
    ts = np.array([5, 9, 7, 1, 9, 6, 0], dtype=np.int64)
    rows = np.arange(7, dtype=np.float32).reshape(7, 1)
    groups = np.array([10, 11, 10, 12, 11, 10, 12], dtype=np.int64)
    try:
        w.add(0, entities, ts, rows, take=np.arange(7), groups=groups if use_groups else None)
        w.add(1, ["c"], np.array([1], np.int64), np.full((1, 1), 70, np.float32))
        w.flush(timeout_s=5)
    finally:
        w.close()
    # a: ts 7 (row 2) beats the later but older row 5; b: tie at 9, row 4 is later;
    # c: batch 1's row at ts 1 ties with row 3 and, coming later, wins.
    assert sink.rows == {"a": (7, 2.0), "b": (9, 4.0), "c": (1, 70.0)}


def test_busy_fraction_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="max_busy_fraction"):
        writer(TimedSink(0.0), max_busy_fraction=0.0)


class FlakySink(TimedSink):
    """An online store that refuses its first `failures` writes (a Redis restart)."""

    def __init__(self, failures: int) -> None:
        super().__init__(0.0)
        self.failures = failures
        self.refused = threading.Event()

    def write_latest(
        self,
        entity_ids: Sequence[str],
        event_ts_ms: npt.NDArray[np.int64],
        matrix: npt.NDArray[np.float32],
    ) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.refused.set()
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        super().write_latest(entity_ids, event_ts_ms, matrix)


def _row(value: float) -> npt.NDArray[np.float32]:
    return np.array([[value]], dtype=np.float32)


def test_a_store_that_fails_for_a_while_is_retried_and_nothing_is_durable_meanwhile() -> None:
    sink = FlakySink(failures=3)
    metrics = IngestMetrics(CollectorRegistry())
    w = CoalescingOnlineWriter(sink, metrics, min_interval_s=0.0, retry_for_s=10.0)
    try:
        w.add(0, ["a", "b"], np.array([1, 1], np.int64), np.array([[1.0], [1.0]], np.float32))
        assert sink.refused.wait(5)
        assert w.durable_seq == -1  # the failed rows are not durable
        w.add(1, ["a"], np.array([2], np.int64), _row(2.0))  # newer than the failed one
        assert w.flush(timeout_s=10) == 1
    finally:
        w.close()
    assert sink.rows == {"a": (2, 2.0), "b": (1, 1.0)}
    assert metrics.online_write_retries._value.get() == 3


def test_a_store_still_failing_after_the_retry_window_stops_the_writer() -> None:
    sink = FlakySink(failures=1_000)
    w = writer(sink, min_interval_s=0.0, retry_for_s=0.3)
    try:
        w.add(0, ["a"], np.array([1], np.int64), _row(1.0))
        started = time.monotonic()
        with pytest.raises(OnlineWriteError, match="Connection refused"):
            w.flush(timeout_s=10)
        assert 0.3 <= time.monotonic() - started < 5
        with pytest.raises(OnlineWriteError):
            _ = w.durable_seq
    finally:
        w.close()
    assert sink.rows == {}
