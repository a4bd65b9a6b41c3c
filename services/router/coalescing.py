"""Concurrent door requests coalesced into one call: one online-store read, one set of model
calls for every request that is waiting, instead of one per request.

Measured on the 2-core machine (loadtest/bench_router.py): a single-event request costs the
router ~0.3 ms of CPU in the three V2 gRPC calls alone (grpc.aio's per-call cost) and the model
server about as much again, so one call set per request saturates both at a few hundred
requests/s, and the queue then grows without bound. Requests that arrive together share the
work instead; a request that finds the door idle goes at once, without any batching delay
(there is no timer: what waits is only what arrives while `max_concurrent` calls are already
in flight, and it leaves as soon as one of them returns). As with the model servers' batcher:
the number of items per call is bounded, the call must give one result per item, and an
exception reaches every request of the call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _future() -> asyncio.Future[R]:
    return asyncio.get_running_loop().create_future()


@dataclass(slots=True)
class _Waiting(Generic[T, R]):
    item: T
    size: int
    future: asyncio.Future[R] = field(default_factory=_future)


class Coalescer(Generic[T, R]):
    """`submit(item)` -> `run([items...])[k]`, with the items of concurrent submits merged.

    `size(item)` is what `max_size` bounds (rows); an item larger than `max_size` runs alone.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[Sequence[R]]],
        size: Callable[[T], int],
        *,
        max_size: int,
        max_concurrent: int,
    ) -> None:
        if max_size < 1 or max_concurrent < 1:
            raise ValueError("max_size and max_concurrent must be >= 1")
        self._run = run
        self._size = size
        self.max_size = max_size
        self.max_concurrent = max_concurrent
        self._waiting: list[_Waiting[T, R]] = []
        self._in_flight = 0
        self.calls = 0
        """Calls made so far (each serves one or more submits)."""

    async def submit(self, item: T) -> R:
        """This item's result, from a call shared with whatever else is waiting."""
        waiting: _Waiting[T, R] = _Waiting(item, self._size(item))
        self._waiting.append(waiting)
        if self._in_flight < self.max_concurrent:
            self._in_flight += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await waiting.future

    def _take(self) -> list[_Waiting[T, R]]:
        taken = [self._waiting[0]]
        total = taken[0].size
        for w in self._waiting[1:]:
            if total + w.size > self.max_size:
                break
            taken.append(w)
            total += w.size
        del self._waiting[: len(taken)]
        return taken

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group = self._take()
                self.calls += 1
                try:
                    results = await self._run([w.item for w in group])
                    if len(results) != len(group):
                        raise RuntimeError(
                            f"coalesced call gave {len(results)} results for {len(group)} items"
                        )
                except asyncio.CancelledError:
                    for w in group:
                        w.future.cancel()
                    raise
                except Exception as exc:  # every request of the call gets the error
                    for w in group:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    continue
                for w, result in zip(group, results, strict=True):
                    if not w.future.done():
                        w.future.set_result(result)
        finally:
            self._in_flight -= 1
