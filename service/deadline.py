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
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class RequestDeadline:
    def __init__(self, app: ASGIApp, timeout_s: float, retry_after_s: int, on_timeout=None, on_disconnect=None) -> None:
        self.app = app
        self.timeout_s = timeout_s
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
        deadline = loop.time() + self.timeout_s
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
