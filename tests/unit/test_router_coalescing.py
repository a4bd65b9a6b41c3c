"""Coalescing of concurrent door requests: a lone request goes at once; what arrives while
calls are in flight shares the next call; bounds and errors as the model servers' batcher."""

from __future__ import annotations

import asyncio

import pytest

from services.router.coalescing import Coalescer


class Calls:
    """A `run` whose calls are held at a gate, so the test decides when they return."""

    def __init__(self) -> None:
        self.groups: list[list[list[int]]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def run(self, items: list[list[int]]) -> list[int]:
        self.groups.append(items)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [sum(item) for item in items]


def test_a_lone_request_is_not_held_back() -> None:
    async def scenario() -> tuple[int, list[list[list[int]]]]:
        calls = Calls()
        calls.gate.set()
        coalescer = Coalescer(calls.run, len, max_size=100, max_concurrent=1)
        result = await asyncio.wait_for(coalescer.submit([1, 2, 3]), 1.0)
        return result, calls.groups

    result, groups = asyncio.run(scenario())
    assert result == 6 and groups == [[[1, 2, 3]]]


def test_requests_arriving_during_a_call_share_the_next_one_in_order() -> None:
    async def scenario() -> tuple[list[int], list[list[list[int]]], int]:
        calls = Calls()
        coalescer = Coalescer(calls.run, len, max_size=100, max_concurrent=1)
        first = asyncio.ensure_future(coalescer.submit([1]))
        await asyncio.sleep(0.01)  # the first call is in flight, held at the gate
        later = [asyncio.ensure_future(coalescer.submit([i, i])) for i in (2, 3, 4)]
        await asyncio.sleep(0.01)
        assert len(calls.groups) == 1, "nothing may start while the only call is in flight"
        calls.gate.set()
        results = await asyncio.gather(first, *later)
        return results, calls.groups, coalescer.calls

    results, groups, n_calls = asyncio.run(scenario())
    assert results == [1, 4, 6, 8]
    assert groups == [[[1]], [[2, 2], [3, 3], [4, 4]]] and n_calls == 2


def test_max_concurrent_calls_start_without_waiting_and_size_is_bounded() -> None:
    async def scenario() -> list[list[list[int]]]:
        calls = Calls()
        coalescer = Coalescer(calls.run, len, max_size=3, max_concurrent=2)
        a = asyncio.ensure_future(coalescer.submit([1]))
        await asyncio.sleep(0.01)
        b = asyncio.ensure_future(coalescer.submit([2]))
        await asyncio.sleep(0.01)
        assert len(calls.groups) == 2, "a second call starts while the first is in flight"
        rest = [asyncio.ensure_future(coalescer.submit([9, 9])) for _ in range(3)]
        big = asyncio.ensure_future(coalescer.submit([5] * 7))  # larger than max_size: alone
        calls.gate.set()
        await asyncio.gather(a, b, *rest, big)
        return calls.groups

    groups = asyncio.run(scenario())
    assert all(sum(len(i) for i in g) <= 3 or len(g) == 1 for g in groups)
    assert sorted(len(g) for g in groups) == [1, 1, 1, 1, 1, 1]


def test_an_error_reaches_every_request_of_the_call_and_later_calls_still_run() -> None:
    async def scenario() -> tuple[list[BaseException | int], int]:
        calls = Calls()
        coalescer = Coalescer(calls.run, len, max_size=100, max_concurrent=1)
        first = asyncio.ensure_future(coalescer.submit([1]))
        await asyncio.sleep(0.01)
        group = [asyncio.ensure_future(coalescer.submit([i])) for i in (2, 3)]
        calls.fail = RuntimeError("store down")
        calls.gate.set()
        failed = await asyncio.gather(first, *group, return_exceptions=True)
        calls.fail = None
        after = await coalescer.submit([7])
        return [*failed, after], coalescer.calls

    outcomes, n_calls = asyncio.run(scenario())
    assert [str(o) for o in outcomes[:3]] == ["store down"] * 3
    assert outcomes[3] == 7 and n_calls == 3


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        Coalescer(Calls().run, len, max_size=0, max_concurrent=1)
