"""A deadline on every request (GPO_REQUEST_TIMEOUT_S): past it the work is cancelled and the client is answered.

Without it an accepted request could wait minutes in a queue while its client had long given up, and a body sent a
byte at a time held a connection for ever. Pure ASGI middleware, outermost: the deadline covers reading the body,
waiting in the batching queues, the worker calls and the forward. When it passes before the answer has started, the
request's task is cancelled (a queued prediction leaves its queue, a pending worker call is dropped) and the client
gets 408 when its body had not fully arrived, else 503 with Retry-After. Work already running in a thread finishes
there, unanswered.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class RequestDeadline:
    def __init__(self, app: ASGIApp, timeout_s: float, retry_after_s: int, on_timeout=None) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        # called with "body" or "work" and how late the cut request was answered: the seconds from the deadline to
        # the moment its work had unwound (metrics; a busy event loop or work that ignores cancellation shows here)
        self.on_timeout = on_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        expects_body = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers
        state = {"started": False, "body_done": not expects_body}

        async def tracked_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                state["body_done"] = True
            return message

        async def tracked_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                await self.app(scope, tracked_receive, tracked_send)
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
