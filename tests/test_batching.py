"""MicroBatcher: concurrent calls merged into batches, results in order, bounded queue, errors to every caller."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batching import MicroBatcher, QueueFull


def test_lone_call_runs_at_once_and_concurrent_calls_share_batches() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def square(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if len(sizes) == 1:
            gate.wait(5)  # the first batch holds the runner while the others queue
        return [i * i for i in items]

    async def main() -> list[int]:
        batcher = MicroBatcher(square, name="t", max_batch=8, max_queue=64, max_wait_s=0)
        first = asyncio.create_task(batcher.submit(0))
        while not sizes:
            await asyncio.sleep(0.001)
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 20)]
        await asyncio.sleep(0.01)
        gate.set()
        out = [await first, *[await t for t in rest]]
        await batcher.aclose()
        return out

    out = asyncio.run(main())
    assert out == [i * i for i in range(20)]
    assert sizes[0] == 1, "a lone call does not wait for company"
    assert sizes[1:] == [8, 8, 3], "queued calls are taken max_batch at a time"


def test_full_queue_refuses_at_once() -> None:
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    async def main() -> None:
        batcher = MicroBatcher(slow, name="t", max_batch=1, max_queue=2, max_wait_s=0, retry_after_s=3)
        running = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)  # the runner took call 0
        queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert batcher.waiting == 2
        with pytest.raises(QueueFull) as info:
            await batcher.submit(3)
        assert info.value.retry_after_s == 3
        gate.set()
        assert [await running, *[await q for q in queued]] == [0, 1, 2]
        await batcher.aclose()

    asyncio.run(main())


def test_a_failing_batch_fails_each_of_its_calls_and_the_next_batch_works() -> None:
    calls = {"n": 0}

    def flaky(items: list[int]) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("boom")
        return items

    async def main() -> None:
        batcher = MicroBatcher(flaky, name="t", max_wait_s=0)
        with pytest.raises(ValueError, match="boom"):
            await batcher.submit(1)
        assert await batcher.submit(2) == 2
        await batcher.aclose()

    asyncio.run(main())


def test_wrong_number_of_results_is_an_error() -> None:
    async def main() -> None:
        batcher = MicroBatcher(lambda items: [], name="t", max_wait_s=0)
        with pytest.raises(RuntimeError, match="0 results for 1 calls"):
            await batcher.submit(1)
        await batcher.aclose()

    asyncio.run(main())


def test_under_load_the_runner_waits_briefly_for_more_calls() -> None:
    sizes: list[int] = []

    def ident(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    async def main() -> None:
        batcher = MicroBatcher(ident, name="t", max_batch=64, max_wait_s=0.2)
        await asyncio.gather(*(batcher.submit(i) for i in range(4)))  # one batch of 4: load seen

        async def late(i: int, delay: float) -> int:
            await asyncio.sleep(delay)
            return await batcher.submit(i)

        await asyncio.gather(late(10, 0), late(11, 0.02), late(12, 0.04))
        await batcher.aclose()

    asyncio.run(main())
    assert sizes == [4, 3], "after a batch of several, a short wait gathers the stragglers"


def test_close_fails_queued_calls() -> None:
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    async def main() -> None:
        batcher = MicroBatcher(slow, name="t", max_batch=1, max_wait_s=0)
        asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.01)
        await batcher.aclose()
        gate.set()
        with pytest.raises(RuntimeError, match="closed"):
            await queued

    asyncio.run(main())


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda x: x, name="t", max_batch=0)


def test_a_new_event_loop_gets_a_new_runner() -> None:
    batcher = MicroBatcher(lambda items: [i + 1 for i in items], name="t", max_wait_s=0)
    assert asyncio.run(batcher.submit(1)) == 2
    assert asyncio.run(batcher.submit(2)) == 3  # the first loop is closed: a runner on this one answers


def test_a_cancelled_caller_leaves_the_queue_at_once() -> None:
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        return items

    async def main() -> None:
        batcher = MicroBatcher(slow, name="t", max_batch=1, max_queue=2, max_wait_s=0)
        running = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)
        queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert batcher.waiting == 2
        queued[0].cancel()  # its request's deadline passed
        await asyncio.sleep(0.01)
        assert batcher.waiting == 1  # its place is free: a new call is taken, not refused
        again = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0.01)
        gate.set()
        assert [await running, await queued[1], await again] == [0, 2, 3]
        await batcher.aclose()

    asyncio.run(main())


def test_a_cancelled_caller_leaves_the_queue_whatever_its_items_compare_like() -> None:
    """Items are arrays in the service (contexts, vectors), whose == is elementwise: a cancelled caller must find
    its own place in the queue by identity. (It compared items once: a /generate cut at its deadline while queued
    behind another of the same group answered 500, "truth value of an array is ambiguous".)"""
    import numpy as np

    gate = threading.Event()

    def slow(items: list[np.ndarray]) -> list[float]:
        gate.wait(5)
        return [float(x.sum()) for x in items]

    async def main() -> None:
        batcher = MicroBatcher(slow, name="t", max_batch=1, max_queue=8, max_wait_s=0)
        running = asyncio.create_task(batcher.submit(np.zeros(3)))
        await asyncio.sleep(0.01)
        same = np.ones(3)
        queued = [asyncio.create_task(batcher.submit(x)) for x in (np.ones(3), same, same, np.full(3, 2.0))]
        await asyncio.sleep(0.01)
        queued[2].cancel()  # equal to the one before it, and elementwise == with the others
        await asyncio.sleep(0.01)
        assert queued[2].cancelled() and batcher.waiting == 3
        gate.set()
        assert [await running, *[await queued[i] for i in (0, 1, 3)]] == [0.0, 3.0, 3.0, 6.0]
        await batcher.aclose()

    asyncio.run(main())


def test_work_that_could_not_finish_in_time_is_refused() -> None:
    """With max_wait_estimate_s, a call whose estimated time (the batches ahead of it and its own, at the recent batch
    time) passes the bound is refused at once, though the queue has room; an idle batcher admits any call."""

    def timed(items: list[float]) -> list[float]:
        time.sleep(items[0])
        return items

    async def main() -> None:
        batcher = MicroBatcher(timed, name="t", max_batch=1, max_queue=100, max_wait_s=0, max_wait_estimate_s=0.5)
        assert batcher.estimated_wait_s() == 0.0  # nothing measured yet: admitted
        await batcher.submit(0.2)  # one batch took ~0.2 s
        assert batcher.batch_seconds is not None and 0.15 <= batcher.batch_seconds < 0.25
        assert batcher.estimated_wait_s() == 0.0  # nothing running, nothing queued: it starts at once
        first = asyncio.create_task(batcher.submit(0.2))
        await asyncio.sleep(0.02)  # running
        assert 0.15 <= batcher.estimated_wait_s() <= 0.3
        second = asyncio.create_task(batcher.submit(0.2))  # behind the running one, then its own: ~0.4 s, admitted
        await asyncio.sleep(0.02)
        with pytest.raises(QueueFull):
            await batcher.submit(0.2)  # the running one, one queued, its own: ~0.6 s > 0.5
        assert [await first, await second] == [0.2, 0.2]
        await batcher.submit(0.6)  # idle: admitted whatever it costs
        with pytest.raises(QueueFull):
            await asyncio.gather(batcher.submit(0.1), batcher.submit(0.1))  # the second: behind a 0.28 s average
        await batcher.aclose()

    asyncio.run(main())


def test_batches_hold_at_most_max_batch_size_of_work() -> None:
    """With `size`, a batch takes queued calls while their work fits max_batch_size (a larger call runs alone), so
    the first calls finish without waiting for all the queued work; the estimated wait counts that work."""
    batches: list[list[list[int]]] = []
    gate = threading.Event()

    def run(items: list[list[int]]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            gate.wait(5)
        return [len(i) for i in items]

    async def main() -> None:
        batcher = MicroBatcher(run, name="t", max_batch=32, max_queue=64, max_wait_s=0, size=len, max_batch_size=10)
        first = asyncio.create_task(batcher.submit([0]))
        while not batches:
            await asyncio.sleep(0.001)
        sizes = [4, 4, 4, 12, 3, 3, 3]
        rest = [asyncio.create_task(batcher.submit(list(range(n)))) for n in sizes]
        await asyncio.sleep(0.01)
        batcher.batch_seconds = 1.0
        assert batcher.estimated_wait_s() == (33 // 10 + 1) * 1.0  # 3 batches' work queued, 1 running
        gate.set()
        assert [await first, *[await t for t in rest]] == [1, *sizes]
        await batcher.aclose()

    asyncio.run(main())
    assert [[len(i) for i in b] for b in batches] == [[1], [4, 4], [4], [12], [3, 3, 3]]


def test_within_a_request_the_budget_is_the_time_its_deadline_leaves() -> None:
    """Under RequestDeadline a call is admitted only if it could finish before *its request's* deadline: a request
    that already spent most of its time elsewhere is refused at once (429), though the fixed bound would admit it."""
    from service.deadline import RequestDeadline

    def timed(items: list[float]) -> list[float]:
        time.sleep(items[0])
        return items

    outcome: list[str] = []

    async def main() -> None:
        batcher = MicroBatcher(timed, name="t", max_batch=1, max_queue=100, max_wait_s=0, max_wait_estimate_s=60)
        await batcher.submit(0.2)  # one batch took ~0.2 s

        async def app(scope, receive, send) -> None:
            await asyncio.sleep(0.7)  # the request spent 0.7 s of its 1 s elsewhere
            busy = asyncio.create_task(batcher.submit(0.2))  # another request's batch is running
            await asyncio.sleep(0.02)
            try:  # behind it and its own: ~0.4 s, more than the ~0.28 s left (the fixed bound, 60 s, would admit it)
                await batcher.submit(0.2)
                outcome.append("admitted")
            except QueueFull:
                outcome.append("refused")
            await busy

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            pass

        scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
        await RequestDeadline(app, 1.0, retry_after_s=1)(scope, receive, send)
        busy = asyncio.create_task(batcher.submit(0.2))
        await asyncio.sleep(0.02)
        outcome.append(type(await batcher.submit(0.2)).__name__)  # outside a request: the fixed bound, admitted
        await busy
        await batcher.aclose()

    asyncio.run(main())
    assert outcome == ["refused", "float"]
