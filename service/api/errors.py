"""Every domain and infrastructure error mapped to its HTTP answer, in one place."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.auth import Unauthorized
from service.batching import QueueFull
from service.db.repository import GroupKindMismatch, GroupNotFound, ItemNotFound, VersionConflict
from service.embedder.client import GenerationNotConfigured, WorkerRequestError, WorkerUnavailable
from service.limits import RequestLimitError
from service.schemas import ErrorResponse
from service.serving.contexts import EmptyContext
from service.serving.kinds import KindNotServed
from service.serving.predictor import EmbedderMismatch

log = logging.getLogger(__name__)

# For the OpenAPI schema: what each route may answer besides its success.
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing, unknown or revoked API key"}
}
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "the request body is larger than GPO_MAX_BODY_BYTES"},
    431: {"model": ErrorResponse, "description": "more request headers than GPO_MAX_HEADERS or GPO_MAX_HEADER_BYTES"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "unknown group or item"}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "a concurrent change, or items of another kind than the group's"}
}
BUSY: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorResponse, "description": "the prediction queue is full; retry after Retry-After seconds"}
}
REFUSED_BY_LLM: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the base LLM (the embedding worker) refused the input"}
}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "a dependency is down; retry after Retry-After seconds"}
}


def _answer(status: int, detail: Any, retry_after_s: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _retry_after(request: Request) -> int:
    return int(request.app.state.services.settings.retry_after_s)


async def _unauthorized(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return _answer(404, str(exc))  # "group 'x' not found": names only what the caller asked for


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    return _answer(409, str(exc))


def _validation_error(loc: list[str | int], msg: str, kind: str) -> list[dict[str, Any]]:
    """A 422 detail in FastAPI's validation shape, so every 422 of the API matches one schema."""
    return [{"type": kind, "loc": loc, "msg": msg}]


class _TooBig(Exception):
    """An echoed input past MAX_ECHO_DEPTH or MAX_ECHO_NODES: it is left out of the answer."""


MAX_ECHOED_INPUT_CHARS = 200
MAX_ECHO_DEPTH = 16  # nesting echoed back at most (a body nested 900 deep once overflowed the stack here: a 500)
MAX_ECHO_NODES = 200  # values visited at most: a huge input is never walked whole to be dropped afterwards


def _json_safe(value: Any, _depth: int = 0, _seen: list[int] | None = None) -> Any:
    """What the caller sent, made encodable: non-finite floats (a NaN) as strings, since JSON has no NaN; lone
    surrogates in strings (and keys) as backslash escapes, since UTF-8 cannot encode them; anything that is not a
    JSON type as its str. The answer is JSON. Raises _TooBig past MAX_ECHO_DEPTH levels or MAX_ECHO_NODES values."""
    seen = [0] if _seen is None else _seen
    seen[0] += 1
    if _depth > MAX_ECHO_DEPTH or seen[0] > MAX_ECHO_NODES:
        raise _TooBig
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_json_safe(v, _depth + 1, seen) for v in value]
    if isinstance(value, dict):
        return {
            _json_safe(k, _depth + 1, seen) if isinstance(k, str) else str(k): _json_safe(v, _depth + 1, seen)
            for k, v in value.items()
        }
    return _json_safe(str(value), _depth + 1, seen)


def _echo(value: Any) -> Any:
    """The input of a validation error as it may be echoed, or _TooBig when it is too deep or too large to."""
    echoed = _json_safe(value)
    if len(repr(echoed)) > MAX_ECHOED_INPUT_CHARS:  # never a whole large body back
        raise _TooBig
    return echoed


async def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 shape ({loc, msg, type}, plus `input` when it is short), always valid JSON."""
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        out = {"type": error["type"], "loc": _json_safe(list(error["loc"])), "msg": _json_safe(error["msg"])}
        if "input" in error:
            try:
                out["input"] = _echo(error["input"])
            except _TooBig:
                pass
        if "ctx" in error:
            try:
                out["ctx"] = _json_safe(jsonable_encoder(error["ctx"], custom_encoder={Exception: str}))
            except _TooBig:
                out["ctx"] = {"error": "(too large to echo)"}
        errors.append(out)
    return _answer(422, errors)


async def _empty_context(request: Request, exc: Exception) -> JSONResponse:
    return _answer(422, _validation_error(["body", "group_id"], str(exc), "empty_context"))


async def _kind_not_served(request: Request, exc: Exception) -> JSONResponse:
    return _answer(422, _validation_error(["body", "group_id"], str(exc), "kind_not_served"))


async def _limit(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestLimitError)
    return _answer(422, exc.errors)


async def _worker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The reason (worker URL, upstream status) goes to the log, not to callers.
    log.warning("embedding worker unavailable: %s", exc)
    return _answer(503, "the embedding worker is unavailable; retry later", _retry_after(request))


async def _worker_refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WorkerRequestError)
    # The worker's own field names mean nothing to our callers: its reason goes in the message.
    reason = "; ".join(str(e.get("msg", e)) for e in exc.detail) if isinstance(exc.detail, list) else exc.detail
    msg = f"the base LLM refused the input: {reason}"
    if exc.status_code == 422:
        return _answer(422, _validation_error(["body"], msg, "worker_refused"))
    return _answer(400, msg)


async def _generation_not_configured(request: Request, exc: Exception) -> JSONResponse:
    # A configuration gap: retrying does not help, so no Retry-After.
    return _answer(503, str(exc))


async def _embedder_mismatch(request: Request, exc: Exception) -> JSONResponse:
    # The worker changed under a running API: nothing heals until an operator acts, so no Retry-After.
    log.error("%s", exc)
    return _answer(503, str(exc))


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s: %s", type(exc).__name__, getattr(exc, "orig", exc))
    return _answer(503, "the database is unavailable; retry later", _retry_after(request))


async def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    request.app.state.services.metrics.queue_full.inc()
    return _answer(429, "too many requests are waiting; retry later", exc.retry_after_s)


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(app: FastAPI, scope: dict[str, Any]) -> list[str]:
    """Every method some route of `app` answers on the request's path (the router's own matching, per method)."""
    return [
        m
        for m in HTTP_METHODS
        if any(route.matches({**scope, "method": m})[0] == Match.FULL for route in app.router.routes)
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's HTTP errors as FastAPI answers them, but a 405's `Allow` lists every method of every route on the
    path (the router names only the first route it tried)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allow = ", ".join(allowed_methods(request.app, dict(request.scope)))
        return JSONResponse({"detail": exc.detail}, status_code=405, headers={"Allow": allow})
    return await http_exception_handler(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _answer(500, "internal server error")  # never str(exc): it may hold data or internals


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on `app`."""
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Unauthorized, _unauthorized)
    app.add_exception_handler(GroupNotFound, _not_found)
    app.add_exception_handler(ItemNotFound, _not_found)
    app.add_exception_handler(VersionConflict, _conflict)
    app.add_exception_handler(GroupKindMismatch, _conflict)
    app.add_exception_handler(KindNotServed, _kind_not_served)
    app.add_exception_handler(EmptyContext, _empty_context)
    app.add_exception_handler(RequestLimitError, _limit)
    app.add_exception_handler(GenerationNotConfigured, _generation_not_configured)
    app.add_exception_handler(WorkerUnavailable, _worker_unavailable)
    app.add_exception_handler(WorkerRequestError, _worker_refused)
    app.add_exception_handler(EmbedderMismatch, _embedder_mismatch)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeout, _database_unavailable)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(Exception, _unexpected)
