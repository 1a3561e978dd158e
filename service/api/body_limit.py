"""A bound on request bodies (413), checked before the body is read: on Content-Length, then on the bytes."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
                body = json.dumps({"detail": self._detail()}).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send(
                    {
                        "type": "http.response.start",
                        "status": 413,
                        "headers": headers,
                    }
                )
                await send({"type": "http.response.body", "body": body})
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
