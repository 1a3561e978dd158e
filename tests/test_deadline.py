"""The request deadline (service.deadline): past it the work is cancelled and the client answered, 408 while its
body had not arrived, else 503 with Retry-After; a request within it is untouched."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from service.deadline import RequestDeadline


def scope(method: str = "POST", body: bool = True) -> dict:
    headers = [(b"content-type", b"application/json")]
    if body:
        headers.append((b"content-length", b"2"))
    return {"type": "http", "method": method, "path": "/x", "headers": headers}


def run(app, timeout_s: float, receive: Callable[[], Awaitable[dict]], method: str = "POST", body: bool = True):
    """(sent messages, seconds, timeouts seen) of one request through RequestDeadline(app)."""
    sent: list[dict] = []
    seen: list[str] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> None:
        await RequestDeadline(app, timeout_s, retry_after_s=7, on_timeout=lambda stage, late_s: seen.append(stage))(
            scope(method, body), receive, send
        )

    t0 = time.monotonic()
    asyncio.run(main())
    return sent, time.monotonic() - t0, seen


async def whole_body() -> dict:
    return {"type": "http.request", "body": b"{}", "more_body": False}


def answer(status: int = 200):
    async def app(scope, receive, send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_a_request_within_its_deadline_is_untouched():
    sent, _, seen = run(answer(201), 1.0, whole_body)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"] and sent[0]["status"] == 201
    assert seen == []


def test_slow_work_is_cancelled_and_answered_503_with_retry_after():
    cancelled = []

    async def slow(scope, receive, send) -> None:
        await receive()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sent, took, seen = run(slow, 0.2, whole_body)
    assert took < 2 and cancelled == [True] and seen == ["work"]
    assert sent[0]["status"] == 503 and (b"retry-after", b"7") in sent[0]["headers"]
    assert "GPO_REQUEST_TIMEOUT_S" in json.loads(sent[1]["body"])["detail"]


def test_a_body_that_does_not_arrive_in_time_is_answered_408():
    async def trickle() -> dict:  # one byte, then nothing for a long time (a slow client)
        await asyncio.sleep(30)
        return {"type": "http.request", "body": b"{", "more_body": True}

    sent, took, seen = run(answer(), 0.2, trickle)
    assert took < 2 and seen == ["body"]
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]


def test_a_request_without_a_body_that_is_slow_is_a_503():
    async def slow(scope, receive, send) -> None:
        await asyncio.sleep(30)

    sent, _, seen = run(slow, 0.2, whole_body, method="GET", body=False)
    assert sent[0]["status"] == 503 and seen == ["work"]


def test_an_answer_already_begun_is_not_answered_twice():
    async def stalls_mid_answer(scope, receive, send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(30)

    sent, _, seen = run(stalls_mid_answer, 0.2, whole_body)
    assert [m["type"] for m in sent] == ["http.response.start"] and seen == ["work"]
