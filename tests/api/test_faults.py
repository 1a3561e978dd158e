"""Fault test: Redis and Postgres are stopped and started again under load, the API is never restarted.

A private Postgres cluster and a private redis-server (own ports, own directories: the shared ones are never
touched) sit under one `gpo serve` process while client threads append context items with unique question
texts and predict. Redis is stopped, then Postgres is crash-stopped (`pg_ctl stop -m immediate`), each started
again on the same port (and data directory). Checked: no 500s, every 503 carries Retry-After, the API keeps
serving while Redis is down and refuses with 503 while Postgres is down, /readyz becomes ready again by itself,
and every acknowledged append is stored exactly once (an unacknowledged one at most once).

GPO_FAULT_SCALE (default 1) multiplies every phase's duration for a longer soak by hand; GPO_FAULT_PG_STOP
(immediate | fast, default immediate) picks how Postgres is stopped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from .conftest import CHECKPOINT, api_key, bearer, context_item, free_port, options_of, question

PG_BIN = Path(os.environ.get("GPO_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SCALE = float(os.environ.get("GPO_FAULT_SCALE", "1"))
PG_STOP_MODE = os.environ.get("GPO_FAULT_PG_STOP", "immediate")
N_CLIENTS = 6
GROUPS = ("fault-a", "fault-b", "fault-c")
REQUEST_TIMEOUT_S = 10.0
READY_WITHIN_S = 30.0


def _missing_binaries() -> str | None:
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).is_file():
            return f"PostgreSQL binaries not found in {PG_BIN} (set GPO_TEST_PG_BIN)"
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot run postgres as the postgres user"
    return None


pytestmark = pytest.mark.skipif(_missing_binaries() is not None, reason=str(_missing_binaries()))


# ---------------------------------------------------------------------------------------------- private servers


class PrivatePostgres:
    """A throwaway cluster on 127.0.0.1:`port`, trust auth, fsync on (committed data survives a crash-stop)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False

    def _run(self, *args: str, timeout: float = 120) -> None:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:  # postgres refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"{args[0]} {args[1:]} failed:\n{out.stdout}\n{out.stderr}\n{self.log_tail()}"

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def init(self) -> None:
        # --no-sync only skips initdb's own final flush; the server runs with fsync on (the default).
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False


class PrivateRedis:
    """redis-server on 127.0.0.1:`port` without persistence, as a child process."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = root / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--daemonize", "no", "--dir", str(self.log.parent)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        try:
            while True:
                assert self.proc.poll() is None, f"redis-server exited:\n{self.log.read_text()[-2000:]}"
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                assert time.monotonic() < deadline, "redis-server did not answer in 20 s"
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def fault_root() -> Iterator[Path]:
    """A directory the postgres user can use (pytest's tmp_path lives under a root-only directory)."""
    root = Path(tempfile.mkdtemp(prefix="gpo-faults-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_postgres(fault_root: Path) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(fault_root)
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        if pg.running or (pg.data / "postmaster.pid").exists():
            try:
                pg.stop("immediate")
            except AssertionError as exc:  # already gone: nothing to stop
                print(f"stopping the private postgres: {exc}")


@pytest.fixture
def private_redis(fault_root: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(fault_root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- load


@dataclass
class Call:
    op: str  # "append" | "predict"
    group: str
    question: str | None  # the appended question (unique), for appends
    t0: float
    t1: float
    status: int | None  # None: transport error (timeout, reset)
    retry_after: str | None
    error: str | None


def _fault_question(worker: int, n: int) -> str:
    return f"Fault test item from client {worker}, number {n}: how much does this matter to you?"


class Load:
    """N_CLIENTS threads that append a unique item to a group, then predict for a group, until stopped."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.base_url = base_url
        self.headers = headers
        self.calls: list[Call] = []
        self.readiness: list[tuple[float, int | None]] = []  # (time, /readyz status), polled all along
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(w,), daemon=True) for w in range(N_CLIENTS)]
        self._threads.append(threading.Thread(target=self._poll_readiness, daemon=True))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(REQUEST_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in self._threads), "a client thread hangs"

    def _call(self, http: httpx.Client, op: str, group: str, path: str, body: dict, q: str | None) -> None:
        t0 = time.monotonic()
        try:
            answer = http.post(path, json=body)
            status, retry_after, error = answer.status_code, answer.headers.get("Retry-After"), None
            if status >= 500 and status != 503:
                error = answer.text[:300]
        except httpx.TransportError as exc:
            status, retry_after, error = None, None, f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.calls.append(Call(op, group, q, t0, time.monotonic(), status, retry_after, error))

    def _loop(self, worker: int) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=REQUEST_TIMEOUT_S) as http:
            n = 0
            while not self._stop.is_set():
                group = GROUPS[(worker + n) % len(GROUPS)]
                q = _fault_question(worker, n)
                opts = options_of(n)
                item = {"question": q, "options": opts, "distribution": [1 / len(opts)] * len(opts)}
                self._call(http, "append", group, f"/groups/{group}/context", {"mode": "append", "items": [item]}, q)
                group = GROUPS[(worker + n + 1) % len(GROUPS)]
                body = {"group_id": group, "questions": [question(n % 24)]}
                self._call(http, "predict", group, "/predict", body, None)
                n += 1
                time.sleep(0.02)

    def _poll_readiness(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S) as http:
            while not self._stop.is_set():
                try:
                    status: int | None = http.get("/readyz").status_code
                except httpx.TransportError:
                    status = None
                self.readiness.append((time.monotonic(), status))
                time.sleep(0.1)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)


def _within(calls: list[Call], start: float, end: float) -> list[Call]:
    """Calls sent at or after `start` and answered at or before `end`."""
    return [c for c in calls if c.t0 >= start and c.t1 <= end]


def _summary(calls: list[Call]) -> dict[str, int]:
    return dict(sorted(Counter(f"{c.op}:{c.status or 'transport'}" for c in calls).items()))


# ---------------------------------------------------------------------------------------------- the API


@dataclass
class Api:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def dump_logs(self, postgres: PrivatePostgres) -> None:
        print(f"--- API log (tail) ---\n{self.log.read_text(errors='replace')[-6000:]}")
        print(f"--- postgres log (tail) ---\n{postgres.log_tail()}")


@pytest.fixture
def api_process(model_store, tiny_lm_path, private_postgres, private_redis, fault_root) -> Iterator[Api]:
    """`gpo serve` on the private Postgres and Redis, ready."""
    port = free_port()
    env = {
        **os.environ,
        "GPO_EMBEDDER": str(tiny_lm_path),
        "GPO_DEVICE": "cpu",
        "GPO_CACHE_DIR": str(fault_root / "cache"),
        "GPO_MODEL_STORE": str(model_store),
        "GPO_CHECKPOINT": CHECKPOINT,
        "GPO_DATABASE_URL": private_postgres.url,
        "GPO_REDIS_URL": private_redis.url,
        "GPO_REDIS_PREFIX": "gpo-fault:",
        "GPO_TORCH_THREADS": "1",
        "GPO_DATABASE_CONNECT_TIMEOUT_S": "2",
        "GPO_RETRY_AFTER_S": "1",
    }
    log_path = fault_root / "api.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = Api(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        try:
            _wait_ready(api.url, proc, 120)
        except AssertionError:
            api.dump_logs(private_postgres)
            raise
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None, within_s: float) -> float:
    """Seconds until /readyz answers 200 (fails past `within_s`)."""
    t0 = time.monotonic()
    while True:
        assert proc is None or proc.poll() is None, "the API exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        assert time.monotonic() - t0 < within_s, f"/readyz not ready within {within_s} s"
        time.sleep(0.2)


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{url}/readyz", timeout=REQUEST_TIMEOUT_S)
    return answer.status_code, answer.json()


def _wait_for(predicate: Callable[[], Any], within_s: float, what: str) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {within_s} s"
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------- the test


def test_redis_and_postgres_restarts_under_load(
    api_process: Api, private_postgres: PrivatePostgres, private_redis: PrivateRedis
) -> None:
    try:
        _fault_run(api_process, private_postgres, private_redis)
        log = api_process.log.read_text(errors="replace")
        assert "Traceback" not in log and "unhandled error" not in log, "the API logged an unexpected error"
    except BaseException:
        api_process.dump_logs(private_postgres)
        raise
    assert api_process.proc.poll() is None, "the API exited"


def _fault_run(api: Api, private_postgres: PrivatePostgres, private_redis: PrivateRedis) -> None:
    url = api.url
    headers = bearer(api_key(private_postgres.url, "faults"))
    with httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S) as http:
        for g, group in enumerate(GROUPS):
            items = [context_item(i) for i in range(3 * g, 3 * g + 3)]
            assert http.post(f"/groups/{group}/context", json={"items": items}).status_code == 200

    times: dict[str, float] = {}
    readyz_seen: dict[str, tuple[int, dict[str, Any]]] = {}
    with Load(url, headers) as load:
        time.sleep(2 * SCALE)

        # --- Redis down: the API keeps serving (cache misses), /readyz says the cache is degraded
        times["redis_stop"] = time.monotonic()
        private_redis.stop()
        times["redis_down"] = time.monotonic()
        readyz_seen["redis down"] = _wait_for(
            lambda: (r := _readyz(url))[1]["checks"]["cache"] == "degraded" and r, 10, "cache degraded"
        )
        time.sleep(max(0.0, 2.5 * SCALE - (time.monotonic() - times["redis_down"])))
        times["redis_start"] = time.monotonic()
        private_redis.start()
        times["redis_up"] = time.monotonic()
        readyz_seen["redis back"] = _wait_for(
            lambda: (r := _readyz(url))[1]["checks"]["cache"] == "ok" and r, 10, "cache ok again"
        )
        time.sleep(2 * SCALE)

        # --- Postgres crash-stopped: 503 with Retry-After, never 500
        times["pg_stop"] = time.monotonic()
        private_postgres.stop(PG_STOP_MODE)
        times["pg_down"] = time.monotonic()
        time.sleep(0.5)
        readyz_seen["postgres down"] = _readyz(url)
        time.sleep(max(0.0, 3 * SCALE - (time.monotonic() - times["pg_down"])))
        times["pg_start"] = time.monotonic()
        private_postgres.start()
        times["pg_up"] = time.monotonic()
        time.sleep(3 * SCALE)
    times["load_end"] = time.monotonic()

    # --- recovery, with the same API process
    recovered_s = _wait_ready(url, api.proc, READY_WITHIN_S)
    readyz_seen["after"] = _readyz(url)
    calls = load.snapshot()

    ready_again = min((t for t, status in load.readiness if t >= times["pg_up"] and status == 200), default=None)
    ready_again_s = "never under load" if ready_again is None else f"{ready_again - times['pg_up']:.2f} s"
    first_ok = min((c.t1 for c in calls if c.t0 >= times["pg_up"] and c.status == 200), default=None)
    first_ok_s = "none" if first_ok is None else f"{first_ok - times['pg_up']:.2f} s"
    redis_down = _within(calls, times["redis_down"], times["redis_start"])
    pg_down = _within(calls, times["pg_down"], times["pg_start"])
    print(
        f"\nfault test (scale {SCALE}, postgres stop -m {PG_STOP_MODE}): {len(calls)} calls"
        f"\n  all:            {_summary(calls)}"
        f"\n  redis down:     {_summary(redis_down)}"
        f"\n  postgres down:  {_summary(pg_down)}"
        f"\n  after restart:  {_summary([c for c in calls if c.t0 >= times['pg_up']])}"
        f"\n  readyz:         {readyz_seen}"
        f"\n  /readyz 200 again {ready_again_s} after postgres was up (pg_ctl start took "
        f"{times['pg_up'] - times['pg_start']:.2f} s; {recovered_s:.2f} s wait after the load stopped)"
        f"\n  first 200 under load {first_ok_s} after postgres was up"
    )

    # No server error but 503, and every 503 says when to retry.
    bad = [c for c in calls if c.status is not None and c.status >= 500 and c.status != 503]
    assert not bad, f"server errors: {[(c.op, c.status, c.error) for c in bad[:5]]}"
    assert all(c.retry_after for c in calls if c.status == 503), "a 503 without Retry-After"
    unexpected = Counter(c.status for c in calls if c.status is not None and c.status not in (200, 503))
    assert not unexpected, f"unexpected statuses: {unexpected}"

    # Redis down: appends and predictions still succeed; the API stays ready with a degraded cache.
    assert readyz_seen["redis down"] == (
        200,
        {"status": "ready", "checks": {"database": "ok", "cache": "degraded", "worker": "ok", "model": "ok"}},
    )
    for op in ("append", "predict"):
        assert any(c.op == op and c.status == 200 for c in redis_down), f"no {op} succeeded while Redis was down"
    assert all(c.status == 200 for c in redis_down), f"failures while Redis was down: {_summary(redis_down)}"

    # Postgres down: refused with 503 (or, for a call in flight, a transport error), not ready.
    assert readyz_seen["postgres down"][0] == 503
    assert readyz_seen["postgres down"][1]["checks"]["database"] == "unavailable"
    assert any(c.status == 503 for c in pg_down), "no request was refused while Postgres was down"
    assert all(c.status in (503, None) for c in pg_down), f"answers while Postgres was down: {_summary(pg_down)}"

    # Transport errors (timeouts, resets) only for calls in flight around the Postgres outage.
    stray = [c for c in calls if c.status is None and (c.t1 < times["pg_stop"] or c.t0 > times["pg_up"])]
    assert not stray, f"transport errors outside the Postgres outage: {[(c.op, c.error) for c in stray[:5]]}"

    # Recovered without a restart: ready, and new writes and predictions succeed.
    assert readyz_seen["after"] == (
        200,
        {"status": "ready", "checks": {"database": "ok", "cache": "ok", "worker": "ok", "model": "ok"}},
    )
    with httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S) as http:
        after_q = "Fault test item written after recovery: how much does this matter to you?"
        after = {"question": after_q, "options": ["Yes", "No"], "distribution": [0.5, 0.5]}
        written = http.post(f"/groups/{GROUPS[0]}/context", json={"mode": "append", "items": [after]})
        assert written.status_code == 200, written.text
        predicted = http.post("/predict", json={"group_id": GROUPS[0], "questions": [question(1)]})
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["context_version"] == written.json()["version"]
        stored = {}
        for group in GROUPS:
            answer = http.get(f"/groups/{group}/context")
            assert answer.status_code == 200, answer.text
            stored[group] = Counter(item["question"] for item in answer.json()["items"])

    # Every acknowledged append is stored exactly once; an unacknowledged one at most once.
    appends = [c for c in calls if c.op == "append"]
    acked = [c for c in appends if c.status == 200]
    unacked = [c for c in appends if c.status != 200]
    lost = [c.question for c in acked if stored[c.group][c.question] != 1]
    assert not lost, f"{len(lost)} acknowledged appends not stored exactly once, e.g. {lost[:3]}"
    doubled = [c.question for c in unacked if stored[c.group][c.question] > 1]
    assert not doubled, f"unacknowledged appends stored twice: {doubled[:3]}"
    assert stored[GROUPS[0]][after_q] == 1
    present_unacked = sum(stored[c.group][c.question] for c in unacked)
    print(
        f"  appends: {len(acked)} acknowledged (all stored once), {len(unacked)} not acknowledged "
        f"({present_unacked} of them stored anyway, {sum(c.status is None for c in unacked)} transport errors)"
    )
