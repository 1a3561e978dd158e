"""MicroBatcher: concurrent calls of one async process merged into batched calls of a blocking function.

Continuous batching: while one batch runs (in a worker thread), new calls queue; the next batch takes all of
them (up to `max_batch` calls, and up to `max_batch_size` of work when calls have a `size`). A lone call therefore
waits for nothing. Under load (the previous batch held more than one call) the runner also waits up to `max_wait_s`
for more calls before it starts a batch that is not full. The queue is bounded: past `max_queue` waiting calls,
`submit` raises QueueFull at once (HTTP 429), and with `max_wait_estimate_s` also when the estimated time of a new
call (the batches ahead of it and its own, times the recent time of a batch) passes that bound: work that could not
finish before its request's deadline is refused, not queued for nobody (an idle batcher admits any call). A caller
that is cancelled while it waits (its request's deadline passed, its client went away) leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio.to_thread

from service.deadline import seconds_left

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """Too many calls are waiting; the caller should retry after `retry_after_s`."""

    def __init__(self, name: str, size: int, retry_after_s: int) -> None:
        super().__init__(f"the {name} queue is full ({size} waiting); retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(eq=False)  # a call is itself: equal items (or items whose == raises, like arrays) are other calls
class _Call(Generic[T, R]):
    item: T
    future: asyncio.Future[R] = field(repr=False)


class MicroBatcher(Generic[T, R]):
    """`await submit(item)` -> fn([..., item, ...])[i], fn running on a list of concurrent items at a time.

    fn must return one result per item, in order. When fn raises, every call of that batch gets the exception.
    Its runner lives on the event loop of the latest `submit` (a new loop starts a new runner).
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        name: str,
        max_batch: int = 64,
        max_queue: int = 256,
        max_wait_s: float = 0.001,
        retry_after_s: int = 1,
        observe: Callable[[int], None] | None = None,
        max_wait_estimate_s: float | None = None,
        size: Callable[[T], int] | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_s >= 0")
        self.fn = fn
        self.name = name
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.retry_after_s = retry_after_s
        self.observe = observe  # called with each batch's size (metrics)
        self.max_wait_estimate_s = max_wait_estimate_s
        # With `size` and `max_batch_size`: a batch also holds at most that much work (e.g. texts), a larger call
        # runs alone. Merging past what fn does at once gains nothing and makes every call of the batch wait for all
        # of it: a batch longer than the deadline would have every call cut, round after round.
        self.size = size
        self.max_batch_size = max_batch_size
        self.batch_seconds: float | None = None  # moving average of a batch's time (None before the first)
        self._running = False
        self._pending: list[_Call[T, R]] = []
        self._arrived: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_batch = 0
        self.batches = 0
        self.calls = 0

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def estimated_wait_s(self) -> float:
        """Seconds a call submitted now would wait before its batch starts: the batches ahead of it (the running
        one and the full batches of the queue), at the recent time of a batch (0 before any batch ran)."""
        if self.batch_seconds is None:
            return 0.0
        full = len(self._pending) // self.max_batch
        if self.size is not None and self.max_batch_size:
            full = max(full, sum(self.size(c.item) for c in self._pending) // self.max_batch_size)
        return (full + int(self._running)) * self.batch_seconds

    async def submit(self, item: T) -> R:
        if len(self._pending) >= self.max_queue:
            raise QueueFull(self.name, len(self._pending), self.retry_after_s)
        if self.max_wait_estimate_s is not None and (self._pending or self._running):
            # it must also run: its own batch takes about one batch time (an idle batcher admits anything, so the
            # first measurement and a lone long call can happen at all). Within a request, the budget is the time
            # its deadline leaves: a request that already waited elsewhere gets a 429 now, not a 503 at its deadline.
            left = seconds_left()
            budget = self.max_wait_estimate_s if left is None else min(self.max_wait_estimate_s, left)
            if self.estimated_wait_s() + (self.batch_seconds or 0.0) > budget:
                raise QueueFull(self.name, len(self._pending), self.retry_after_s)
        loop = asyncio.get_running_loop()
        if self._runner is None or self._runner.done() or self._loop is not loop:
            # First call, or on another event loop than before (an app started again in the same process):
            # what waited on the old loop cannot be answered any more.
            self._pending = [c for c in self._pending if c.future.get_loop() is loop]
            self._loop = loop
            self._arrived = asyncio.Event()
            self._runner = loop.create_task(self._run(), name=f"batcher-{self.name}")
        call: _Call[T, R] = _Call(item, loop.create_future())
        self._pending.append(call)
        assert self._arrived is not None
        self._arrived.set()
        try:
            return await call.future
        except asyncio.CancelledError:
            if call in self._pending:  # not taken into a batch yet: free its place in the queue now
                self._pending.remove(call)
            raise

    async def _run(self) -> None:
        assert self._arrived is not None
        arrived = self._arrived
        while True:
            await arrived.wait()
            arrived.clear()
            while self._pending:
                if self._last_batch > 1 and self.max_wait_s > 0 and len(self._pending) < self.max_batch:
                    await self._gather_more(arrived)
                n = self._batch_length()
                batch = self._pending[:n]
                del self._pending[:n]
                batch = [c for c in batch if not c.future.done()]  # cancelled callers (client went away)
                if not batch:
                    continue
                await self._execute(batch)

    def _batch_length(self) -> int:
        """How many of the first pending calls the next batch takes: at most max_batch, and at most max_batch_size
        of work (at least one call)."""
        n = min(len(self._pending), self.max_batch)
        if self.size is None or not self.max_batch_size:
            return n
        total = 0
        for i, call in enumerate(self._pending[:n]):
            total += self.size(call.item)
            if total > self.max_batch_size and i > 0:
                return i
        return n

    async def _gather_more(self, arrived: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(self._pending) < self.max_batch:
            left = deadline - loop.time()
            if left <= 0:
                return
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), left)
            except TimeoutError:
                return

    async def _execute(self, batch: list[_Call[T, R]]) -> None:
        self._last_batch = len(batch)
        self.batches += 1
        self.calls += len(batch)
        if self.observe is not None:
            self.observe(len(batch))
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._running = True
        try:
            results = await anyio.to_thread.run_sync(self.fn, [c.item for c in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(batch)} calls")
        except Exception as exc:  # every caller of the batch sees the failure
            for c in batch:
                if not c.future.done():
                    c.future.set_exception(exc)
            return
        finally:
            self._running = False
            took = loop.time() - started
            self.batch_seconds = took if self.batch_seconds is None else 0.8 * self.batch_seconds + 0.2 * took
        for c, r in zip(batch, results, strict=True):
            if not c.future.done():
                c.future.set_result(r)

    async def aclose(self) -> None:
        """Stop the runner; calls still queued fail with RuntimeError."""
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
            self._runner = None
        for c in self._pending:
            if not c.future.done():
                c.future.set_exception(RuntimeError(f"{self.name} batcher closed"))
        self._pending.clear()
