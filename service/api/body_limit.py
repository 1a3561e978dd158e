"""Bounds on a request's size: its body (413), checked before the body is read (on Content-Length, then on the bytes),
and its headers (431: uvicorn's default httptools parser takes any number of headers of any size)."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HeaderLimit:
    """Pure ASGI middleware: more than `max_headers` request headers, or more than `max_bytes` of them (names and
    values), is refused with 431 before anything else reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_headers: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope.get("headers") or []
            size = sum(len(name) + len(value) for name, value in headers)
            if len(headers) > self.max_headers or size > self.max_bytes:
                await _refuse(
                    send,
                    431,
                    f"request headers too large: {len(headers)} headers, {size} bytes; at most {self.max_headers} "
                    f"headers (GPO_MAX_HEADERS) and {self.max_bytes} bytes (GPO_MAX_HEADER_BYTES)",
                )
                return
        await self.app(scope, receive, send)


class BodySizeLimit:
    """Pure ASGI middleware: a body over `max_bytes` is refused with 413 and never buffered whole.

    A declared Content-Length over the limit is answered at once. A body without one (chunked) is counted as
    it arrives; the read that passes the limit raises HTTPException(413), which FastAPI answers as such.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return f"request body too large: at most {self.max_bytes} bytes (GPO_MAX_BODY_BYTES)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                too_large = False  # the server refuses a malformed Content-Length itself
            if too_large:
                await _refuse(send, 413, self._detail())
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited_receive, send)
