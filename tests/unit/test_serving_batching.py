"""DynamicBatcher: batches form while the model is busy, lone requests do not wait out a fixed
window, tiny calls run on the event loop, results and errors reach every caller.

Deterministic: a gate (threading.Event) holds the model call where an ordering matters.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import numpy.typing as npt
import pytest

from services.serving.batching import CallTimes, DynamicBatcher

Rows = npt.NDArray[np.float32]


class Model:
    """Doubles its input; records each call's row count and thread; can be held at a gate."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def run(self, x: Rows) -> Rows:
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        self.calls.append(len(x))
        self.threads.append(threading.current_thread().name)
        out: Rows = x[:, 0] * 2
        return out


def split(result: Rows, start: int, stop: int) -> Rows:
    return result[start:stop]


def rows(n: int, first: float = 0.0) -> Rows:
    return np.arange(first, first + n, dtype=np.float32).reshape(n, 1)


def batcher(
    model: Model,
    *,
    max_rows: int = 64,
    max_delay_s: float = 0.002,
    inline_max_s: float = 0.0002,
) -> DynamicBatcher[Rows]:
    return DynamicBatcher(
        model.run, split, max_rows=max_rows, max_delay_s=max_delay_s, inline_max_s=inline_max_s
    )


async def wait_entered(model: Model) -> None:
    while not model.entered.is_set():
        await asyncio.sleep(0.001)


def test_requests_that_arrive_while_the_model_is_busy_share_the_next_call() -> None:
    async def scenario() -> list[Rows]:
        model = Model()
        b = batcher(model)
        model.gate.clear()
        first = asyncio.create_task(b.submit(rows(1)))
        await wait_entered(model)  # the first call is running (held at the gate)
        others = [asyncio.create_task(b.submit(rows(1, first=10 + i))) for i in range(5)]
        await asyncio.sleep(0.01)  # all five are queued behind the running call
        model.gate.set()
        results = await asyncio.gather(first, *others)
        assert model.calls == [1, 5]
        await b.close()
        return results

    results = asyncio.run(scenario())
    assert [r.tolist() for r in results] == [[0.0], [20.0], [22.0], [24.0], [26.0], [28.0]]


def test_requests_one_at_a_time_never_wait_out_the_window() -> None:
    async def scenario() -> None:
        model = Model()
        b = batcher(model, max_delay_s=30.0)
        # With a fixed 30 s window each of these would time out.
        for i in range(5):
            got = await asyncio.wait_for(b.submit(rows(1, first=i)), timeout=5)
            assert got.tolist() == [2.0 * i]
        assert b.overlap == 0.0  # no request ever found another in flight
        await b.close()

    asyncio.run(scenario())


def test_overlapping_requests_make_the_batcher_wait_for_company() -> None:
    async def scenario() -> None:
        model = Model()
        b = batcher(model, max_delay_s=0.005)
        for _ in range(10):
            await asyncio.gather(*(b.submit(rows(1)) for _ in range(8)))
        assert b.overlap > 0.5
        await b.close()

    asyncio.run(scenario())


def test_a_waiting_batch_takes_the_request_that_comes_within_the_window() -> None:
    async def scenario() -> None:
        model = Model()
        b = batcher(model, max_delay_s=0.5)
        b.overlap = 1.0  # requests have been overlapping: company is likely
        first = asyncio.create_task(b.submit(rows(1)))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(b.submit(rows(1, first=1)))
        await asyncio.wait_for(asyncio.gather(first, second), timeout=5)
        assert model.calls == [2]
        await b.close()

    asyncio.run(scenario())


def test_the_window_applies_only_while_requests_overlap() -> None:
    model = Model()
    b = batcher(model, max_delay_s=0.002)
    loop = asyncio.new_event_loop()
    try:
        from services.serving.batching import _Pending

        pending = _Pending(rows(1), loop.create_future(), enqueued=100.0)
        assert b.wait_for_company(pending) == 100.0  # nothing seen yet: no wait
        b.overlap = 0.4
        assert b.wait_for_company(pending) == 100.0  # mostly alone: no wait
        b.overlap = 0.6
        assert b.wait_for_company(pending) == pytest.approx(100.002)  # the whole window
    finally:
        loop.close()


def test_quick_calls_run_on_the_event_loop_and_slow_ones_in_the_worker_thread() -> None:
    async def scenario(inline_max_s: float) -> list[str]:
        model = Model()
        b = batcher(model, inline_max_s=inline_max_s)
        for i in range(3):
            assert (await b.submit(rows(1, first=i))).tolist() == [2.0 * i]
        await b.close()
        return model.threads

    loop_thread = threading.current_thread().name
    quick = asyncio.run(scenario(inline_max_s=60.0))
    # The first call of a size is never inline (its cost is unknown), the next ones are.
    assert quick[0].startswith("batcher") and quick[1:] == [loop_thread, loop_thread]
    never = asyncio.run(scenario(inline_max_s=0.0))
    assert all(name.startswith("batcher") for name in never)


def test_batches_never_exceed_max_rows_and_every_row_comes_back() -> None:
    async def scenario() -> list[Rows]:
        model = Model()
        b = batcher(model, max_rows=10)
        model.gate.clear()
        blocker = asyncio.create_task(b.submit(rows(1, first=-1)))
        await wait_entered(model)
        sizes = [4, 4, 4, 7, 3]
        starts = np.cumsum([0, *sizes[:-1]]).tolist()
        tasks = [
            asyncio.create_task(b.submit(rows(n, first=s)))
            for n, s in zip(sizes, starts, strict=True)
        ]
        await asyncio.sleep(0.01)
        model.gate.set()
        await blocker
        results = await asyncio.gather(*tasks)
        assert all(c <= 10 for c in model.calls)
        assert sum(model.calls) == 1 + sum(sizes)
        await b.close()
        return results

    results = asyncio.run(scenario())
    assert np.concatenate(results).tolist() == [2.0 * v for v in range(22)]


def test_an_error_reaches_every_caller_of_the_batch() -> None:
    def broken(x: Rows) -> Rows:
        raise RuntimeError(f"model failed on {len(x)} rows")

    async def scenario() -> list[BaseException | Rows]:
        b: DynamicBatcher[Rows] = DynamicBatcher(broken, split, max_rows=64, max_delay_s=0.5)
        b.overlap = 1.0  # wait for company, so that both share the call
        results = await asyncio.gather(b.submit(rows(1)), b.submit(rows(1)), return_exceptions=True)
        await b.close()
        return list(results)

    results = asyncio.run(scenario())
    assert [str(r) for r in results] == ["model failed on 2 rows"] * 2


def test_a_failure_outside_the_model_call_fails_its_batch_and_the_next_one_is_served() -> None:
    """A metrics observer (or split) that raises used to end the batching task: the batch's
    callers and every later request of the version waited forever."""
    observed: list[int] = []

    def observer(requests: int, n_rows: int, seconds: float) -> None:
        observed.append(requests)
        if len(observed) == 1:
            raise ValueError("observer bug")

    async def scenario() -> tuple[BaseException | Rows, Rows]:
        b: DynamicBatcher[Rows] = DynamicBatcher(
            Model().run, split, max_rows=64, max_delay_s=0.0, on_batch=observer
        )
        [first] = await asyncio.wait_for(
            asyncio.gather(b.submit(rows(1)), return_exceptions=True), 5
        )
        second = await asyncio.wait_for(b.submit(rows(2, first=3.0)), 5)
        await b.close()
        return first, second

    first, second = asyncio.run(scenario())
    assert isinstance(first, ValueError) and str(first) == "observer bug"
    assert second.tolist() == [6.0, 8.0]


def test_closing_fails_the_requests_still_waiting() -> None:
    model = Model()
    model.gate.clear()

    async def scenario() -> list[BaseException | Rows]:
        b = batcher(model, inline_max_s=0.0)  # the call goes to the worker thread
        running = asyncio.ensure_future(b.submit(rows(1)))
        await wait_entered(model)
        queued = asyncio.ensure_future(b.submit(rows(1)))
        await asyncio.sleep(0.01)
        await b.close()
        model.gate.set()
        return list(
            await asyncio.wait_for(asyncio.gather(running, queued, return_exceptions=True), 5)
        )

    results = asyncio.run(scenario())
    assert [type(r).__name__ for r in results] == ["BatcherClosed", "BatcherClosed"]


def test_call_times_are_kept_per_size_class() -> None:
    times = CallTimes()
    assert times.estimate(1) is None
    times.observe(1, 0.001)
    times.observe(1000, 0.5)
    assert times.estimate(1) == pytest.approx(0.001)
    assert times.estimate(1000) == pytest.approx(0.5)
    assert times.estimate(600) == pytest.approx(0.5)  # same power of two
    times.observe(1, 0.002)
    assert 0.001 < (times.estimate(1) or 0) < 0.002  # smoothed, not replaced


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_rows"):
        batcher(Model(), max_rows=0)
    with pytest.raises(ValueError, match="negative"):
        batcher(Model(), max_delay_s=-1.0)
