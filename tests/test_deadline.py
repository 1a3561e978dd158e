"""The request deadline (service.deadline): past it the work is cancelled and the client answered, 408 while its
body had not arrived, else 503 with Retry-After; a request within it is untouched."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

from service.deadline import LoopLag, RequestDeadline, seconds_left
from tests.ports import free_port


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


def test_a_client_that_goes_away_has_its_work_cancelled_and_nothing_answered():
    cancelled: list[bool] = []
    gone: list[bool] = []
    reads = iter([{"type": "http.request", "body": b"{}", "more_body": False}])

    async def server_receive() -> dict:  # the body, then (as a server does) nothing until the connection drops
        try:
            return next(reads)
        except StopIteration:
            await asyncio.sleep(0.2)
            return {"type": "http.disconnect"}

    async def slow(scope, receive, send) -> None:
        await receive()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> None:
        deadline = RequestDeadline(slow, 30, retry_after_s=7, on_disconnect=lambda: gone.append(True))
        await deadline(scope(), server_receive, send)

    t0 = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t0 < 5 and cancelled == [True] and gone == [True] and sent == []


def test_the_answer_completing_is_not_taken_for_a_disconnect():
    gone: list[bool] = []
    done = asyncio.Event

    async def main() -> list[dict]:
        finished = done()
        reads = iter([{"type": "http.request", "body": b"{}", "more_body": False}])
        sent: list[dict] = []

        async def server_receive() -> dict:  # after the body: http.disconnect once the answer is complete
            try:
                return next(reads)
            except StopIteration:
                await finished.wait()
                return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finished.set()

        app = RequestDeadline(answer(200), 30, retry_after_s=7, on_disconnect=lambda: gone.append(True))
        await app(scope(), server_receive, send)
        await asyncio.sleep(0.05)
        return sent

    sent = asyncio.run(main())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"] and gone == []


def test_a_real_server_cancels_the_work_of_a_client_that_hung_up():
    """Through uvicorn: a client sends its whole request and closes the socket; the handler is cancelled at once
    (uvicorn alone would let it run to its end for nobody)."""
    import socket
    import threading

    import uvicorn

    started, cancelled = threading.Event(), threading.Event()
    gone: list[bool] = []

    async def slow(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await receive()
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    app = RequestDeadline(slow, 60, retry_after_s=7, on_disconnect=lambda: gone.append(True))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(
                b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
            )
            assert started.wait(10)
        assert cancelled.wait(10), "the handler kept running after its client hung up"
        assert gone == [True]
    finally:
        server.should_exit = True
        thread.join(10)


def test_loop_lag_is_the_largest_recent_lag_or_the_stall_going_on() -> None:
    lag = LoopLag(tick_s=0.1, window_s=2.0)
    assert lag.estimate(now=100.0) == 0.0
    lag.record(100.0, 0.8)
    lag.record(100.5, 0.1)
    assert lag.estimate(now=101.0) == 0.8  # the largest of the window
    assert lag.estimate(now=102.4) == 0.1  # 0.8 left the window
    assert lag.estimate(now=103.0) == 0.0
    lag._due = 103.0
    assert abs(lag.estimate(now=104.5) - 1.5) < 1e-9  # a wake-up overdue by 1.5 s: the loop is stalled now


def test_loop_lag_watch_measures_a_blocked_loop() -> None:
    async def main() -> float:
        lag = LoopLag(tick_s=0.05)
        task = asyncio.create_task(lag.watch())
        await asyncio.sleep(0.12)
        time.sleep(0.4)  # blocks the loop: the pending wake-up is late
        await asyncio.sleep(0.1)
        task.cancel()
        return lag.estimate()

    assert 0.3 <= asyncio.run(main()) <= 1.0


def test_the_deadline_starts_as_early_as_the_loop_has_been_late() -> None:
    """A request read while the loop runs 0.4 s late may have waited that long unread: its 1 s deadline passes
    ~0.6 s after it was read. The head start is at most half the deadline."""
    left: list[float] = []

    async def app(scope, receive, send) -> None:
        left.append(seconds_left())
        await asyncio.sleep(30)

    def cut_after(lag_s: float) -> float:
        lag = LoopLag(window_s=60)
        lag.record(time.perf_counter(), lag_s)

        async def main() -> None:
            async def send(message: dict) -> None:
                pass

            await RequestDeadline(app, 1.0, retry_after_s=7, loop_lag=lag)(scope(body=False), whole_body, send)

        t0 = time.monotonic()
        asyncio.run(main())
        return time.monotonic() - t0

    assert 0.5 <= cut_after(0.4) < 0.85 and 0.55 <= left[-1] <= 0.61
    assert 0.45 <= cut_after(5.0) < 0.75 and 0.45 <= left[-1] <= 0.51  # capped at half
    assert 0.9 <= cut_after(0.0) < 1.3 and left[-1] > 0.95


def test_seconds_left_is_none_outside_a_request() -> None:
    async def main():
        return seconds_left()

    assert asyncio.run(main()) is None
