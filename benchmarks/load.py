"""A bounded, mixed load run against `gpo serve`, with a check that no acknowledged write was lost.

Usage:
    .venv/bin/python -m benchmarks.load [--spawn | --url http://127.0.0.1:PORT --api-key KEY] [options]

Target:
    --spawn (the default without --url) starts `gpo serve` on a free loopback port with the current GPO_*
    environment (plus a temporary SQLite database unless GPO_DATABASE_URL is set), creates a key with
    `gpo keys create load-TIMESTAMP` in that database, waits for /readyz and stops the server at the end
    (also on Ctrl-C or an error). --url targets a running service (loopback hosts only: 127.0.0.0/8, ::1,
    localhost; any other host exits with code 2); its key comes from --api-key or GPO_LOAD_API_KEY.

Run:
    Every group (--groups, ids load-<run>-NNN) is first seeded with --seed-items context items (mode replace).
    Then --clients closed-loop clients send requests back to back for --duration seconds, each picking an
    operation at random by the weights of --mix (default register=0.2,predict=0.65,generate=0.1,read=0.05;
    normalised; 0 leaves an operation out) and a group uniformly:
        register  POST /groups/{id}/context, mode append, --items-per-append items with unique questions
        predict   POST /predict, --questions-per-predict questions drawn from a fixed pool
        generate  POST /generate, n=--generate-n, max_new_tokens=--generate-tokens (unseeded unless
                  --generate-seeded: unseeded calls may share one sampling call on the server)
        read      GET /groups/{id}/context
    A 429 (back-pressure) is counted on its own and the client waits min(Retry-After, 2 s) before its next
    request. Requests in flight at the deadline finish (each has a timeout: --timeout, --generate-timeout).
    Afterwards every group's context is read back: every acknowledged (2xx) write must be there, no write
    refused with a 4xx may be there, and no two acknowledged appends of a group may share a version.
    In --url mode the groups are deleted at the end unless --keep-groups.

Bounds: --clients <= 200, --duration <= 600 s, --groups <= 1000, every timeout <= 600 s.

Report: a table on stdout per operation (count, 2xx, 4xx by code, 429, 5xx by code, transport errors,
invalid 2xx bodies, p50/p99 latency of the 2xx answers in ms, requests/s) and the totals; --json PATH writes
the same figures. Exit code: 0; 1 on any 5xx, transport error, invalid 2xx body, lost or phantom write, a
failed seeding or a server that did not start or died; 2 on bad options or a non-loopback URL; 130 on Ctrl-C.

Examples:
    .venv/bin/python -m benchmarks.load --duration 60 --clients 50
    .venv/bin/python -m benchmarks.load --url http://127.0.0.1:8000 --api-key "$KEY" --mix predict=1 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

OPS = ("register", "predict", "generate", "read")
DEFAULT_MIX = {"register": 0.2, "predict": 0.65, "generate": 0.1, "read": 0.05}

MAX_CLIENTS = 200
CONNECTIONS_PER_CLIENT = 32  # connections per httpx client: its pool costs grow with the requests it holds
MAX_DURATION_S = 600.0
MAX_GROUPS = 1000
MAX_TIMEOUT_S = 600.0
LOOPBACK_NAMES = ("localhost",)

_OPTION_SETS = (
    ["Yes", "No"],
    ["Agree", "Disagree", "Not sure"],
    ["A great deal", "Some", "Not too much", "Not at all"],
    ["Very likely", "Somewhat likely", "Somewhat unlikely", "Very unlikely", "No opinion"],
)
_TOPICS = ("public transport", "local schools", "online privacy", "remote work", "food prices", "city parks",
           "energy costs", "public libraries")  # fmt: skip
# Predictions ask a fixed pool of questions: after the first time, their embeddings come from the cache.
PREDICT_POOL = tuple(
    {"question": f"How much do you care about {topic} ({i})?", "options": _OPTION_SETS[(i + j) % len(_OPTION_SETS)]}
    for j, topic in enumerate(_TOPICS)
    for i in range(3)
)
PROMPTS = (
    "Write one sentence on what matters most in a neighbourhood.",
    "Say in a few words what a good weekend looks like.",
    "Describe your ideal commute in one sentence.",
    "Name one thing a city should spend more money on.",
)


class LoadError(RuntimeError):
    """The run could not take place (the server did not start, seeding failed, ...)."""


class UsageError(ValueError):
    """Bad options or a refused target: exit code 2."""


@dataclass
class LoadConfig:
    """Everything a run needs; `url=None` spawns a server (see `spawned_server`)."""

    url: str | None = None
    api_key: str | None = None
    clients: int = 50
    duration_s: float = 60.0
    groups: int = 20
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    seed_items: int = 6
    items_per_append: int = 1
    questions_per_predict: int = 3
    generate_n: int = 2
    generate_tokens: int = 8
    generate_temperature: float = 0.9
    generate_seeded: bool = False
    timeout_s: float = 60.0
    generate_timeout_s: float = 120.0
    ready_timeout_s: float = 300.0
    seed: int = 0
    keep_groups: bool = False
    # Open loop (overload): `rate` requests/s arrive (Poisson) whatever the answers, up to `max_in_flight` at once;
    # 0: the closed loop of `clients`. A 503 with Retry-After is then a refusal, not a server error, and every
    # answer must come within `answer_bound_s` (the server's deadline + 1 s) when it is set.
    rate: float = 0.0
    max_in_flight: int = 400
    answer_bound_s: float | None = None

    def validate(self) -> None:
        """Raises UsageError when a value is out of its bounds (or the URL is not loopback)."""

        def check(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        if self.url is not None:
            check_loopback(self.url)
        check(1 <= self.clients <= MAX_CLIENTS, f"--clients must be in 1..{MAX_CLIENTS}, got {self.clients}")
        check(0 < self.duration_s <= MAX_DURATION_S, f"--duration must be in (0, {MAX_DURATION_S:g}] s")
        check(1 <= self.groups <= MAX_GROUPS, f"--groups must be in 1..{MAX_GROUPS}, got {self.groups}")
        check(1 <= self.seed_items <= 100, "--seed-items must be in 1..100")
        check(1 <= self.items_per_append <= 50, "--items-per-append must be in 1..50")
        check(1 <= self.questions_per_predict <= len(PREDICT_POOL), f"--questions-per-predict: 1..{len(PREDICT_POOL)}")
        check(1 <= self.generate_n <= 16, "--generate-n must be in 1..16")
        check(1 <= self.generate_tokens <= 512, "--generate-tokens must be in 1..512")
        check(0.0 <= self.generate_temperature <= 2.0, "--generate-temperature must be in [0, 2]")
        check(0 <= self.rate <= 5000 and math.isfinite(self.rate), "--rate must be in [0, 5000] requests/s")
        check(1 <= self.max_in_flight <= 2000, "--max-in-flight must be in 1..2000")
        for name in ("timeout_s", "generate_timeout_s", "ready_timeout_s"):
            value = getattr(self, name)
            check(0 < value <= MAX_TIMEOUT_S, f"--{name[:-2].replace('_', '-')} must be in (0, {MAX_TIMEOUT_S:g}] s")
        unknown = set(self.mix) - set(OPS)
        check(not unknown, f"--mix: unknown operation(s) {sorted(unknown)}; known: {', '.join(OPS)}")
        check(all(w >= 0 and math.isfinite(w) for w in self.mix.values()), "--mix: weights must be >= 0")
        check(sum(self.mix.values()) > 0, "--mix: at least one weight must be > 0")


def check_loopback(url: str) -> None:
    """Raises UsageError unless `url` is http(s) on a loopback host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise UsageError(f"refusing {url!r}: expected http://HOST:PORT with a loopback host")
    if host.lower() in LOOPBACK_NAMES:
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(f"refusing {url!r}: host {host!r} is not loopback (127.0.0.1, ::1, localhost); this "
                         "load script only targets a service on this machine")  # fmt: skip


def parse_mix(text: str) -> dict[str, float]:
    """'register=0.2,predict=0.7' -> weights (operations left out weigh 0)."""
    mix = dict.fromkeys(OPS, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in OPS:
            raise UsageError(f"--mix: expected OP=WEIGHT with OP in {', '.join(OPS)}, got {part!r}")
        try:
            mix[name.strip()] = float(value)
        except ValueError as exc:
            raise UsageError(f"--mix: {part!r} has no number") from exc
    return mix


# ---------------------------------------------------------------------------------------------- spawned server


@dataclass
class Target:
    url: str
    api_key: str | None
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Until GET /readyz answers 200; LoadError when `proc` exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        if proc is not None and proc.poll() is not None:
            raise LoadError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise LoadError(f"{url}/readyz not ready after {timeout_s:g} s (last: {last})")
        time.sleep(0.25)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def spawned_worker(
    env: Mapping[str, str] | None = None, ready_timeout_s: float = 300.0, nice: int = 0
) -> Iterator[str]:
    """`gpo worker` (the base LLM as its own process) on a free loopback port with os.environ updated by `env`;
    yields its URL (for GPO_WORKER_URL); stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="gpo-worker-") as tmp:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(Path(tmp) / "worker.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    *(["nice", "-n", str(nice)] if nice > 0 else []),
                    *(sys.executable, "-m", "service.cli", "worker", "--host", "127.0.0.1", "--port", str(port)),
                ],
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                try:
                    wait_ready(url, ready_timeout_s, proc)
                except LoadError as exc:
                    tail = (Path(tmp) / "worker.log").read_bytes()[-4000:].decode(errors="replace")
                    raise LoadError(f"worker: {exc}\n--- worker log (tail) ---\n{tail}") from None
                yield url
            finally:
                _stop(proc)


@contextmanager
def spawned_server(
    env: Mapping[str, str] | None = None, ready_timeout_s: float = 300.0, nice: int = 0
) -> Iterator[Target]:
    """`gpo serve` on a free loopback port with os.environ updated by `env` (a temporary SQLite database unless
    GPO_DATABASE_URL is set) and a fresh key of tenant load-TIMESTAMP; stopped on exit. `nice` > 0 runs the server
    at that lower CPU priority, so that on shared cores the load generator's clock is not starved by it."""
    with tempfile.TemporaryDirectory(prefix="gpo-load-") as tmp:
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("GPO_DATABASE_URL", f"sqlite:///{Path(tmp) / 'load.sqlite3'}")
        cli = [sys.executable, "-m", "service.cli"]
        tenant = f"load-{time.strftime('%Y%m%d-%H%M%S')}"
        out = subprocess.run(
            [*cli, "keys", "create", tenant, "--name", "benchmarks.load"],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if out.returncode != 0 or not out.stdout.strip():
            raise LoadError(f"`gpo keys create {tenant}` failed ({out.returncode}): {out.stderr[-2000:]}")
        secret = out.stdout.strip().splitlines()[-1].strip()
        port = free_port()
        log_path = Path(tmp) / "serve.log"
        with open(log_path, "wb") as log:
            # Own session: a Ctrl-C in the terminal reaches this script, which then stops the server itself.
            proc = subprocess.Popen(
                [
                    *(["nice", "-n", str(nice)] if nice > 0 else []),
                    *cli,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            target = Target(f"http://127.0.0.1:{port}", secret, proc, log_path)
            try:
                try:
                    wait_ready(target.url, ready_timeout_s, proc)
                except LoadError as exc:
                    raise LoadError(f"{exc}\n--- server log (tail) ---\n{target.log_tail()}") from None
                yield target
            finally:
                _stop(proc)


# ---------------------------------------------------------------------------------------------- statistics


SEED_PATIENCE_S = 300.0  # how long seeding retries a refused write before the run fails


@dataclass
class OpStats:
    latencies_ok_s: list[float] = field(default_factory=list)
    count: int = 0
    ok: int = 0
    status_4xx: Counter = field(default_factory=Counter)  # without 429
    throttled_429: int = 0
    status_5xx: Counter = field(default_factory=Counter)
    transport: Counter = field(default_factory=Counter)
    bad_body: int = 0
    slowest_s: float = 0.0  # the longest wait for any answer (any status)
    refused_503: int = 0  # 503 with Retry-After (open loop: a refusal; closed loop: also in status_5xx)
    refused_without_retry_after: int = 0  # a 429 or 503 without Retry-After
    over_bound: int = 0  # answers slower than `answer_bound_s`

    def merge(self, other: OpStats) -> None:
        self.latencies_ok_s += other.latencies_ok_s
        self.count += other.count
        self.ok += other.ok
        self.status_4xx.update(other.status_4xx)
        self.throttled_429 += other.throttled_429
        self.status_5xx.update(other.status_5xx)
        self.transport.update(other.transport)
        self.bad_body += other.bad_body
        self.slowest_s = max(self.slowest_s, other.slowest_s)
        self.refused_503 += other.refused_503
        self.refused_without_retry_after += other.refused_without_retry_after
        self.over_bound += other.over_bound

    def summary(self, wall_s: float) -> dict[str, Any]:
        def pct(q: float) -> float | None:
            return round(float(np.percentile(self.latencies_ok_s, q)) * 1000, 2) if self.latencies_ok_s else None

        return {
            "count": self.count,
            "ok": self.ok,
            "status_4xx": {str(k): v for k, v in sorted(self.status_4xx.items())},
            "throttled_429": self.throttled_429,
            "status_5xx": {str(k): v for k, v in sorted(self.status_5xx.items())},
            "server_errors": sum(self.status_5xx.values()),
            "transport_errors": sum(self.transport.values()),
            "transport": dict(sorted(self.transport.items())),
            "bad_body": self.bad_body,
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "rps": round(self.count / wall_s, 2) if wall_s > 0 else 0.0,
            "ok_rps": round(self.ok / wall_s, 2) if wall_s > 0 else 0.0,
            "slowest_answer_ms": round(self.slowest_s * 1000, 1),
            "refused_503": self.refused_503,
            "refused_without_retry_after": self.refused_without_retry_after,
            "over_answer_bound": self.over_bound,
        }


@dataclass
class WriteLog:
    """Per group: questions of acknowledged writes, of writes refused with a 4xx, versions of acknowledged appends."""

    acked: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    refused: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    versions: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))


# ---------------------------------------------------------------------------------------------- requests


def _item(rng: random.Random) -> dict[str, Any]:
    options = _OPTION_SETS[rng.randrange(len(_OPTION_SETS))]
    weights = [rng.random() + 0.05 for _ in options]
    total = math.fsum(weights)
    return {
        "question": f"load question {uuid.uuid4().hex}?",
        "options": list(options),
        "distribution": [w / total for w in weights],
    }


def _valid_body(op: str, payload: Any, request: dict[str, Any] | None) -> bool:
    """A 2xx answer has the shape of its route (and predictions are distributions over the asked options)."""
    try:
        if op == "register":
            return isinstance(payload["version"], int) and isinstance(payload["size"], int)
        if op == "predict":
            preds = payload["predictions"]
            assert request is not None
            if len(preds) != len(request["questions"]):
                return False
            for pred, q in zip(preds, request["questions"], strict=True):
                dist = pred["distribution"]
                if len(dist) != len(q["options"]) or abs(math.fsum(dist) - 1.0) > 1e-3:
                    return False
            return True
        if op == "generate":
            responses = payload["responses"]
            return 1 <= len(responses) and all(isinstance(r["text"], str) for r in responses)
        if op == "read":
            return isinstance(payload["items"], list)
    except (KeyError, TypeError, AssertionError):
        return False
    return False


class Runner:
    def __init__(self, config: LoadConfig, target: Target) -> None:
        self.config = config
        self.target = target
        self.run_id = uuid.uuid4().hex[:8]
        self.group_ids = [f"load-{self.run_id}-{i:03d}" for i in range(config.groups)]
        self.stats = {op: OpStats() for op in OPS}
        self.writes = WriteLog()
        self.arrivals = 0  # open loop: requests due, and those not sent (max_in_flight open)
        self.not_sent = 0
        self.lag_max_s = 0.0  # open loop: the longest this process's event loop was late, and how often by > 0.5 s
        self.lags_over_half_s = 0
        connections = (config.max_in_flight if config.rate > 0 else config.clients) + 4
        headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
        # Several small clients, not one big one: one httpx client with hundreds of requests in flight spends
        # its event loop's time on its own pool (measured: ~600 in flight stalled the loop 4 s and a 3 s answer
        # was timed at 5.1 s; 32 clients: 7 ms and 3.00 s), so the generator timed its own delays.
        shards = max(1, -(-connections // CONNECTIONS_PER_CLIENT))
        per_client = -(-connections // shards)
        self.clients = [
            httpx.AsyncClient(
                base_url=target.url,
                headers=headers,
                timeout=config.timeout_s,
                limits=httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client),
            )
            for _ in range(shards)
        ]
        self.busy = [0] * shards  # requests in flight on each client: a request goes to the least busy

    async def request(
        self, method: str, path: str, body: dict[str, Any] | None, timeout_s: float
    ) -> tuple[httpx.Response | None, str | None, float]:
        """(response, transport error kind, latency in s)."""
        shard = min(range(len(self.clients)), key=self.busy.__getitem__)
        self.busy[shard] += 1
        t0 = time.perf_counter()
        try:
            r = await self.clients[shard].request(method, path, json=body, timeout=timeout_s)
            return r, None, time.perf_counter() - t0
        except httpx.TimeoutException as exc:
            return None, f"timeout:{type(exc).__name__}", time.perf_counter() - t0
        except httpx.TransportError as exc:
            return None, type(exc).__name__, time.perf_counter() - t0
        finally:
            self.busy[shard] -= 1

    async def append(
        self, group: str, items: list[dict[str, Any]], stats: OpStats, mode: str = "append"
    ) -> tuple[int, httpx.Response | None]:
        """One context write; records the outcome. Returns (status: 0 on a transport error, negative for an
        invalid 2xx body; the response)."""
        body = {"mode": mode, "items": items}
        r, err, dt = await self.request("POST", f"/groups/{group}/context", body, self.config.timeout_s)
        questions = {it["question"] for it in items}
        status = self._record(stats, "register", r, err, dt, body)
        if 200 <= status < 300:
            self.writes.acked[group] |= questions
            if mode == "append" and r is not None:
                self.writes.versions[group].append(r.json()["version"])
        elif 400 <= status < 500 and status != 429:
            self.writes.refused[group] |= questions
        return status, r

    def _record(
        self,
        stats: OpStats,
        op: str,
        r: httpx.Response | None,
        err: str | None,
        dt: float,
        body: dict[str, Any] | None,
    ) -> int:
        stats.count += 1
        stats.slowest_s = max(stats.slowest_s, dt)
        if self.config.answer_bound_s is not None and dt > self.config.answer_bound_s:
            stats.over_bound += 1
        if r is None:
            stats.transport[err or "error"] += 1
            return 0
        status = r.status_code
        if status in (429, 503) and "retry-after" not in r.headers:
            stats.refused_without_retry_after += 1
        if status == 503 and "retry-after" in r.headers:
            stats.refused_503 += 1  # the deadline or a queue refused it
            if self.config.rate > 0:
                return status  # open loop: a refusal, as it should be; closed loop: also a server error below
        if 200 <= status < 300:
            try:
                valid = _valid_body(op, r.json(), body)
            except ValueError:
                valid = False
            if valid:
                stats.ok += 1
                stats.latencies_ok_s.append(dt)
            else:
                stats.bad_body += 1
                return -status  # not acknowledged
        elif status == 429:
            stats.throttled_429 += 1
        elif status >= 500:
            stats.status_5xx[status] += 1
        else:
            stats.status_4xx[status] += 1
        return status

    async def seed(self) -> OpStats:
        """Every group replaced by `seed_items` fresh items; LoadError when one write is not acknowledged."""
        stats = OpStats()
        rng = random.Random(self.config.seed)
        sem = asyncio.Semaphore(max(1, min(self.config.clients, 8)))
        statuses: dict[str, int] = {}

        async def one(group: str) -> None:
            async with sem:
                items = [_item(rng) for _ in range(self.config.seed_items)]
                # Set-up, not measurement: a busy server (a cold model at start-up) refuses with Retry-After; wait and
                # write again for up to SEED_PATIENCE_S.
                give_up = time.perf_counter() + SEED_PATIENCE_S
                while True:
                    statuses[group], r = await self.append(group, items, stats, mode="replace")
                    refused = statuses[group] in (429, 503) and r is not None and "retry-after" in r.headers
                    # a transport error: a replace is idempotent, so writing again is safe
                    if not (refused or statuses[group] == 0) or time.perf_counter() >= give_up:
                        break
                    await asyncio.sleep(min(float(r.headers["retry-after"]), 5.0) if refused else 1.0)

        await asyncio.gather(*(one(g) for g in self.group_ids))
        failed = {g: s for g, s in statuses.items() if not 200 <= s < 300}
        if failed:
            shown = dict(Counter(failed.values()))
            raise LoadError(
                f"seeding failed for {len(failed)} of {len(self.group_ids)} groups (statuses {shown}; "
                f"0 = transport error: {dict(stats.transport)}, negative = invalid 2xx body)"
            )
        return stats

    async def one_operation(self, rng: random.Random) -> tuple[int, httpx.Response | None]:
        """One request of an operation drawn by the mix, on a random group; recorded. (status, response)."""
        cfg = self.config
        ops = [op for op in OPS if cfg.mix.get(op, 0) > 0]
        op = rng.choices(ops, [cfg.mix[o] for o in ops])[0]
        group = rng.choice(self.group_ids)
        stats = self.stats[op]
        if op == "register":
            items = [_item(rng) for _ in range(cfg.items_per_append)]
            return await self.append(group, items, stats)
        if op == "predict":
            body = {"group_id": group, "questions": rng.sample(PREDICT_POOL, cfg.questions_per_predict)}
            r, err, dt = await self.request("POST", "/predict", body, cfg.timeout_s)
        elif op == "generate":
            body = {
                "group_id": group,
                "prompt": rng.choice(PROMPTS),
                "n": cfg.generate_n,
                "max_new_tokens": cfg.generate_tokens,
                "temperature": cfg.generate_temperature,
            }
            if cfg.generate_seeded:
                body["seed"] = rng.randrange(2**31)
            r, err, dt = await self.request("POST", "/generate", body, cfg.generate_timeout_s)
        else:
            body = None
            r, err, dt = await self.request("GET", f"/groups/{group}/context", None, cfg.timeout_s)
        return self._record(stats, op, r, err, dt, body), r

    async def client_loop(self, index: int, deadline: float) -> None:
        rng = random.Random(self.config.seed * 1_000_003 + index + 1)
        while time.perf_counter() < deadline:
            status, r = await self.one_operation(rng)
            if status == 429:
                await self._back_off(r, deadline)

    async def open_loop(self, deadline: float) -> None:
        """Requests arrive at `rate` per second (exponential gaps) whatever the answers; an arrival while
        `max_in_flight` are open is not sent (counted: the load generator, not the server, was the limit)."""
        cfg = self.config
        rng = random.Random(cfg.seed * 7_919 + 1)
        in_flight: set[asyncio.Task] = set()
        next_at = time.perf_counter()
        while True:
            next_at += rng.expovariate(cfg.rate)
            if next_at >= deadline:
                break
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            self.arrivals += 1
            if len(in_flight) >= cfg.max_in_flight:
                self.not_sent += 1
                continue
            task = asyncio.create_task(self.one_operation(random.Random(rng.getrandbits(64))))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)

    async def _loop_lag(self, tick_s: float = 0.05) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(tick_s)
            late = time.perf_counter() - t0 - tick_s
            self.lag_max_s = max(self.lag_max_s, late)
            self.lags_over_half_s += late > 0.5

    async def _back_off(self, r: httpx.Response | None, deadline: float) -> None:
        try:
            wait = float(r.headers.get("Retry-After", 1)) if r is not None else 1.0
        except ValueError:
            wait = 1.0
        await asyncio.sleep(max(0.0, min(wait, 2.0, deadline - time.perf_counter())))

    async def verify(self) -> dict[str, Any]:
        """Read every group back: acknowledged questions must be there, refused ones must not."""
        lost: list[str] = []
        phantom: list[str] = []
        errors: Counter = Counter()
        sem = asyncio.Semaphore(8)

        async def one(group: str) -> None:
            async with sem:
                r, err, _ = await self.request("GET", f"/groups/{group}/context", None, self.config.timeout_s)
            if r is None or r.status_code != 200:
                errors[err or str(r.status_code if r is not None else "error")] += 1
                lost.extend(f"{group}: {q} (unreadable)" for q in self.writes.acked.get(group, ()))
                return
            present = {item["question"] for item in r.json()["items"]}
            lost.extend(f"{group}: {q}" for q in sorted(self.writes.acked.get(group, set()) - present))
            phantom.extend(f"{group}: {q}" for q in sorted(self.writes.refused.get(group, set()) & present))

        await asyncio.gather(*(one(g) for g in self.group_ids))
        duplicate_versions = sum(len(v) - len(set(v)) for v in self.writes.versions.values())
        return {
            "groups_checked": len(self.group_ids),
            "acknowledged_writes": sum(len(v) for v in self.writes.acked.values()),
            "lost_acknowledged_writes": len(lost),
            "lost_examples": lost[:10],
            "refused_writes_stored": len(phantom),
            "refused_examples": phantom[:10],
            "duplicate_append_versions": duplicate_versions,
            "read_errors": dict(errors),
        }

    async def cleanup(self) -> dict[str, int]:
        statuses: Counter = Counter()
        for group in self.group_ids:
            r, err, _ = await self.request("DELETE", f"/groups/{group}", None, self.config.timeout_s)
            statuses[str(r.status_code) if r is not None else (err or "error")] += 1
        return dict(statuses)

    async def run(self) -> dict[str, Any]:
        cfg = self.config
        report: dict[str, Any] = {"target": self.target.url, "run_id": self.run_id, "config": _public_config(cfg)}
        try:
            t0 = time.perf_counter()
            seed_stats = await self.seed()
            report["seeding"] = {**seed_stats.summary(time.perf_counter() - t0), "wall_s": _r(time.perf_counter() - t0)}
            start = time.perf_counter()
            deadline = start + cfg.duration_s
            if cfg.rate > 0:
                lag = asyncio.create_task(self._loop_lag())
                await self.open_loop(deadline)
                lag.cancel()
                report["open_loop"] = {
                    "offered_rps": cfg.rate,
                    "arrivals": self.arrivals,
                    "not_sent": self.not_sent,
                    # this load generator's own event loop: how late a 50 ms timer fired (a late timer delays
                    # every answer it measures, whatever the server did)
                    "client_loop_lag_max_ms": round(self.lag_max_s * 1000, 1),
                    "client_loop_lags_over_500ms": self.lags_over_half_s,
                }
            else:
                await asyncio.gather(*(self.client_loop(i, deadline) for i in range(cfg.clients)))
            wall = time.perf_counter() - start
            report["wall_s"] = _r(wall)
            report["operations"] = {op: self.stats[op].summary(wall) for op in OPS}
            total = OpStats()
            for op in OPS:
                total.merge(self.stats[op])
            report["total"] = total.summary(wall)
            report["verification"] = await self.verify()
            if self.target.proc is None and not cfg.keep_groups:
                report["cleanup"] = await self.cleanup()
        finally:
            for client in self.clients:
                await client.aclose()
        return report


def _r(x: float) -> float:
    return round(x, 3)


def _public_config(cfg: LoadConfig) -> dict[str, Any]:
    out = asdict(cfg)
    out.pop("api_key", None)
    return out


def failures(report: dict[str, Any]) -> list[str]:
    """Why the run fails (empty: it passes)."""
    out = list(report.get("errors", []))
    total = report.get("total")
    if total:
        if total["server_errors"]:
            out.append(f"{total['server_errors']} server errors (5xx)")
        if total["transport_errors"]:
            out.append(f"{total['transport_errors']} transport errors")
        if total["bad_body"]:
            out.append(f"{total['bad_body']} invalid 2xx bodies")
        if total.get("refused_without_retry_after"):
            out.append(f"{total['refused_without_retry_after']} refusals (429/503) without Retry-After")
        if total.get("over_answer_bound"):
            out.append(f"{total['over_answer_bound']} answers slower than the bound")
    v = report.get("verification")
    if v:
        if v["lost_acknowledged_writes"]:
            out.append(f"{v['lost_acknowledged_writes']} acknowledged writes lost")
        if v["refused_writes_stored"]:
            out.append(f"{v['refused_writes_stored']} writes refused with a 4xx were stored")
        if v["duplicate_append_versions"]:
            out.append(f"{v['duplicate_append_versions']} acknowledged appends share a version")
        if v["read_errors"]:
            out.append(f"verification reads failed: {v['read_errors']}")
    return out


def _run_on(config: LoadConfig, target: Target) -> dict[str, Any]:
    report = asyncio.run(Runner(config, target).run())
    if target.proc is not None and target.proc.poll() is not None:
        report.setdefault("errors", []).append(f"the server exited during the run (code {target.proc.returncode})")
        report["server_log_tail"] = target.log_tail()
    return report


def run(config: LoadConfig, *, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One load run; returns the report (with "failures" and "passed"). `config.url=None` spawns a server with
    os.environ updated by `env`. Raises UsageError on bad options, LoadError when the run cannot take place."""
    config.validate()
    if config.url is not None:
        target = Target(config.url.rstrip("/"), config.api_key)
        wait_ready(target.url, config.ready_timeout_s)
        report = _run_on(config, target)
    else:
        with spawned_server(env, config.ready_timeout_s) as target:
            report = _run_on(config, target)
    report["failures"] = failures(report)
    report["passed"] = not report["failures"]
    return report


# ---------------------------------------------------------------------------------------------- report


def format_report(report: dict[str, Any]) -> str:
    cfg = report["config"]

    def codes(counter: dict[str, int]) -> str:
        return ",".join(f"{k}:{v}" for k, v in counter.items()) or "0"

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    head = ("op", "count", "2xx", "4xx", "429", "5xx", "transport", "bad", "p50 ms", "p99 ms", "req/s")
    rows = [head]
    for name, s in [*report["operations"].items(), ("total", report["total"])]:
        rows.append((name, str(s["count"]), str(s["ok"]), codes(s["status_4xx"]), str(s["throttled_429"]),
                     codes(s["status_5xx"]), codes(s["transport"]), str(s["bad_body"]), ms(s["p50_ms"]),
                     ms(s["p99_ms"]), f"{s['rps']:.1f}"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    mix = ",".join(f"{k}={v:g}" for k, v in cfg["mix"].items())
    seeding = report["seeding"]
    lines = [
        f"target {report['target']}  run {report['run_id']}  clients {cfg['clients']}  "
        f"duration {cfg['duration_s']:g} s (wall {report['wall_s']:.1f} s)  groups {cfg['groups']}  mix {mix}",
        f"seeding: {seeding['ok']}/{seeding['count']} groups in {seeding['wall_s']:.1f} s",
        "latency percentiles are over 2xx answers",
    ]
    for i, r in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    t = report["total"]
    if "open_loop" in report:
        o = report["open_loop"]
        lines.append(
            f"open loop: {o['offered_rps']:g} requests/s offered, {o['arrivals']} arrived, {o['not_sent']} not sent "
            f"(max in flight); served {t['ok_rps']:.1f}/s; refused: 429 {t['throttled_429']}, 503 {t['refused_503']}"
            f" ({t['refused_without_retry_after']} without Retry-After)"
        )
    lines.append(
        f"slowest answer (any status) {t['slowest_answer_ms']:.0f} ms"
        + (
            f"; {t['over_answer_bound']} over the {cfg['answer_bound_s']:g} s bound"
            if cfg.get("answer_bound_s")
            else ""
        )
    )
    v = report["verification"]
    lines.append(
        f"verification: {v['acknowledged_writes']} acknowledged writes in {v['groups_checked']} groups, "
        f"{v['lost_acknowledged_writes']} lost, {v['refused_writes_stored']} refused-but-stored, "
        f"{v['duplicate_append_versions']} duplicate versions, read errors {v['read_errors'] or 0}"
    )
    for example in v["lost_examples"]:
        lines.append(f"  lost: {example}")
    if "cleanup" in report:
        lines.append(f"cleanup (DELETE /groups/...): {report['cleanup']}")
    lines.append("PASS" if report["passed"] else "FAIL: " + "; ".join(report["failures"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description="Bounded mixed load against gpo serve (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = LoadConfig()
    target = p.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running service (loopback only); default: --spawn")
    target.add_argument("--spawn", action="store_true", help="start gpo serve here (the default without --url)")
    p.add_argument("--api-key", default=os.environ.get("GPO_LOAD_API_KEY"), help="key for --url ($GPO_LOAD_API_KEY)")
    p.add_argument("--clients", type=int, default=d.clients, help=f"concurrent clients (<= {MAX_CLIENTS})")
    p.add_argument("--duration", type=float, default=d.duration_s, help=f"timed phase, s (<= {MAX_DURATION_S:g})")
    p.add_argument("--groups", type=int, default=d.groups, help=f"group ids (<= {MAX_GROUPS})")
    p.add_argument("--mix", default=",".join(f"{k}={v:g}" for k, v in DEFAULT_MIX.items()), help="OP=WEIGHT,...")
    p.add_argument("--seed-items", type=int, default=d.seed_items, help="context items per group before the run")
    p.add_argument("--items-per-append", type=int, default=d.items_per_append)
    p.add_argument("--questions-per-predict", type=int, default=d.questions_per_predict)
    p.add_argument("--generate-n", type=int, default=d.generate_n)
    p.add_argument("--generate-tokens", type=int, default=d.generate_tokens, help="max_new_tokens of /generate")
    p.add_argument("--generate-temperature", type=float, default=d.generate_temperature)
    p.add_argument("--generate-seeded", action="store_true", help="send a random seed with every /generate")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="per request, s (all but /generate)")
    p.add_argument("--generate-timeout", type=float, default=d.generate_timeout_s, help="per /generate request, s")
    p.add_argument("--ready-timeout", type=float, default=d.ready_timeout_s, help="wait for /readyz, s")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed of the operation sequence")
    p.add_argument("--keep-groups", action="store_true", help="--url: do not delete the load groups at the end")
    p.add_argument("--rate", type=float, default=d.rate, help="open loop: requests/s offered (0: closed loop)")
    p.add_argument("--max-in-flight", type=int, default=d.max_in_flight, help="open loop: open requests at most")
    p.add_argument(
        "--answer-bound", type=float, default=None, help="fail when any answer takes longer, s (deadline + 1)"
    )
    p.add_argument("--json", type=Path, help="write the report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = LoadConfig(
            url=args.url,
            api_key=args.api_key,
            clients=args.clients,
            duration_s=args.duration,
            groups=args.groups,
            mix=parse_mix(args.mix),
            seed_items=args.seed_items,
            items_per_append=args.items_per_append,
            questions_per_predict=args.questions_per_predict,
            generate_n=args.generate_n,
            generate_tokens=args.generate_tokens,
            generate_temperature=args.generate_temperature,
            generate_seeded=args.generate_seeded,
            timeout_s=args.timeout,
            generate_timeout_s=args.generate_timeout,
            ready_timeout_s=args.ready_timeout,
            seed=args.seed,
            keep_groups=args.keep_groups,
            rate=args.rate,
            max_in_flight=args.max_in_flight,
            answer_bound_s=args.answer_bound,
        )
        config.validate()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        report = run(config)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
