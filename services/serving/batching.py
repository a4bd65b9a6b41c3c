"""Dynamic batching: concurrent requests coalesced into one model call.

A model call costs a fixed overhead plus a per-row cost, and the fixed part dominates small
requests (an Isolation Forest scores 215 rows/s one at a time and 112,000 rows/s in batches
of 1,024 on one core). Requests that arrive together are therefore concatenated, up to
`max_rows` rows or `max_delay_s` of waiting, scored once in a worker thread (the runtimes
release the GIL, and the event loop keeps serving health probes), and split back. As in Ray's
`_BatchQueue` and MLServer's adaptive batcher: both bounds are enforced, the result must have
one row per input row, and an exception reaches every waiting caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

R = TypeVar("R")
Rows = npt.NDArray[np.float32]


@dataclass
class _Pending:
    rows: Rows
    future: asyncio.Future[object]
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher(Generic[R]):
    """Coalesces `submit(rows)` calls into `run(batch)` calls; `split` cuts results back.

    `run` takes the concatenated rows and returns one result for the whole batch;
    `split(result, start, stop)` returns the part of a result for rows [start, stop).
    """

    def __init__(
        self,
        run: Callable[[Rows], R],
        split: Callable[[R, int, int], R],
        *,
        max_rows: int,
        max_delay_s: float,
        on_batch: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self._run = run
        self._split = split
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")

    async def submit(self, rows: Rows) -> R:
        """Score `rows` as part of a batch; returns this request's part of the result."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._loop())
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(rows, future))
        result = await future
        return result  # type: ignore[return-value]

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            batch = [first]
            rows = len(first.rows)
            deadline = loop.time() + self.max_delay_s
            while rows < self.max_rows:
                timeout = deadline - loop.time()
                try:
                    item = (
                        self._queue.get_nowait()
                        if timeout <= 0 or not self._queue.empty()
                        else await asyncio.wait_for(self._queue.get(), timeout)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                if rows + len(item.rows) > self.max_rows:
                    carry = item  # would overflow: it opens the next batch
                    break
                batch.append(item)
                rows += len(item.rows)
            await self._execute(batch, rows)

    async def _execute(self, batch: list[_Pending], rows: int) -> None:
        loop = asyncio.get_running_loop()
        x = batch[0].rows if len(batch) == 1 else np.concatenate([p.rows for p in batch])
        started = time.perf_counter()
        try:
            result = await loop.run_in_executor(self._executor, self._run, x)
        except Exception as exc:  # every waiting caller gets the error
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(batch), rows, time.perf_counter() - started)
        start = 0
        for p in batch:
            stop = start + len(p.rows)
            if not p.future.done():
                p.future.set_result(self._split(result, start, stop))
            start = stop

    async def close(self) -> None:
        """Stop the batching task and the worker thread."""
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False)
