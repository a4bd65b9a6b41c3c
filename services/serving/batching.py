"""Dynamic batching: concurrent requests coalesced into one model call.

A model call costs a fixed overhead plus a per-row cost, and the fixed part dominates small
requests (XGBoost's ONNX export: 58 us for one row, 10 ms for 1,024, on one core; through the
server, a single-row call costs ~1.5-2.5 ms of server CPU, nearly all of it fixed).
Requests that arrive together are therefore concatenated, up to `max_rows` rows, scored once,
and split back. As in Ray's `_BatchQueue` and MLServer's adaptive batcher: the size bound is
enforced, the result must have one row per input row, and an exception reaches every
waiting caller.

How long a batch waits for company is where latency is won or lost. A fixed window (Ray's
`batch_wait_timeout_s`, Triton's queue delay) charges every lone request the whole window,
2 ms of a 5 ms budget, even where no company can come (one client sending one request at a
time waits 2 ms for nothing, every time). Without a window, requests that arrive together at
1,000 requests/s each pay a model call, a wake-up and a reply of their own: measured here,
the fixed window served 1,000 single rows/s with ~25% less server CPU and a far lower p99.
So the batcher waits the window only when company is likely: when recent requests arrived
while another request of this batcher was still in flight (`overlap`, a running fraction).
A request that arrives while the model is busy goes with the others that queued meanwhile.

Calls that recently took less than `inline_max_s` (0.5 ms) of CPU run on the event loop:
handing 70 us of work to a thread costs ~25 us of CPU, two thread wake-ups, which on a busy
machine wait for a core, and the GIL, which the busy event loop hands over only every 5 ms
(`sys.getswitchinterval()`). Longer calls run in a worker thread (the runtimes release the GIL,
and the event loop keeps serving health probes: KServe itself calls sync `predict` inline and
blocks the loop, kserve#3950). The loop is never blocked longer than `inline_max_s` by a
call whose size has been seen before; a size never seen goes to the thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

R = TypeVar("R")
Rows = npt.NDArray[np.float32]

DEFAULT_INLINE_MAX_S = 0.0005
"""Calls that recently took less than this run on the event loop (no thread hand-off)."""
_SMOOTHING = 0.2
"""Weight of the newest call in the running estimate of a batch size's call time."""
OVERLAP_TO_WAIT = 0.5
"""Wait for company once at least this fraction of recent arrivals found another request in
flight: below it, most requests are alone and the window would only add latency."""
_OVERLAP_SMOOTHING = 0.05
"""Weight of the newest arrival in the running overlap fraction (~20 arrivals of memory)."""


@dataclass(slots=True)
class _Pending:
    rows: Rows
    future: asyncio.Future[object]
    enqueued: float
    """`loop.time()` when the request joined the queue."""


class CallTimes:
    """Running estimate of a model call's CPU time, per batch-size class (powers of 2).

    Call time grows with rows (XGBoost: 70 us for 1 row, ~2 ms for 1,024), so one average
    would mislead both the wait and the inline decision; a class per power of two is enough.
    """

    def __init__(self) -> None:
        self._seconds: dict[int, float] = {}

    @staticmethod
    def _size_class(rows: int) -> int:
        return max(rows, 1).bit_length()

    def estimate(self, rows: int) -> float | None:
        """Recent call time for batches of about `rows` rows; None if never seen."""
        return self._seconds.get(self._size_class(rows))

    def observe(self, rows: int, seconds: float) -> None:
        """Fold one measured call into the estimate."""
        key = self._size_class(rows)
        previous = self._seconds.get(key)
        self._seconds[key] = (
            seconds if previous is None else previous + _SMOOTHING * (seconds - previous)
        )


class DynamicBatcher(Generic[R]):
    """Coalesces `submit(rows)` calls into `run(batch)` calls; `split` cuts results back.

    `run` takes the concatenated rows and returns one result for the whole batch;
    `split(result, start, stop)` returns the part of a result for rows [start, stop).
    `on_batch(requests, rows, seconds)` is told about every call (for metrics).
    """

    def __init__(
        self,
        run: Callable[[Rows], R],
        split: Callable[[R, int, int], R],
        *,
        max_rows: int,
        max_delay_s: float,
        inline_max_s: float = DEFAULT_INLINE_MAX_S,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        if max_delay_s < 0 or inline_max_s < 0:
            raise ValueError("max_delay_s and inline_max_s must not be negative")
        self._run = run
        self._split = split
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.inline_max_s = inline_max_s
        self.call_times = CallTimes()
        self._on_batch = on_batch
        self.overlap = 0.0
        """Running fraction of arrivals that found another request in flight."""
        self._in_flight = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")

    async def submit(self, rows: Rows) -> R:
        """Score `rows` as part of a batch; returns this request's part of the result."""
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._loop())
        future: asyncio.Future[object] = loop.create_future()
        company = 1.0 if self._in_flight else 0.0
        self.overlap += _OVERLAP_SMOOTHING * (company - self.overlap)
        self._in_flight += 1
        try:
            self._queue.put_nowait(_Pending(rows, future, loop.time()))
            result = await future
        finally:
            self._in_flight -= 1
        return result  # type: ignore[return-value]

    def wait_for_company(self, first: _Pending) -> float:
        """Until when (loop time) a batch opened by `first` may wait for more requests."""
        if self.overlap < OVERLAP_TO_WAIT:
            return first.enqueued
        return first.enqueued + self.max_delay_s

    async def _loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            first = carry or await queue.get()
            carry = None
            batch = [first]
            rows = len(first.rows)
            deadline = self.wait_for_company(first)
            while rows < self.max_rows:
                if queue.empty():
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), timeout)
                    except TimeoutError:
                        break
                else:
                    item = queue.get_nowait()
                if rows + len(item.rows) > self.max_rows:
                    carry = item  # would overflow: it opens the next batch
                    break
                batch.append(item)
                rows += len(item.rows)
            try:
                await self._execute(batch, rows)
            except asyncio.CancelledError:
                _fail(batch, BatcherClosed())
                raise
            except Exception as exc:
                # A bug outside the model call (splitting, metrics, concatenation) would
                # otherwise end this task: this batch and every later request of the
                # version would wait forever while the model still reports ready.
                log.exception("batch of %d requests failed outside the model call", len(batch))
                _fail(batch, exc)

    def _timed(self, x: Rows) -> tuple[R, float, float]:
        """The result, the call's wall time and its CPU time on the calling thread.

        The estimate must be the CPU time: in the worker thread, the wall time includes
        waiting for the GIL while the event loop holds it (up to the 5 ms switch interval),
        which would make every quick call look slow and keep it off the event loop.
        """
        started, cpu = time.perf_counter(), time.thread_time()
        result = self._run(x)
        return result, time.perf_counter() - started, time.thread_time() - cpu

    async def _execute(self, batch: list[_Pending], rows: int) -> None:
        x = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
        estimate = self.call_times.estimate(rows)
        try:
            if estimate is not None and estimate < self.inline_max_s:
                result, seconds, cpu_seconds = self._timed(x)
            else:
                loop = asyncio.get_running_loop()
                result, seconds, cpu_seconds = await loop.run_in_executor(
                    self._executor, self._timed, x
                )
        except Exception as exc:  # every waiting caller gets the error
            _fail(batch, exc)
            return
        self.call_times.observe(rows, cpu_seconds)
        if self._on_batch is not None:
            self._on_batch(len(batch), rows, seconds)
        start = 0
        for p in batch:
            stop = start + len(p.rows)
            if not p.future.done():
                p.future.set_result(self._split(result, start, stop))
            start = stop

    async def close(self) -> None:
        """Stop the batching task and the worker thread; requests still queued get
        `BatcherClosed` (the batch being scored gets it from the cancelled task)."""
        if self._worker is not None:
            self._worker.cancel()
        if self._queue is not None:
            queued = []
            while not self._queue.empty():
                queued.append(self._queue.get_nowait())
            _fail(queued, BatcherClosed())
        self._executor.shutdown(wait=False)


class BatcherClosed(RuntimeError):
    """The batcher stopped before this request was scored."""

    def __init__(self) -> None:
        super().__init__("the model's batcher was stopped")


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
