"""A deadline on every request (GPO_REQUEST_TIMEOUT_S): past it the work is cancelled and the client is answered.

Without it an accepted request could wait minutes in a queue while its client had long given up, and a body sent a
byte at a time held a connection for ever. Pure ASGI middleware, outermost: the deadline covers reading the body,
waiting in the batching queues, the worker calls and the forward. When it passes before the answer has started, the
request's task is cancelled (a queued prediction leaves its queue, a pending worker call is dropped) and the client
gets 408 when its body had not fully arrived, else 503 with Retry-After. Work already running in a thread finishes
there, unanswered.

A client that goes away is noticed the same way: once the body has arrived, a watcher waits for the server's
`http.disconnect`; if it comes before the answer is complete, the request's task is cancelled, so its queued work
leaves the queues (uvicorn itself never cancels an application on a disconnect). In front of the embedding worker
this means a cut or abandoned API request frees the worker too: the API drops its connection, the worker notices.

The deadline is counted from when the request was most likely *sent*, not when the app first sees it. While the event
loop runs late (threads holding the GIL, a saturated CPU) a request waits in the socket before any code of the app
runs, and a clock started only then lets the client wait the deadline plus that lag. `LoopLag` measures how late the
loop has been (a timer every 0.1 s) and the deadline starts that much earlier: on a healthy loop by a few
milliseconds, under overload by up to half the deadline. The request's deadline is also published to the code that
queues its work (`seconds_left()`), so a queue refuses work that could not finish in the time the request has left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the queues (service.batching) read the deadline without the web stack
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# the event-loop time of the current request's deadline (None outside a request under RequestDeadline)
_deadline: ContextVar[float | None] = ContextVar("gpo_request_deadline", default=None)


def seconds_left() -> float | None:
    """Seconds until the current request's deadline; None when no deadline applies (tools, tests, no middleware)."""
    deadline = _deadline.get()
    if deadline is None:
        return None
    return deadline - asyncio.get_running_loop().time()


class LoopLag:
    """How late the event loop has been running lately: an estimate of how long a request read now waited unread.

    `watch()` sleeps `tick_s` in a loop and records how late each wake-up was. `estimate()` is the largest lag of the
    last `window_s` seconds, or the lag of the wake-up now overdue when that is larger (a stall still going on when a
    request is read)."""

    def __init__(self, tick_s: float = 0.1, window_s: float = 2.0) -> None:
        self.tick_s = tick_s
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()  # (time of the wake-up, its lag)
        self._due: float | None = None  # when the pending wake-up should happen (perf_counter)

    def record(self, at: float, lag_s: float) -> None:
        self._samples.append((at, lag_s))
        while self._samples and self._samples[0][0] < at - self.window_s:
            self._samples.popleft()

    def estimate(self, now: float | None = None) -> float:
        now = time.perf_counter() if now is None else now
        recent = max((lag for at, lag in self._samples if at >= now - self.window_s), default=0.0)
        overdue = 0.0 if self._due is None else now - self._due
        return max(0.0, recent, overdue)

    async def watch(self, on_sample=None) -> None:
        """Runs until cancelled; `on_sample(lag_s)` sees every sample (metrics)."""
        while True:
            t0 = time.perf_counter()
            self._due = t0 + self.tick_s
            await asyncio.sleep(self.tick_s)
            now = time.perf_counter()
            lag = max(0.0, now - self._due)
            self.record(now, lag)
            if on_sample is not None:
                on_sample(lag)


class RequestDeadline:
    def __init__(
        self,
        app: ASGIApp,
        timeout_s: float,
        retry_after_s: int,
        on_timeout=None,
        on_disconnect=None,
        loop_lag: LoopLag | None = None,
    ) -> None:
        self.app = app
        self.timeout_s = timeout_s
        # the deadline starts this much before the request was read (at most half the deadline); None: when read
        self.loop_lag = loop_lag
        self.retry_after_s = retry_after_s
        # called with "body" or "work" and how late the cut request was answered: the seconds from the deadline to
        # the moment its work had unwound (metrics; a busy event loop or work that ignores cancellation shows here)
        self.on_timeout = on_timeout
        self.on_disconnect = on_disconnect  # called when a client went away before its answer: its work was dropped

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        expects_body = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers
        state = {"started": False, "finished": False, "gone": False, "body_done": not expects_body}
        task = asyncio.current_task()
        # set when the application has read the whole body; a request it never reads (no body, refused early) is
        # not watched, so the watcher never takes a message meant for the application
        body_arrived = asyncio.Event()

        async def tracked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                state["body_done"] = True
                body_arrived.set()
            return message

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["finished"] = True
            await send(message)

        async def watch_disconnect() -> None:
            # After the body, a server's receive() returns only when the connection is lost or the answer is done
            # (uvicorn, and httpx's and Starlette's test transports). Anything else ends the watch: never a spin.
            await body_arrived.wait()
            message = await receive()
            if message["type"] == "http.disconnect" and not state["finished"]:
                state["gone"] = True
                task.cancel()

        loop = asyncio.get_running_loop()
        unread_s = 0.0 if self.loop_lag is None else min(self.loop_lag.estimate(), self.timeout_s / 2)
        deadline = loop.time() + self.timeout_s - unread_s
        token = _deadline.set(deadline)
        watcher = asyncio.create_task(watch_disconnect())
        try:
            async with asyncio.timeout_at(deadline):
                await self.app(scope, tracked_receive, tracked_send)
        except asyncio.CancelledError:
            if not state["gone"] or task.uncancel() > 0:
                raise  # cancelled by the server itself (shutting down): not ours to swallow
            if self.on_disconnect is not None:
                self.on_disconnect()
            log.info("%s %s: the client went away; its work was dropped", scope.get("method"), scope.get("path"))
        except TimeoutError:
            where = "work" if state["body_done"] else "body"
            if self.on_timeout is not None:
                self.on_timeout(where, max(0.0, loop.time() - deadline))
            log.warning(
                "%s %s passed its %.0f s deadline (%s)", scope.get("method"), scope.get("path"), self.timeout_s, where
            )
            if state["started"]:
                return  # the answer had begun: the server closes the connection
            if where == "body":
                await self._answer(send, 408, "the request body did not arrive in time (GPO_REQUEST_TIMEOUT_S)", None)
            else:
                await self._answer(
                    send,
                    503,
                    "the request did not finish in time (GPO_REQUEST_TIMEOUT_S); retry later",
                    self.retry_after_s,
                )
        finally:
            watcher.cancel()
            _deadline.reset(token)

    @staticmethod
    async def _answer(send: Send, status: int, detail: str, retry_after_s: int | None) -> None:
        body = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after_s is not None:
            headers.append((b"retry-after", str(retry_after_s).encode()))
        if status == 408:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
