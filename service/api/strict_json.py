"""Request bodies read as RFC 8259 JSON, strictly: UTF-8 only, no object with a repeated key, and a body the parser
cannot take (nested past its stack, a number of thousands of digits) refused like any other invalid JSON.

FastAPI reads a JSON body with `json.loads`, which lets the last of two equal keys win silently and answers a body
that is not UTF-8 with an undocumented 400. Routes of `StrictJSONRoute` read it through `StrictJSONRequest.json`,
which raises `json.JSONDecodeError` for both: FastAPI answers that as its documented 422 (`json_invalid`), with the
reason in `ctx.error`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise json.JSONDecodeError(
            f"the body is not UTF-8 (invalid byte at position {e.start})", body.decode("utf-8", "replace"), e.start
        ) from None


def loads_strict(body: bytes) -> Any:
    """`json.loads` of a UTF-8 body whose objects have unique keys; JSONDecodeError otherwise."""
    text = _decode(body)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise json.JSONDecodeError(f"duplicate key {json.dumps(key)} in an object", text, 0)
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=unique)
    except RecursionError:  # nested deeper than the parser's stack: FastAPI would answer an undocumented 400
        raise json.JSONDecodeError("the body is nested too deeply", text, 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as e:  # a number past Python's digit limit (sys.get_int_max_str_digits)
        raise json.JSONDecodeError(f"a number in the body cannot be read: {e}", text, 0) from None


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_strict(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An APIRoute whose handler reads JSON bodies with `loads_strict`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
