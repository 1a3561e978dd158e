"""The bounded load script (benchmarks/load.py), short: it spawns `gpo serve` on the tiny LM checkpoint, runs
~10 clients for a few seconds and checks the report (no latency assertions: machines are noisy)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks import load

from .conftest import CHECKPOINT


def _server_env(model_store: Path, tiny_lm_path: Path, tmp_path: Path, database_url: str | None) -> dict[str, str]:
    env = {
        "GPO_EMBEDDER": str(tiny_lm_path),
        "GPO_DEVICE": "cpu",
        "GPO_CACHE_DIR": str(tmp_path / "cache"),
        "GPO_MODEL_STORE": str(model_store),
        "GPO_CHECKPOINT": CHECKPOINT,
        "GPO_TORCH_THREADS": "1",
    }
    if database_url is not None:
        env["GPO_DATABASE_URL"] = database_url
    return env


def _check(report: dict) -> None:
    assert report["passed"], (report["failures"], report.get("server_log_tail", ""))
    total = report["total"]
    assert total["server_errors"] == 0 and total["transport_errors"] == 0 and total["bad_body"] == 0
    for op in load.OPS:
        stats = report["operations"][op]
        assert stats["ok"] >= 1, f"{op} never succeeded: {stats}"
        assert stats["server_errors"] == 0 and stats["transport_errors"] == 0, (op, stats)
        assert stats["p50_ms"] is not None and math.isfinite(stats["p50_ms"])
        assert stats["p99_ms"] is not None and math.isfinite(stats["p99_ms"]) and stats["p99_ms"] >= stats["p50_ms"]
    assert math.isfinite(total["p50_ms"]) and math.isfinite(total["p99_ms"])
    verification = report["verification"]
    assert verification["lost_acknowledged_writes"] == 0, verification["lost_examples"]
    assert verification["refused_writes_stored"] == 0 and verification["duplicate_append_versions"] == 0
    # every group was seeded, and the appends acknowledged during the run were checked too
    seeded = report["config"]["groups"] * report["config"]["seed_items"]
    assert verification["acknowledged_writes"] >= seeded + report["operations"]["register"]["ok"]


def _config() -> load.LoadConfig:
    return load.LoadConfig(
        clients=10,
        duration_s=5.0,
        groups=5,
        seed_items=3,
        mix={"register": 0.25, "predict": 0.5, "generate": 0.1, "read": 0.15},
        timeout_s=30.0,
        generate_timeout_s=30.0,
        ready_timeout_s=60.0,
        seed=1,
    )


def test_load_script_on_sqlite(model_store, tiny_lm_path, tmp_path, capsys, monkeypatch) -> None:
    """Spawned server on a temporary SQLite file (the script's default); the printed report says PASS."""
    for name in ("GPO_DATABASE_URL", "GPO_REDIS_URL", "GPO_WORKER_URL"):
        monkeypatch.delenv(name, raising=False)
    report = load.run(_config(), env=_server_env(model_store, tiny_lm_path, tmp_path, None))
    _check(report)
    print(load.format_report(report))
    assert capsys.readouterr().out.rstrip().endswith("PASS")


def test_load_script_on_postgres(model_store, tiny_lm_path, tmp_path, postgres_url: str, monkeypatch) -> None:
    """The same against Postgres (with auth, as Postgres requires)."""
    for name in ("GPO_REDIS_URL", "GPO_WORKER_URL"):
        monkeypatch.delenv(name, raising=False)
    config = _config()
    config.duration_s = 3.0
    report = load.run(config, env=_server_env(model_store, tiny_lm_path, tmp_path, postgres_url))
    _check(report)


@pytest.mark.parametrize("url", ["http://10.1.2.3:8000", "http://example.com", "ftp://127.0.0.1:21"])
def test_refuses_targets_off_this_machine(url: str, capsys) -> None:
    assert load.main(["--url", url, "--api-key", "k"]) == 2
    assert "refusing" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://[::1]:8000", "http://localhost:8000/"])
def test_accepts_loopback_targets(url: str) -> None:
    load.check_loopback(url)


@pytest.mark.parametrize(
    "argv", [["--clients", "201"], ["--duration", "601"], ["--duration", "0"], ["--mix", "predict=0"], ["--mix", "x=1"]]
)
def test_bounds(argv: list[str], capsys) -> None:
    assert load.main(argv) == 2
    assert "error:" in capsys.readouterr().err


def test_verification_catches_a_lost_acknowledged_write() -> None:
    """Against an in-memory fake whose third append is acknowledged but not stored: the run fails on it."""
    import asyncio
    import json

    import httpx

    contexts: dict[str, list[str]] = {}
    versions: dict[str, int] = {}
    appends = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal appends
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST" and parts[0] == "groups":
            body, group = json.loads(request.content), parts[1]
            questions = [item["question"] for item in body["items"]]
            if body["mode"] == "replace":
                contexts[group] = questions
            else:
                appends += 1
                if appends != 3:
                    contexts[group] += questions
            versions[group] = versions.get(group, 0) + 1
            return httpx.Response(200, json={"group_id": group, "version": versions[group], "size": 0})
        if request.method == "GET":
            items = [{"question": q} for q in contexts[parts[1]]]
            return httpx.Response(200, json={"group_id": parts[1], "items": items})
        if parts[0] == "predict":
            questions = json.loads(request.content)["questions"]
            dists = [[1 / len(q["options"])] * len(q["options"]) for q in questions]
            return httpx.Response(200, json={"predictions": [{"distribution": d} for d in dists]})
        if parts[0] == "generate":
            return httpx.Response(200, json={"responses": [{"text": "x", "score": 1.0}]})
        return httpx.Response(204)

    config = load.LoadConfig(url="http://127.0.0.1:9", clients=2, duration_s=0.3, groups=2, seed_items=1)
    runner = load.Runner(config, load.Target(config.url, "k"))
    for client in runner.clients:
        asyncio.run(client.aclose())
    runner.clients = [httpx.AsyncClient(base_url=config.url, transport=httpx.MockTransport(handler))]
    runner.busy = [0]
    report = asyncio.run(runner.run())
    assert report["operations"]["register"]["ok"] >= 3
    assert report["verification"]["lost_acknowledged_writes"] == 1
    assert load.failures(report) == ["1 acknowledged writes lost"]


def test_open_loop_spreads_requests_over_small_clients() -> None:
    """Hundreds of requests in flight on one httpx client stall the generator's own loop; the open loop's connections
    are split over clients of at most CONNECTIONS_PER_CLIENT, and each request goes to the least busy one."""
    import asyncio

    import httpx

    config = load.LoadConfig(url="http://127.0.0.1:9", rate=50.0, max_in_flight=1000, duration_s=1, groups=1)
    runner = load.Runner(config, load.Target(config.url, "k"))
    try:
        assert len(runner.clients) == -(-1004 // load.CONNECTIONS_PER_CLIENT)
        for client in runner.clients:
            assert client._transport._pool._max_connections <= load.CONNECTIONS_PER_CLIENT
    finally:
        for client in runner.clients:
            asyncio.run(client.aclose())

    seen: list[int] = []

    async def spread() -> None:
        gate = asyncio.Event()

        def handler_for(i: int):
            async def handler(request: httpx.Request) -> httpx.Response:
                seen.append(i)
                await gate.wait()
                return httpx.Response(200, json={})

            return handler

        runner.clients = [
            httpx.AsyncClient(base_url=config.url, transport=httpx.MockTransport(handler_for(i))) for i in range(4)
        ]
        runner.busy = [0] * 4
        tasks = [asyncio.create_task(runner.request("GET", "/x", None, 5)) for _ in range(8)]
        while len(seen) < 8:
            await asyncio.sleep(0.01)
        assert runner.busy == [2, 2, 2, 2]
        gate.set()
        await asyncio.gather(*tasks)
        assert runner.busy == [0, 0, 0, 0]

    asyncio.run(spread())
    assert sorted(seen) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_open_loop_overload_mode(model_store, tiny_lm_path, tmp_path, monkeypatch) -> None:
    """--rate: arrivals at a fixed rate whatever the answers; with a short server deadline every answer comes within
    deadline + 1 s, refusals carry Retry-After, and no acknowledged write is lost (mechanics only: no figure)."""
    for name in ("GPO_DATABASE_URL", "GPO_REDIS_URL", "GPO_WORKER_URL"):
        monkeypatch.delenv(name, raising=False)
    config = _config()
    config.duration_s, config.rate, config.max_in_flight, config.answer_bound_s = 4.0, 60.0, 100, 3.0
    env = {**_server_env(model_store, tiny_lm_path, tmp_path, None), "GPO_REQUEST_TIMEOUT_S": "2"}
    report = load.run(config, env=env)
    assert report["passed"], (report["failures"], report.get("server_log_tail", ""))
    loop, total = report["open_loop"], report["total"]
    assert loop["arrivals"] >= 100 and loop["arrivals"] == total["count"] + loop["not_sent"]
    assert total["slowest_answer_ms"] <= 3000 and total["refused_without_retry_after"] == 0
    assert report["verification"]["lost_acknowledged_writes"] == 0
    assert "open loop: 60 requests/s offered" in load.format_report(report)


def test_overload_keeps_each_server_traceback_whole() -> None:
    """The overload benchmark explains a 5xx by the server's own log: a chained traceback is kept to its last line
    (the exception that made the 500), not cut at a fixed number of lines."""
    from benchmarks.overload import logged_errors

    log = [
        "INFO started",
        "2026 ERROR service.api.errors: unhandled error on POST /generate",
        "Traceback (most recent call last):",
        '  File "batching.py", line 112, in submit',
        "    return await call.future",
        "asyncio.exceptions.CancelledError",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        *[f'  File "frame{i}.py", line {i}, in f' for i in range(60)],
        "ValueError: The truth value of an array with more than one element is ambiguous.",
        "INFO next request",
    ]
    (error,) = logged_errors(log)
    assert error.startswith("2026 ERROR") and error.endswith("is ambiguous.") and "frame59" in error
    assert logged_errors(["INFO a", "INFO b"]) == []
