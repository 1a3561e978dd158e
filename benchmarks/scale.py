"""Scale benchmark of issue 18: /predict and registration with 1k, 10k and 100k groups stored in Postgres.

    .venv/bin/python -m benchmarks.scale                        # 1k, 10k, 100k stored groups (about an hour, 2 cores)
    .venv/bin/python -m benchmarks.scale --quick                # 1k only, smaller curves (a few minutes)
    .venv/bin/python -m benchmarks.scale --levels 1000,5000 --time-budget-s 1200
    .venv/bin/python -m benchmarks.scale --report-only benchmarks/scale.json   # tables, plots and sections again

What it does, on loopback, never part of the test suite:
- creates its own Postgres database (gpo_scale_<hex>) and Redis key prefix, and drops both at the end (also on
  failure); starts ONE `gpo serve` (the shipped checkpoint, the base LLM in process, Postgres + Redis, an API key
  of its own) and, for the hit-ratio runs, two more with a small context cache;
- registers "template" groups through the API (the shipped OpinionQA questions, whose embeddings the on-disk
  cache already holds), then bulk-loads the stored groups straight into the `groups` and `context_items` tables
  (psycopg binary COPY, synchronous_commit off), every item a copy of the template row of its question (the same
  embedding bytes and embedder key) with a random (Dirichlet) distribution;
- at each level of stored groups: /predict p50/p99 (8 known questions per request) with a cold context cache
  (the first /predict of probe groups never predicted) and a warm one, registration throughput through the API,
  the database's size and the load time;
- on the first level: /predict against context size (10 ... 1,000 items) and questions per request (1 ... 256),
  each fitted by a least-squares line in log-log space; the context cache's bytes per group (local accounting
  and Redis) and its hit ratios when the working set is twice the cache.
Writes benchmarks/scale.json, benchmarks/scale.md, benchmarks/scale_{context,questions,groups}.png, and the
section "## Scale (issue 18)" of BENCHMARKS.md (and of benchmarks/NOTES.md, which benchmarks/run.py appends to
the BENCHMARKS.md it regenerates).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GPO = str(Path(sys.executable).parent / "gpo")
POSTGRES_ADMIN_URL = os.environ.get("GPO_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GPO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TENANT = "scale"
QUESTIONS_PER_REQUEST = 8
SECTION_BEGIN = "<!-- scale.py: begin (benchmarks/scale.py rewrites this section) -->"
SECTION_END = "<!-- scale.py: end -->"
ITEM_TYPES = ["int4", "int4", "varchar", "text", "jsonb", "jsonb", "jsonb", "jsonb", "varchar", "bytea", "timestamptz"]
ITEM_COLUMNS = (
    "group_id, position, kind, question, options, distribution, ordinals, payload, embedder_key, embeddings, created_at"
)


# ---------------------------------------------------------------------------------------------- pure helpers


def fit_loglog(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares line of log(y) on log(x): slope (the exponent of y ~ x^slope), intercept, r^2, points."""
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.log(np.asarray(xs, dtype=float))
        y = np.log(np.asarray(ys, dtype=float))
    if x.size < 2 or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)) or np.ptp(x) == 0:
        return {"slope": float("nan"), "intercept": float("nan"), "r2": float("nan"), "n": int(x.size)}
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss if ss > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2, "n": int(x.size)}


def fit_linear(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares line y = a + b x (b: the cost of one more unit of x)."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if x.size < 2 or np.ptp(x) == 0:
        return {"per_unit": float("nan"), "intercept": float("nan"), "n": int(x.size)}
    b, a = np.polyfit(x, y, 1)
    return {"per_unit": float(b), "intercept": float(a), "n": int(x.size)}


def percentile_ms(latencies_s: Sequence[float], q: float) -> float:
    return float(np.percentile(latencies_s, q) * 1000) if len(latencies_s) else float("nan")


def summarize(latencies_s: Sequence[float], statuses: dict[int, int], wall_s: float) -> dict[str, Any]:
    n = len(latencies_s)
    return {
        "requests": n,
        "wall_s": round(wall_s, 3),
        "rps": round(n / wall_s, 2) if wall_s > 0 else float("nan"),
        "p50_ms": round(percentile_ms(latencies_s, 50), 2),
        "p90_ms": round(percentile_ms(latencies_s, 90), 2),
        "p99_ms": round(percentile_ms(latencies_s, 99), 2),
        "max_ms": round(max(latencies_s) * 1000, 2) if n else float("nan"),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats get at most 3 significant decimals, None is shown as '-'."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if math.isnan(v):
                return "n/a"
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(text: str, section: str, begin: str = SECTION_BEGIN, end: str = SECTION_END) -> str:
    """`text` with the part between the markers replaced by `section` (markers kept), or with it appended."""
    block = f"{begin}\n{section.strip()}\n{end}\n"
    i = text.find(begin)
    if i >= 0:
        j = text.find(end, i)
        if j < 0:
            raise ValueError("section begin marker without its end marker")
        return text[:i] + block + text[j + len(end) :].lstrip("\n")
    return text.rstrip("\n") + "\n\n" + block


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def metric_delta(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def state_lookups(before: dict, after: dict, shared: bool = True) -> dict[str, Any]:
    """Context-state lookups between two /metrics reads: counts and ratios (local among all; shared among those
    the local cache missed)."""
    got = {
        w: metric_delta(before, after, "gpo_context_state_lookups_total", result=w) for w in ("local", "shared", "miss")
    }
    total = sum(got.values())
    not_local = got["shared"] + got["miss"]
    return {
        "lookups": int(total),
        "local": int(got["local"]),
        "shared": int(got["shared"]),
        "miss": int(got["miss"]),
        "local_hit_ratio": round(got["local"] / total, 4) if total else float("nan"),
        "shared_hit_ratio_of_local_misses": round(got["shared"] / not_local, 4) if not_local and shared else None,
        "hit_ratio_any": round((got["local"] + got["shared"]) / total, 4) if total else float("nan"),
    }


@dataclass(frozen=True)
class TemplateRow:
    """A stored context item of a template group: what every bulk item of the same question copies."""

    question: str
    options: tuple[str, ...]
    ordinals: tuple[float, ...] | None
    kind: str
    embedder_key: str | None
    embeddings: bytes


def group_sizes(n: int, lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """n context sizes, uniform on [lo, hi]."""
    return rng.integers(lo, hi + 1, size=n)


def bulk_item_rows(
    templates: Sequence[TemplateRow],
    group_ids: Sequence[int],
    sizes: Sequence[int],
    rng: np.random.Generator,
    created_at: dt.datetime,
) -> Iterator[tuple]:
    """The context_items rows (ITEM_COLUMNS order) of bulk groups: group i gets sizes[i] items, distinct template
    questions while the pool lasts, each with the template's options, ordinals, embedder key and embedding bytes,
    and a random distribution (Dirichlet(1))."""
    for gid, n in zip(group_ids, sizes, strict=True):
        n = int(n)
        picks = rng.choice(len(templates), size=n, replace=n > len(templates))
        for pos, t_idx in enumerate(picks):
            t = templates[int(t_idx)]
            dist = rng.dirichlet(np.ones(len(t.options)))
            yield (
                int(gid),
                pos,
                t.kind,
                t.question,
                list(t.options),
                [float(p) for p in dist],
                None if t.ordinals is None else list(t.ordinals),
                None,
                t.embedder_key,
                t.embeddings,
                created_at,
            )


def choose_items_per_group(
    max_groups: int, bytes_per_item: float, max_db_bytes: float, lo: int = 20, hi: int = 200
) -> tuple[int, int, str | None]:
    """(lo, hi) of the bulk groups' sizes: 20-200 when the largest level fits `max_db_bytes`, else 20 each, with the
    reason (to be said loudly)."""
    projected = max_groups * (lo + hi) / 2 * bytes_per_item
    if projected <= max_db_bytes:
        return lo, hi, None
    return (
        lo,
        lo,
        f"{max_groups:,} groups of {lo}-{hi} items (mean {(lo + hi) / 2:g}) at {bytes_per_item:,.0f} bytes per stored "
        f"item would take {projected / 1e9:,.1f} GB (> {max_db_bytes / 1e9:g} GB allowed): every bulk group has "
        f"{lo} items instead",
    )


def per_item_cost(sizes: Sequence[int], times_ms: Sequence[float]) -> dict[str, float]:
    """Cost of one more context item (ms/item): the least-squares line of time on size, and the difference between
    the largest and the smallest size."""
    lin = fit_linear(sizes, times_ms)
    i, j = int(np.argmin(sizes)), int(np.argmax(sizes))
    diff = (times_ms[j] - times_ms[i]) / (sizes[j] - sizes[i]) if sizes[j] != sizes[i] else float("nan")
    order = np.argsort(sizes)
    marginal = [
        float((times_ms[b] - times_ms[a]) / (sizes[b] - sizes[a]))
        for a, b in zip(order[:-1], order[1:], strict=True)
        if sizes[b] != sizes[a]
    ]
    return {
        "ms_per_item_fit": lin["per_unit"],
        "intercept_ms": lin["intercept"],
        "ms_per_item_diff": float(diff),
        "marginal_ms_per_item": marginal,
    }


def target_window(pool: Sequence[dict], i: int, k: int) -> list[dict]:
    """The i-th request's k target questions: consecutive questions of the pool, wrapping around."""
    n = len(pool)
    start = (i * k) % n
    return [pool[(start + j) % n] for j in range(min(k, n))]


class Budget:
    """Wall-clock budget from the script's start; records (and says loudly) what it cut."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.t0 = time.monotonic()
        self.cuts: list[str] = []

    def spent(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.seconds - self.spent()

    def cut(self, what: str) -> None:
        self.cuts.append(what)
        loud(f"TIME/DISK BUDGET: {what}")


def loud(msg: str) -> None:
    bar = "!" * 100
    print(f"\n{bar}\n!!! {msg}\n{bar}\n", flush=True)


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `gpo serve` on a free loopback port (in-process base LLM: GPO_WORKER_URL is removed), log in a file."""

    def __init__(self, name: str, env: dict[str, str], logdir: Path) -> None:
        self.name, self.port = name, free_port()
        self.log = open(logdir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        full = {k: v for k, v in os.environ.items() if k not in ("GPO_WORKER_URL", "GPO_EMBED_URL", "GPO_GENERATE_URL")}
        full.update(env)
        self.t_start = time.perf_counter()
        self.p = subprocess.Popen(
            [GPO, "serve", "--port", str(self.port)], cwd=ROOT, env=full, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.start_s = float("nan")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.p.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    self.start_s = time.perf_counter() - self.t_start
                    print(f"{self.name}: ready on {self.url} after {self.start_s:.1f} s", flush=True)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s")

    def metrics(self) -> dict:
        r = httpx.get(self.url + "/metrics", timeout=30)
        r.raise_for_status()
        return parse_metrics(r.text)

    def peak_rss_mib(self) -> float:
        try:
            for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self.log.close()


# ---------------------------------------------------------------------------------------------- database


def create_database() -> tuple[str, Callable[[], None]]:
    """A new database gpo_scale_<hex> (SQLAlchemy URL) and the function that drops it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"gpo_scale_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    print(f"database {name} created", flush=True)

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        print(f"database {name} dropped", flush=True)

    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False), drop


def conninfo(sqlalchemy_url: str) -> str:
    """The libpq URL of a SQLAlchemy postgresql+psycopg URL."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://", 1)


def make_api_key(database_url: str) -> str:
    """A key of TENANT in that database (migrated first), as tests/api/conftest.py `api_key` makes one."""
    from service.auth import create_key
    from service.db.migrate import upgrade_database
    from service.db.session import make_engine, make_sessionmaker

    upgrade_database(database_url)
    engine = make_engine(database_url)
    try:
        _, secret = create_key(make_sessionmaker(engine), TENANT, "benchmarks.scale")
    finally:
        engine.dispose()
    return secret


def db_sizes(conn: Any) -> dict[str, Any]:
    row = conn.execute(
        "SELECT pg_database_size(current_database()), pg_total_relation_size('context_items'), "
        "pg_total_relation_size('groups'), (SELECT count(*) FROM groups), (SELECT count(*) FROM context_items)"
    ).fetchone()
    return {
        "database_bytes": int(row[0]),
        "context_items_bytes": int(row[1]),
        "groups_bytes": int(row[2]),
        "groups": int(row[3]),
        "context_items": int(row[4]),
    }


def read_templates(conn: Any, name_prefix: str) -> dict[tuple[str, tuple[str, ...]], TemplateRow]:
    rows = conn.execute(
        "SELECT i.question, i.options, i.ordinals, i.kind, i.embedder_key, i.embeddings FROM context_items i "
        "JOIN groups g ON g.id = i.group_id WHERE g.tenant = %s AND g.name LIKE %s",
        (TENANT, name_prefix + "%"),
    ).fetchall()
    out = {}
    for q, opts, ords, kind, key, emb in rows:
        if emb is None:
            raise RuntimeError(f"template item {q!r} was stored without embeddings")
        out[(q, tuple(opts))] = TemplateRow(
            q, tuple(opts), None if ords is None else tuple(ords), kind, key, bytes(emb)
        )
    return out


def copy_groups(conn: Any, names: Sequence[str], now: dt.datetime) -> list[int]:
    """Insert groups (version 1, as after one registration) with ids taken from the table's sequence."""
    ids = [
        int(r[0])
        for r in conn.execute(
            "SELECT nextval(pg_get_serial_sequence('groups', 'id')) FROM generate_series(1, %s)", (len(names),)
        )
    ]
    with conn.cursor().copy(
        "COPY groups (id, tenant, name, kind, version, created_at, updated_at) FROM STDIN (FORMAT BINARY)"
    ) as cp:
        cp.set_types(["int4", "varchar", "varchar", "varchar", "int4", "timestamptz", "timestamptz"])
        for gid, name in zip(ids, names, strict=True):
            cp.write_row((gid, TENANT, name, "choice", 1, now, now))
    return ids


def copy_items(conn: Any, rows: Iterator[tuple]) -> int:
    n = 0
    with conn.cursor().copy(f"COPY context_items ({ITEM_COLUMNS}) FROM STDIN (FORMAT BINARY)") as cp:
        cp.set_types(ITEM_TYPES)
        for row in rows:
            cp.write_row(row)
            n += 1
    return n


def bulk_load(
    db_url: str,
    templates: Sequence[TemplateRow],
    first: int,
    last: int,
    size_range: tuple[int, int],
    rng: np.random.Generator,
    budget: Budget,
    reserve_s: float,
    chunk: int = 1000,
) -> dict[str, Any]:
    """Groups bulk-{first..last-1} with their items, one transaction per `chunk` groups. Stops early (loudly) when
    the time budget would leave less than `reserve_s`, or the disk less than 5 GB free."""
    import psycopg

    t0 = time.perf_counter()
    rows = done = 0
    stopped = None
    with psycopg.connect(conninfo(db_url)) as conn:
        conn.execute("SET synchronous_commit = off")
        for start in range(first, last, chunk):
            if budget.left() < reserve_s:
                stopped = f"bulk load stopped at {start:,} of {last:,} groups: the time budget is spent"
                break
            free = shutil.disk_usage("/var/lib/postgresql" if Path("/var/lib/postgresql").exists() else "/").free
            if free < 5e9:
                stopped = f"bulk load stopped at {start:,} of {last:,} groups: {free / 1e9:.1f} GB of disk left"
                break
            stop = min(start + chunk, last)
            names = [f"bulk-{i:07d}" for i in range(start, stop)]
            now = dt.datetime.now(dt.UTC)
            ids = copy_groups(conn, names, now)
            sizes = group_sizes(len(ids), *size_range, rng)
            rows += copy_items(conn, bulk_item_rows(templates, ids, sizes, rng, now))
            conn.commit()
            done = stop
            if (stop - first) % (chunk * 10) == 0 or stop == last:
                el = time.perf_counter() - t0
                print(
                    f"  loaded {stop:,} groups ({rows:,} items this level) in {el:.0f} s, "
                    f"{(stop - first) / el:,.0f} groups/s, {rows / el:,.0f} items/s",
                    flush=True,
                )
        load_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        conn.execute("ANALYZE groups")
        conn.execute("ANALYZE context_items")
        conn.commit()
        analyze_s = time.perf_counter() - t1
    if stopped:
        budget.cut(stopped)
    return {
        "groups_loaded": done - first,
        "items_loaded": rows,
        "load_s": round(load_s, 1),
        "analyze_s": round(analyze_s, 1),
        "groups_per_s": round((done - first) / load_s, 1) if load_s else float("nan"),
        "items_per_s": round(rows / load_s, 1) if load_s else float("nan"),
        "stopped": stopped,
        "last": done,
    }


def clone_group(conn: Any, source: str, names: Sequence[str]) -> None:
    """New groups with a copy of `source`'s items (server-side INSERT ... SELECT): fresh row ids, never predicted."""
    now = dt.datetime.now(dt.UTC)
    ids = copy_groups(conn, names, now)
    for gid in ids:
        conn.execute(
            f"INSERT INTO context_items ({ITEM_COLUMNS}) SELECT %s, position, kind, question, options, distribution, "
            "ordinals, payload, embedder_key, embeddings, created_at FROM context_items WHERE group_id = "
            "(SELECT id FROM groups WHERE tenant = %s AND name = %s)",
            (gid, TENANT, source),
        )
    conn.commit()


# ---------------------------------------------------------------------------------------------- HTTP


async def _closed_loop(
    url: str,
    headers: dict[str, str],
    make: Callable[[int], tuple[str, dict]],
    clients: int,
    n_requests: int | None,
    duration_s: float | None,
    timeout_s: float,
) -> tuple[list[float], dict[int, int], float, list[dict]]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    answers: list[dict] = []
    counter = itertools.count()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()
        deadline = None if duration_s is None else t0 + duration_s

        async def worker() -> None:
            while True:
                i = next(counter)
                if n_requests is not None and i >= n_requests:
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                path, body = make(i)
                t = time.perf_counter()
                r = await client.post(path, json=body)
                latencies.append(time.perf_counter() - t)
                statuses[r.status_code] += 1
                if r.status_code >= 400 and len(answers) < 5:
                    answers.append({"status": r.status_code, "body": r.text[:300]})

        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return latencies, dict(statuses), wall, answers


def closed_loop(
    url: str,
    headers: dict[str, str],
    make: Callable[[int], tuple[str, dict]],
    *,
    clients: int,
    n_requests: int | None = None,
    duration_s: float | None = None,
    timeout_s: float = 300,
) -> dict[str, Any]:
    """`clients` concurrent httpx clients sending make(0), make(1), ... back to back (keep-alive)."""
    lat, statuses, wall, errors = asyncio.run(
        _closed_loop(url, headers, make, clients, n_requests, duration_s, timeout_s)
    )
    out = summarize(lat, statuses, wall)
    if errors:
        out["errors"] = errors
        print(f"  non-2xx answers: {errors}", flush=True)
    return out


def post(url: str, path: str, body: dict, headers: dict[str, str], timeout_s: float = 600) -> dict:
    r = httpx.post(url + path, json=body, headers=headers, timeout=timeout_s)
    if r.status_code >= 400:
        raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:500]}")
    return r.json()


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Ctx:
    """What the sections share."""

    args: argparse.Namespace
    budget: Budget
    db_url: str
    prefix: str
    headers: dict[str, str]
    logdir: Path
    targets: list[dict]  # known questions (question, options) sent as /predict targets
    context_pool: list[dict]  # known questions (question, options, ordinals) used as context items
    templates: list[TemplateRow] = field(default_factory=list)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(18))
    used: set[str] = field(default_factory=set)  # bulk groups predicted already (never cold again)
    loaded: int = 0  # bulk groups stored so far
    reg_counter: itertools.count = field(default_factory=itertools.count)

    def server_env(self, **extra: str) -> dict[str, str]:
        return {
            "GPO_DATABASE_URL": self.db_url,
            "GPO_REDIS_URL": REDIS_URL,
            "GPO_REDIS_PREFIX": self.prefix,
            "GPO_TORCH_THREADS": str(self.args.api_threads),
            "GPO_ACCESS_LOG": "false",
            "GPO_MIGRATE_ON_START": "false",
            **extra,
        }

    def predict_body(self, group: str, i: int, k: int = QUESTIONS_PER_REQUEST) -> dict:
        return {"group_id": group, "questions": target_window(self.targets, i, k)}

    def items(self, n: int, offset: int = 0) -> list[dict]:
        """n context items of the pool (cycling when n exceeds it) with random distributions."""
        out = []
        for j in range(n):
            q = self.context_pool[(offset + j) % len(self.context_pool)]
            dist = self.rng.dirichlet(np.ones(len(q["options"])))
            out.append({"question": q["question"], "options": q["options"], "distribution": [float(p) for p in dist]})
        return out

    def fresh_probes(self, n: int) -> list[str]:
        """n bulk groups never predicted, at random among those stored."""
        free = self.loaded - len(self.used)
        n = min(n, free)
        out: list[str] = []
        while len(out) < n:
            name = f"bulk-{int(self.rng.integers(0, self.loaded)):07d}"
            if name not in self.used:
                self.used.add(name)
                out.append(name)
        return out


def known_questions() -> list[dict]:
    """The shipped OpinionQA questions in the shipped checkpoint's prior bank, shuffled (seed 18)."""
    from service.config import Settings
    from service.serving.predictor import Predictor
    from service.training.opinionqa import load_opinionqa

    settings = Settings(model_store=ROOT / "model_store")
    predictor = Predictor.from_store(settings.model_store, settings.checkpoint)
    ds = load_opinionqa()
    qs = [
        {"question": q.text, "options": list(q.options)} for q in ds.questions if predictor.is_known(q.text, q.options)
    ]
    random.Random(18).shuffle(qs)
    return qs


def register_templates(ctx: Ctx, url: str) -> dict[str, Any]:
    """Every pool question registered once through the API (template groups of <= 500 items)."""
    t0 = time.perf_counter()
    pool = ctx.context_pool
    n_groups = 0
    for start in range(0, len(pool), 500):
        post(
            url,
            f"/groups/template-{n_groups}/context",
            {"mode": "replace", "items": ctx.items(500, start)[: len(pool) - start]},
            ctx.headers,
        )
        n_groups += 1
    import psycopg

    with psycopg.connect(conninfo(ctx.db_url)) as conn:
        by_key = read_templates(conn, "template-")
        sizes = db_sizes(conn)
    ctx.templates = [by_key[(q["question"], tuple(q["options"]))] for q in pool]
    per_item = sizes["context_items_bytes"] / max(sizes["context_items"], 1)
    emb = float(np.mean([len(t.embeddings) for t in ctx.templates]))
    out = {
        "template_items": len(ctx.templates),
        "register_s": round(time.perf_counter() - t0, 1),
        "bytes_per_stored_item": round(per_item, 1),
        "embedding_bytes_per_item": round(emb, 1),
        "mean_options": round(float(np.mean([len(t.options) for t in ctx.templates])), 3),
    }
    print("templates:", json.dumps(out), flush=True)
    return out


def measure_level(ctx: Ctx, url: str, level: int, server: Server) -> dict[str, Any]:
    """Cold and warm /predict on fresh probe groups, then registration throughput."""
    a = ctx.args
    probes = ctx.fresh_probes(a.probes)
    m0 = server.metrics()
    cold = closed_loop(
        url,
        ctx.headers,
        lambda i: ("/predict", ctx.predict_body(probes[i], i)),
        clients=a.clients,
        n_requests=len(probes),
    )
    m1 = server.metrics()
    cold["lookups"] = state_lookups(m0, m1)
    n_enc = metric_delta(m0, m1, "gpo_context_encode_seconds_count")
    cold["encode_ms_mean"] = (
        round(metric_delta(m0, m1, "gpo_context_encode_seconds_sum") / n_enc * 1000, 3) if n_enc else None
    )
    print(f"level {level:,}: cold /predict {json.dumps(cold)}", flush=True)
    # warm: the same probes, already encoded; one untimed pass first (connections, allocator)
    closed_loop(
        url,
        ctx.headers,
        lambda i: ("/predict", ctx.predict_body(probes[i % len(probes)], i)),
        clients=a.clients,
        n_requests=len(probes),
    )
    m2 = server.metrics()
    warm = closed_loop(
        url,
        ctx.headers,
        lambda i: ("/predict", ctx.predict_body(probes[i % len(probes)], i)),
        clients=a.clients,
        n_requests=a.warm_requests,
    )
    warm["lookups"] = state_lookups(m2, server.metrics())
    print(f"level {level:,}: warm /predict {json.dumps(warm)}", flush=True)
    warm_c1 = closed_loop(
        url,
        ctx.headers,
        lambda i: ("/predict", ctx.predict_body(probes[i % len(probes)], i)),
        clients=1,
        n_requests=a.warm_requests // 3,
    )
    print(f"level {level:,}: warm /predict, 1 client {json.dumps(warm_c1)}", flush=True)

    def reg(i: int) -> tuple[str, dict]:
        name = f"reg-{level}-{next(ctx.reg_counter)}"
        return f"/groups/{name}/context", {"mode": "replace", "items": ctx.items(20, int(ctx.rng.integers(0, 10**6)))}

    registration = closed_loop(url, ctx.headers, reg, clients=a.clients, duration_s=a.register_s)
    ok = registration["statuses"].get("200", 0)
    registration["registrations_per_s"] = round(ok / registration["wall_s"], 2)
    registration["items_per_s"] = round(20 * ok / registration["wall_s"], 1)
    print(f"level {level:,}: registration (20 items) {json.dumps(registration)}", flush=True)
    listing = list_groups_times(ctx, url, level)
    print(f"level {level:,}: GET /groups pages {json.dumps(listing)}", flush=True)
    return {
        "probes": len(probes),
        "cold": cold,
        "warm": warm,
        "warm_c1": warm_c1,
        "registration": registration,
        "list_groups": listing,
    }


def list_groups_times(ctx: Ctx, url: str, level: int, reps: int = 20) -> dict[str, Any]:
    """GET /groups?limit=100 p50 at the first page, the middle one and the last one (offset pagination)."""
    out = {}
    with httpx.Client(base_url=url, headers=ctx.headers, timeout=120) as client:
        for where, offset in (("first", 0), ("middle", level // 2), ("last", max(level - 100, 0))):
            times = []
            for _ in range(reps + 1):
                t0 = time.perf_counter()
                r = client.get("/groups", params={"limit": 100, "offset": offset})
                times.append(time.perf_counter() - t0)
                r.raise_for_status()
            out[where] = {"offset": offset, "p50_ms": round(percentile_ms(times[1:], 50), 2)}
    out["explain_last_page"] = explain_list_groups(ctx, out["last"]["offset"])
    return out


def explain_list_groups(ctx: Ctx, offset: int) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the statement repository.list_groups runs (groups with a scalar subquery counting each
    one's items, ORDER BY name, LIMIT 100 OFFSET n), and of the same page without the count: execution times, and
    how many times the count subquery ran."""
    import psycopg
    from sqlalchemy import select
    from sqlalchemy.dialects import postgresql

    from service.db.models import Group
    from service.db.repository import _size_of

    def sql(with_size: bool) -> str:
        cols = (Group, _size_of(Group.id)) if with_size else (Group,)
        stmt = select(*cols).where(Group.tenant == TENANT).order_by(Group.name).limit(100).offset(offset)
        return str(stmt.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))

    def subplan_loops(node: dict) -> int:
        loops = int(node.get("Actual Loops", 0)) if node.get("Subplan Name") else 0
        return loops + sum(subplan_loops(c) for c in node.get("Plans", []))

    out: dict[str, Any] = {"offset": offset}
    with psycopg.connect(conninfo(ctx.db_url)) as conn:
        for name, with_size in (("with_count", True), ("without_count", False)):
            conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {sql(with_size)}")  # warm the pages
            plan = conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {sql(with_size)}").fetchone()[0][0]
            out[f"{name}_ms"] = round(float(plan["Execution Time"]), 2)
            if with_size:
                out["count_subquery_runs"] = subplan_loops(plan["Plan"])
    return out


def context_curve(ctx: Ctx, url: str, server: Server) -> dict[str, Any]:
    """/predict cold and warm against the context size: one group per size registered through the API (appends of
    <= 500 items), cloned in SQL into `clones` groups never predicted (each one cold sample), concurrency 1."""
    import psycopg

    a = ctx.args
    points = []
    for size in a.context_sizes:
        if ctx.budget.left() < a.reserve_s:
            ctx.budget.cut(f"context curve stopped before {size} items")
            break
        src = f"curve-{size}"
        t0 = time.perf_counter()
        for start in range(0, size, 500):
            n = min(500, size - start)
            post(
                url,
                f"/groups/{src}/context",
                {"mode": "replace" if start == 0 else "append", "items": ctx.items(n, start)},
                ctx.headers,
            )
        register_s = time.perf_counter() - t0
        names = [f"{src}-clone-{j}" for j in range(a.clones)]
        with psycopg.connect(conninfo(ctx.db_url)) as conn:
            clone_group(conn, src, names)
            tokens = int(
                conn.execute(
                    "SELECT sum(jsonb_array_length(options)) FROM context_items WHERE group_id = "
                    "(SELECT id FROM groups WHERE tenant = %s AND name = %s)",
                    (TENANT, src),
                ).fetchone()[0]
            )
        m0 = server.metrics()
        cold = closed_loop(
            url,
            ctx.headers,
            lambda i, names=names: ("/predict", ctx.predict_body(names[i], i)),
            clients=1,
            n_requests=len(names),
        )
        m1 = server.metrics()
        n_enc = metric_delta(m0, m1, "gpo_context_encode_seconds_count")
        enc = metric_delta(m0, m1, "gpo_context_encode_seconds_sum") / n_enc * 1000 if n_enc else float("nan")
        warm = closed_loop(
            url,
            ctx.headers,
            lambda i, names=names: ("/predict", ctx.predict_body(names[i % len(names)], i)),
            clients=1,
            n_requests=a.curve_requests,
        )
        p = {
            "items": size,
            "tokens": tokens,
            "register_s": round(register_s, 2),
            "cold": cold,
            "warm": warm,
            "encode_ms_mean": round(enc, 3),
            "cold_lookups": state_lookups(m0, m1),
            **cold_parts(ctx, names[0]),
        }
        points.append(p)
        print(
            f"context {size} items ({tokens} tokens): registered in {register_s:.1f} s; cold p50 {cold['p50_ms']} ms "
            f"(encode {enc:.1f} ms, context read {p['db_read_ms']:.1f} ms, Redis SET {p.get('redis_set_ms')} ms), "
            f"warm p50 {warm['p50_ms']} ms",
            flush=True,
        )
    return finish_curve(points, "items")


def cold_parts(ctx: Ctx, group: str, reps: int = 5) -> dict[str, Any]:
    """Parts of the cold path besides the encode, timed in this process with the service's own code (medians of
    `reps`): the context read the server makes (repository.get_context: the ORM statement, the rows turned into
    StoredItems) with each item's vectors decoded, and a Redis SET and GET of the group's real encoded state (read
    back from Redis, where the server put it)."""
    import statistics

    import redis

    from service.cache import RedisVectorCache, decode_vector
    from service.db import repository as repo
    from service.db.session import make_engine, make_sessionmaker
    from service.serving.contexts import vectors_from_bytes

    engine = make_engine(ctx.db_url)
    sessions = make_sessionmaker(engine)

    def read() -> repo.GroupInfo:
        with sessions() as session, session.begin():
            info, items = repo.get_context(session, TENANT, group)
        for it in items:
            dim = len(it.embeddings or b"") // 4 // max(len(it.options), 1)
            vectors_from_bytes(it.embeddings, len(it.options), dim)
        return info

    def timed(fn: Callable[[], Any]) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return round(statistics.median(times) * 1000, 3)

    try:
        info = read()
        out: dict[str, Any] = {"db_read_ms": timed(read)}
    finally:
        engine.dispose()
    rc = redis.Redis.from_url(REDIS_URL)
    keys = list(rc.scan_iter(match=f"{ctx.prefix}ctx:*|g{info.id}|*", count=1000))
    if keys:
        array = np.array(decode_vector(rc.get(keys[0])))
        cache = RedisVectorCache(REDIS_URL, ctx.prefix + "bench:", ttl_s=600)
        out["state_bytes"] = int(array.nbytes)
        out["redis_set_ms"] = timed(lambda: cache.put("state", array))
        out["redis_get_ms"] = timed(lambda: cache.get("state"))
        cache.close()
    rc.close()
    return out


def encode_scaling(ctx: Ctx, sizes: Sequence[int], reps: int = 3) -> dict[str, Any]:
    """The model-only encode in this process (the shipped checkpoint, torch threads as the server's): a context of n
    template items (their stored vectors) timed as a whole, its item features alone, and the attention kernel alone
    (F.scaled_dot_product_attention at the context's token count, times the layers) called as the model calls it,
    with an all-True boolean mask, and without a mask. Medians of `reps`."""
    import statistics

    import torch
    import torch.nn.functional as F

    from service.config import Settings
    from service.serving.predictor import AnsweredItem, Predictor

    torch.set_num_threads(ctx.args.api_threads)
    settings = Settings(model_store=ROOT / "model_store")
    predictor = Predictor.from_store(settings.model_store, settings.checkpoint)
    cfg = predictor.model.cfg
    rng = np.random.default_rng(0)

    def timed(fn: Callable[[], Any]) -> float:
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return round(statistics.median(times) * 1000, 3)

    points = []
    for n in sizes:
        if ctx.budget.left() < ctx.args.reserve_s:
            ctx.budget.cut(f"in-process encode scaling stopped before {n} items")
            break
        items = []
        for j in range(n):
            t = ctx.templates[j % len(ctx.templates)]
            emb = np.frombuffer(t.embeddings, dtype="<f4").reshape(len(t.options), -1).astype(np.float32)
            dist = rng.dirichlet(np.ones(len(t.options))).astype(np.float32)
            items.append(AnsweredItem(t.question, list(t.options), emb, dist))
        tokens = sum(len(it.options) for it in items)
        H, d = cfg.n_heads, cfg.d_model // cfg.n_heads
        q, k, v = (torch.randn(1, H, tokens, d) for _ in range(3))
        mask = torch.ones(1, 1, 1, tokens, dtype=torch.bool)
        with torch.inference_mode():
            p = {
                "items": n,
                "tokens": tokens,
                "encode_ms": timed(lambda items=items: predictor.encode(items)),
                "features_ms": timed(lambda items=items: [predictor.features(it) for it in items]),
                "attention_masked_ms": round(
                    cfg.n_layers * timed(lambda q=q, k=k, v=v, m=mask: F.scaled_dot_product_attention(q, k, v, m)), 3
                ),
                "attention_unmasked_ms": round(
                    cfg.n_layers * timed(lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v)), 3
                ),
            }
        points.append(p)
        print("encode scaling (in process):", json.dumps(p), flush=True)
    out: dict[str, Any] = {"points": points, "torch_threads": ctx.args.api_threads}
    xs = [p["tokens"] for p in points]
    for key in ("encode_ms", "features_ms", "attention_masked_ms", "attention_unmasked_ms"):
        out[f"{key}_fit_tokens"] = fit_loglog(xs, [p[key] for p in points])
    return out


def forget_group_cost(sizes: Sequence[int], reps: int = 5) -> list[dict[str, Any]]:
    """The service's ContextCache in this process, filled with n tiny states: the time of `forget_group` (what
    every context write calls, under the cache's lock) and of a `get` hit, against the number of entries."""
    import statistics

    import torch

    from service.gpo.model import ContextState
    from service.serving.context_cache import ContextCache, StateKey

    tiny = ContextState(
        keys=torch.zeros(1, 1, 1, 1, 1), values=torch.zeros(1, 1, 1, 1, 1), mask=torch.ones(1, 1, dtype=torch.bool)
    )
    cache = ContextCache(None, max_bytes=2**62)  # type: ignore[arg-type]  # no shared cache: no predictor needed
    out = []
    for n in sizes:
        while cache.stats["entries"] < n:
            cache.put(StateKey("ckpt/v1", "emb", cache.stats["entries"] + 1, 1), tiny)

        def timed(fn: Callable[[], Any]) -> float:
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return round(statistics.median(times) * 1000, 4)

        row = {
            "entries": n,
            "forget_group_ms": timed(lambda: cache.forget_group(10**9)),
            "get_hit_ms": timed(lambda: cache.get(StateKey("ckpt/v1", "emb", 1, 1))),
        }
        out.append(row)
        print("context cache forget_group:", json.dumps(row), flush=True)
    return out


def finish_curve(points: list[dict], x: str) -> dict[str, Any]:
    out: dict[str, Any] = {"points": points}
    xs = [p[x] for p in points]
    for which in ("cold", "warm"):
        if points and which in points[0]:
            ys = [p[which]["p50_ms"] for p in points]
            out[f"{which}_p50_fit"] = fit_loglog(xs, ys)
            if x == "items":
                out[f"{which}_cost"] = per_item_cost(xs, ys)
    if points and "encode_ms_mean" in points[0]:
        ys = [p["encode_ms_mean"] for p in points]
        out["encode_fit"] = fit_loglog(xs, ys)
        out["encode_cost"] = per_item_cost(xs, ys)
    for k in ("db_read_ms", "redis_set_ms", "redis_get_ms"):
        pts = [p for p in points if k in p]
        if len(pts) >= 2:
            out[f"{k}_fit"] = fit_loglog([p[x] for p in pts], [p[k] for p in pts])
            out[f"{k}_cost"] = per_item_cost([p[x] for p in pts], [p[k] for p in pts])
    return out


def questions_curve(ctx: Ctx, url: str, groups: list[str]) -> dict[str, Any]:
    """Warm /predict against questions per request (known questions), concurrency 1, on warm probe groups."""
    a = ctx.args
    points = []
    for k in a.question_counts:
        if ctx.budget.left() < a.reserve_s:
            ctx.budget.cut(f"questions curve stopped before {k} questions")
            break
        closed_loop(
            url,
            ctx.headers,
            lambda i, k=k: ("/predict", ctx.predict_body(groups[i % len(groups)], i, k)),
            clients=1,
            n_requests=5,
        )
        warm = closed_loop(
            url,
            ctx.headers,
            lambda i, k=k: ("/predict", ctx.predict_body(groups[i % len(groups)], i, k)),
            clients=1,
            n_requests=a.curve_requests,
        )
        points.append({"questions": k, "warm": warm})
        print(f"questions {k}: warm p50 {warm['p50_ms']} ms, p99 {warm['p99_ms']} ms", flush=True)
    return finish_curve(points, "questions")


def cache_bytes(ctx: Ctx) -> dict[str, Any]:
    """Every encoded context in Redis under our prefix: its value's bytes (STRLEN), Redis's MEMORY USAGE, and the
    local cache's accounting of the same state (its float32 keys, values and ridge solution); per group over the
    bulk probe groups, and per item and per context token over every state."""
    import psycopg
    import redis

    from service.cache import decode_vector

    r = redis.Redis.from_url(REDIS_URL)
    rows = []
    with psycopg.connect(conninfo(ctx.db_url)) as conn:
        for key in r.scan_iter(match=ctx.prefix + "ctx:*", count=1000):
            value = r.get(key)
            if value is None:
                continue
            group_row = int(key.decode().split("|g")[1].split("|")[0])
            name, n_items, n_tokens = conn.execute(
                "SELECT g.name, count(i.id), sum(jsonb_array_length(i.options)) FROM groups g "
                "JOIN context_items i ON i.group_id = g.id WHERE g.id = %s GROUP BY g.name",
                (group_row,),
            ).fetchone()
            rows.append(
                {
                    "bulk": name.startswith("bulk-"),
                    "items": int(n_items),
                    "tokens": int(n_tokens or 0),
                    "redis_value_bytes": len(value),
                    "redis_memory_usage": int(r.memory_usage(key) or 0),
                    "local_bytes": int(decode_vector(value).nbytes),
                }
            )
    r.close()
    sel = [x for x in rows if x["bulk"]]
    if not sel:
        return {"states": len(rows)}

    def mean(k: str) -> float:
        return float(np.mean([x[k] for x in sel]))

    def per(k: str, unit: str) -> float:
        return round(sum(x[k] for x in rows) / sum(x[unit] for x in rows), 1)

    out = {
        "states": len(rows),
        "probe_groups": len(sel),
        "items_per_group": round(mean("items"), 1),
        "tokens_per_group": round(mean("tokens"), 1),
        "local_bytes_per_group": round(mean("local_bytes")),
        "redis_value_bytes_per_group": round(mean("redis_value_bytes")),
        "redis_memory_usage_per_group": round(mean("redis_memory_usage")),
        "local_bytes_per_item": per("local_bytes", "items"),
        "redis_value_bytes_per_item": per("redis_value_bytes", "items"),
        "redis_memory_usage_per_item": per("redis_memory_usage", "items"),
        "local_bytes_per_token": per("local_bytes", "tokens"),
        "redis_value_bytes_per_token": per("redis_value_bytes", "tokens"),
        "redis_memory_usage_per_token": per("redis_memory_usage", "tokens"),
    }
    out["groups_in_default_256mb"] = int(256 * 2**20 // out["local_bytes_per_group"])
    print("context cache bytes:", json.dumps(out), flush=True)
    return out


def hit_ratio_runs(ctx: Ctx, bytes_per_group: float) -> list[dict[str, Any]]:
    """A server whose context cache holds about half of a working set of never-predicted groups: local only, then
    (a second server) with Redis shared. Uniform random order, then a sequential cycle; ratios from /metrics."""
    a = ctx.args
    out = []
    cache_mb = a.working_set * bytes_per_group / 2 / 2**20
    for shared in (False, True):
        if ctx.budget.left() < a.reserve_s + 120:
            ctx.budget.cut(f"hit-ratio run (shared={shared}) skipped")
            continue
        ws = ctx.fresh_probes(a.working_set)
        server = Server(
            f"api-cache-{'shared' if shared else 'local'}",
            ctx.server_env(GPO_CONTEXT_CACHE_MB=f"{cache_mb:.4f}", GPO_CONTEXT_CACHE_SHARED=str(shared).lower()),
            ctx.logdir,
        )
        try:
            server.wait_ready()
            url = server.url
            # one untimed pass in order: every group encoded once (misses), the cache filled
            closed_loop(
                url,
                ctx.headers,
                lambda i, ws=ws: ("/predict", ctx.predict_body(ws[i], i)),
                clients=2,
                n_requests=len(ws),
            )
            order = np.random.default_rng(7).integers(0, len(ws), size=a.hit_requests)
            for pattern, pick in (
                ("uniform random", lambda i, ws=ws, order=order: ws[int(order[i])]),
                ("sequential cycle", lambda i, ws=ws: ws[i % len(ws)]),
            ):
                n = a.hit_requests if pattern == "uniform random" else 3 * len(ws)
                m0 = server.metrics()
                lat = closed_loop(
                    url,
                    ctx.headers,
                    lambda i, pick=pick: ("/predict", ctx.predict_body(pick(i), i)),
                    clients=2,
                    n_requests=n,
                )
                lk = state_lookups(m0, server.metrics(), shared)
                row = {
                    "redis_shared": shared,
                    "pattern": pattern,
                    "cache_mb": round(cache_mb, 2),
                    "working_set": len(ws),
                    "capacity_groups_est": round(cache_mb * 2**20 / bytes_per_group, 1),
                    "c_over_n": round(cache_mb * 2**20 / bytes_per_group / len(ws), 3),
                    "requests": n,
                    **lk,
                    "p50_ms": lat["p50_ms"],
                    "p99_ms": lat["p99_ms"],
                    "statuses": lat["statuses"],
                }
                out.append(row)
                print("hit ratio:", json.dumps(row), flush=True)
        finally:
            server.stop()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg
    import redis
    import torch

    budget = Budget(args.time_budget_s)
    results: dict[str, Any] = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python -m benchmarks.scale", *sys.argv[1:]]),
        "quick": args.quick,
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("report_only", "json", "out_md", "no_benchmarks_md")
        },
        "levels": [],
        "notes": [],
    }
    results["machine"]["torch"] = torch.__version__
    logdir = Path(tempfile.mkdtemp(prefix="gpo-scale-"))
    print(f"server logs in {logdir}", flush=True)
    prefix = f"gpo-scale-{uuid.uuid4().hex[:8]}:"
    drop_db: Callable[[], None] | None = None
    server: Server | None = None
    try:
        db_url, drop_db = create_database()
        secret = make_api_key(db_url)
        qs = known_questions()
        n_t = min(256, max(args.question_counts))
        ctx = Ctx(args, budget, db_url, prefix, {"Authorization": f"Bearer {secret}"}, logdir, qs[:n_t], qs[n_t:])
        print(f"{len(qs)} known questions: {n_t} as targets, {len(ctx.context_pool)} as context items", flush=True)
        server = Server("api", ctx.server_env(), logdir)
        server.wait_ready()
        results["server_start_s"] = round(server.start_s, 1)
        url = server.url
        results["templates"] = register_templates(ctx, url)
        # every target question embedded once (the embedding cache warm), on a template group
        t0 = time.perf_counter()
        post(url, "/predict", {"group_id": "template-0", "questions": ctx.targets}, ctx.headers)
        results["targets_warmup_s"] = round(time.perf_counter() - t0, 2)

        max_level = max(args.levels)
        lo, hi, why = choose_items_per_group(
            max_level, results["templates"]["bytes_per_stored_item"], args.max_db_gb * 1e9
        )
        results["items_per_group"] = [lo, hi]
        if why:
            loud("SCALE REDUCED: " + why)
            results["notes"].append("SCALE REDUCED: " + why)
        for li, level in enumerate(sorted(args.levels)):
            if budget.left() < args.reserve_s:
                budget.cut(f"level {level:,} skipped (no time left)")
                break
            print(
                f"\n=== level {level:,} stored groups: loading {level - ctx.loaded:,} groups of {lo}-{hi} items",
                flush=True,
            )
            if li > 0 and results["levels"]:
                rate = results["levels"][-1]["load"]["groups_per_s"]
                projected = (level - ctx.loaded) / rate if rate else float("nan")
                print(f"  projected load time at the last level's rate: {projected:,.0f} s", flush=True)
                if projected > args.max_load_s:
                    loud(
                        f"the load of level {level:,} is projected at {projected:,.0f} s "
                        f"(> --max-load-s {args.max_load_s:g})"
                    )
                    results["notes"].append(
                        f"level {level:,}: load projected at {projected:,.0f} s, over --max-load-s {args.max_load_s:g}"
                    )
            load = bulk_load(db_url, ctx.templates, ctx.loaded, level, (lo, hi), ctx.rng, budget, args.reserve_s)
            ctx.loaded = load["last"]
            with psycopg.connect(conninfo(db_url)) as conn:
                sizes = db_sizes(conn)
            print(
                f"level {level:,}: {ctx.loaded:,} bulk groups stored, loaded in {load['load_s']} s "
                f"(+ ANALYZE {load['analyze_s']} s); database {sizes['database_bytes'] / 1e9:.2f} GB, context_items "
                f"{sizes['context_items_bytes'] / 1e9:.2f} GB, {sizes['context_items']:,} items",
                flush=True,
            )
            entry: dict[str, Any] = {"level": level, "stored_groups": ctx.loaded, "load": load, "db": sizes}
            results["levels"].append(entry)
            entry.update(measure_level(ctx, url, level, server))
            if li == 0:
                warm_groups = sorted(ctx.used)[: args.probes]
                results["context_cache"] = cache_bytes(ctx)
                results["questions_curve"] = questions_curve(ctx, url, warm_groups)
                results["context_curve"] = context_curve(ctx, url, server)
                results["encode_scaling"] = encode_scaling(ctx, args.encode_sizes)
                results["forget_group"] = forget_group_cost([1_000, 10_000, 100_000])
                bpg = results["context_cache"].get("local_bytes_per_group")
                if bpg and not args.skip_hit_ratio:
                    results["hit_ratio"] = hit_ratio_runs(ctx, float(bpg))
            write_outputs(results, args, partial=True)
        results["server_peak_rss_mib"] = round(server.peak_rss_mib(), 1)
    finally:
        if server is not None:
            server.stop()
        if drop_db is not None:
            drop_db()
        rc = redis.Redis.from_url(REDIS_URL)
        keys = list(rc.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            rc.unlink(*keys[i : i + 1000])
        print(f"redis: {len(keys)} keys under {prefix} deleted", flush=True)
        rc.close()
        if not args.keep_logs:
            shutil.rmtree(logdir, ignore_errors=True)
    results["cuts"] = budget.cuts
    results["elapsed_s"] = round(budget.spent(), 1)
    results["acceptance"] = acceptance(results)
    return results


def machine() -> dict[str, Any]:
    out = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["cpu_model"] = line.split(":", 1)[1].strip()
                break
        out["mem_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import psycopg
        import redis

        with psycopg.connect(conninfo(POSTGRES_ADMIN_URL)) as c:
            out["postgres"] = c.execute("SHOW server_version").fetchone()[0]
            out["postgres_shared_buffers"] = c.execute("SHOW shared_buffers").fetchone()[0]
        rc = redis.Redis.from_url(REDIS_URL)
        out["redis"] = rc.info("server")["redis_version"]
        rc.close()
    except Exception as exc:  # noqa: BLE001 - informational only
        out["versions_error"] = str(exc)
    return out


def acceptance(r: dict[str, Any]) -> dict[str, Any]:
    """Warm p50 flat within 2x from the first to the last level; the cold path's cost per context item."""
    out: dict[str, Any] = {}
    lv = [x for x in r.get("levels", []) if "warm" in x]
    if len(lv) >= 2:
        first, last = lv[0], lv[-1]
        ratio = last["warm"]["p50_ms"] / first["warm"]["p50_ms"]
        out["warm_p50_ratio"] = round(ratio, 3)
        out["warm_p50_levels"] = [first["stored_groups"], last["stored_groups"]]
        out["warm_flat_within_2x"] = bool(0.5 <= ratio <= 2.0)
        out["cold_p50_ratio"] = round(last["cold"]["p50_ms"] / first["cold"]["p50_ms"], 3)
    cc = r.get("context_curve", {})
    if "cold_cost" in cc:
        out["cold_ms_per_item_fit"] = round(cc["cold_cost"]["ms_per_item_fit"], 4)
        out["cold_ms_per_item_diff"] = round(cc["cold_cost"]["ms_per_item_diff"], 4)
        out["warm_ms_per_item_fit"] = round(cc["warm_cost"]["ms_per_item_fit"], 4)
        out["cold_minus_warm_ms_per_item_fit"] = round(
            cc["cold_cost"]["ms_per_item_fit"] - cc["warm_cost"]["ms_per_item_fit"], 4
        )
    return out


# ---------------------------------------------------------------------------------------------- report


def plots(r: dict[str, Any], outdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def one(name: str, title: str, xlabel: str, series: list[tuple[str, list[float], list[float], str]]) -> None:
        series = [s for s in series if len(s[1]) >= 1]
        if not series:
            return
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for label, xs, ys, style in series:
            f = fit_loglog(xs, ys)
            ax.plot(xs, ys, style, label=f"{label} (slope {f['slope']:.2f})" if len(xs) >= 2 else label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("ms")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        written.append(name)

    cc = r.get("context_curve", {}).get("points", [])
    one(
        "scale_context.png",
        "/predict vs context size (8 known questions, concurrency 1)",
        "context items",
        [
            ("cold p50", [p["items"] for p in cc], [p["cold"]["p50_ms"] for p in cc], "o-"),
            ("warm p50", [p["items"] for p in cc], [p["warm"]["p50_ms"] for p in cc], "s-"),
            ("encode (server)", [p["items"] for p in cc], [p["encode_ms_mean"] for p in cc], "^--"),
            (
                "context read",
                [p["items"] for p in cc if "db_read_ms" in p],
                [p["db_read_ms"] for p in cc if "db_read_ms" in p],
                "v:",
            ),
            (
                "Redis SET",
                [p["items"] for p in cc if "redis_set_ms" in p],
                [p["redis_set_ms"] for p in cc if "redis_set_ms" in p],
                "x:",
            ),
        ],
    )
    qc = r.get("questions_curve", {}).get("points", [])
    one(
        "scale_questions.png",
        "warm /predict vs questions per request (concurrency 1)",
        "questions per request",
        [
            ("warm p50", [p["questions"] for p in qc], [p["warm"]["p50_ms"] for p in qc], "o-"),
            ("warm p99", [p["questions"] for p in qc], [p["warm"]["p99_ms"] for p in qc], "s--"),
        ],
    )
    lv = [x for x in r.get("levels", []) if "warm" in x]
    xs = [x["stored_groups"] for x in lv]
    one(
        "scale_groups.png",
        f"/predict vs stored groups ({QUESTIONS_PER_REQUEST} known questions, {r['settings']['clients']} clients)",
        "stored groups",
        [
            ("warm p50", xs, [x["warm"]["p50_ms"] for x in lv], "o-"),
            ("warm p99", xs, [x["warm"]["p99_ms"] for x in lv], "o--"),
            ("cold p50", xs, [x["cold"]["p50_ms"] for x in lv], "s-"),
            ("cold p99", xs, [x["cold"]["p99_ms"] for x in lv], "s--"),
            ("warm p50, 1 client", xs, [x["warm_c1"]["p50_ms"] for x in lv if "warm_c1" in x], "^:"),
        ],
    )
    return written


def findings(r: dict[str, Any]) -> list[str]:
    """Statements computed from the figures: what grows faster than its work calls for, and what the cache costs."""
    out = []
    lv = [x for x in r.get("levels", []) if "list_groups" in x]
    if lv:
        top = lv[-1]
        lg, ex = top["list_groups"], top["list_groups"].get("explain_last_page", {})
        ratio = lg["last"]["p50_ms"] / lg["first"]["p50_ms"]
        if ratio > 2:
            runs, sql_with, sql_without = (
                ex.get(k, "?") for k in ("count_subquery_runs", "with_count_ms", "without_count_ms")
            )
            out.append(
                f"- **GET /groups grows with the page's offset**: at {top['stored_groups']:,} groups the last page "
                f"(offset {lg['last']['offset']:,}) takes {lg['last']['p50_ms']} ms against "
                f"{lg['first']['p50_ms']} ms for the first ({ratio:.0f}x) for the same 100 rows. The statement's "
                f"item-count subquery ran {runs:,} times for that page: Postgres evaluates the select list of every "
                "row OFFSET skips, so each skipped group's items are counted. The same page without the count: "
                f"{sql_without} ms of SQL against {sql_with} ms. The fix belongs in service/db/repository.py "
                "(list_groups): pick the page's ids first (a subquery or CTE with ORDER BY name LIMIT/OFFSET), then "
                "count the items of those rows only; keyset pagination (after=name) would also remove the OFFSET "
                "walk itself."
            )
    es = r.get("encode_scaling", {})
    if es.get("points"):
        big = es["points"][-1]
        slope = es.get("encode_ms_fit_tokens", {}).get("slope", float("nan"))
        att_slope = es.get("attention_masked_ms_fit_tokens", {}).get("slope", float("nan"))
        out.append(
            f"- **Encoding a context grows faster than its size**: encode time ~ tokens^{slope:.2f} in process; at "
            f"{big['items']:,} items ({big['tokens']:,} tokens) the attention kernel alone takes "
            f"{big['attention_masked_ms']:,.0f} of {big['encode_ms']:,.0f} ms (slope {att_slope:.2f}, the same "
            "without the all-True mask). That is GPO's context self-attention, quadratic by design, not a defect of "
            "the serving code: it is paid once per context version (then cached), and it is what makes the cold "
            "path's cost per item rise with the context (marginal cost in the context-size table)."
        )
    cb, t = r.get("context_cache", {}), r.get("templates", {})
    if cb.get("local_bytes_per_token") and t.get("embedding_bytes_per_item"):
        per_option = t["embedding_bytes_per_item"] / t["mean_options"]
        n_top = max((x["stored_groups"] for x in r.get("levels", [])), default=0)
        out.append(
            f"- **The encoded context is {cb['local_bytes_per_token'] / per_option:.1f}x the stored embeddings**: "
            f"{cb['local_bytes_per_token']:,.0f} bytes per context token (keys and values of every layer, float32) "
            f"against {per_option:,.0f} bytes of option embedding. Linear, but large: the default 256 MB local cache "
            f"holds {cb['groups_in_default_256mb']:,} groups of {cb['items_per_group']:g} items, and keeping all "
            f"{n_top:,} stored groups encoded in Redis would take "
            f"{n_top * cb['redis_memory_usage_per_group'] / 1e9:,.1f} GB (MEMORY USAGE "
            f"{cb['redis_memory_usage_per_group']:,} bytes per group)."
        )
    fg = r.get("forget_group", [])
    if len(fg) >= 2:
        sl = fit_loglog([x["entries"] for x in fg], [x["forget_group_ms"] for x in fg])["slope"]
        out.append(
            f"- **Each context write scans the local context cache** (`forget_group`, under its lock): slope {sl:.2f} "
            f"in the number of entries, {fg[-1]['forget_group_ms']} ms at {fg[-1]['entries']:,} entries. Negligible "
            f"at the default size (about {cb.get('groups_in_default_256mb', '?')} entries of 20-item groups); it "
            "would matter only with a cache of tens of GB."
        )
    return out


def _slope(f: dict | None) -> str:
    return "n/a" if not f or math.isnan(f.get("slope", float("nan"))) else f"{f['slope']:.2f} (r² {f['r2']:.2f})"


def markdown(r: dict[str, Any], img_prefix: str, heading: str = "#") -> str:
    """The report: `heading` is the level of its title ('#' for scale.md, '##' inside BENCHMARKS.md)."""
    h2 = heading + "#"
    m = r["machine"]
    s = r["settings"]
    lines = [
        f"{heading} Scale (issue 18)",
        "",
        f"Measured {r['date']} by `.venv/bin/python {r['command'].replace('python ', '', 1)}` on {m['cpus']} CPUs "
        f"({m.get('cpu_model', m['processor'])}, {m.get('mem_gib', '?')} GiB; {m['platform']}, Python {m['python']}, "
        f"torch {m['torch']}, Postgres {m.get('postgres', '?')} "
        f"(shared_buffers {m.get('postgres_shared_buffers', '?')}), Redis {m.get('redis', '?')}; "
        f"load average {m['loadavg_at_start']} at the start: other jobs shared the "
        f"cores). One `gpo serve` (shipped checkpoint, base LLM in process, API torch threads {s['api_threads']}) on "
        f"Postgres + Redis, httpx clients on the same cores. Wall time {r.get('elapsed_s', '?')} s.",
        "",
    ]
    if r.get("cuts") or r.get("notes"):
        lines += ["**WORK CUT SHORT OR REDUCED in this run:**", ""]
        lines += [f"- **{c}**" for c in [*r.get("notes", []), *r.get("cuts", [])]]
        lines.append("")
    acc = r.get("acceptance", {})
    t = r.get("templates", {})
    ipg = r.get("items_per_group", ["?", "?"])
    sizes_text = str(ipg[0]) if ipg[0] == ipg[1] else f"{ipg[0]}-{ipg[1]}"
    if t:
        lines += [
            "How the groups are stored: template groups registered through the API hold every context question "
            f"once ({t['template_items']} OpinionQA questions, {t['mean_options']} options on average); the bulk "
            "groups are COPYed into `groups` and `context_items`, each item a copy of its question's template row "
            f"(embedding bytes, embedder key) with a random Dirichlet(1) distribution, {sizes_text} items per "
            f"group. A stored item takes {t['bytes_per_stored_item']:,} bytes in Postgres (table, TOAST and indexes; "
            f"{t['embedding_bytes_per_item']:,} of them the float32 option embeddings).",
            "",
        ]
    if acc:
        lines += [h2 + " Acceptance", ""]
        if "warm_p50_ratio" in acc:
            lo, hi = acc["warm_p50_levels"]
            lines.append(
                f"- Warm-cache /predict p50 at {hi:,} stored groups / at {lo:,}: **{acc['warm_p50_ratio']}x** "
                f"({'flat within 2x: met' if acc['warm_flat_within_2x'] else '**NOT flat within 2x**'}); cold p50 "
                f"{acc['cold_p50_ratio']}x."
            )
        if "cold_ms_per_item_fit" in acc:
            lines.append(
                f"- Cold path's cost per context item: **{acc['cold_ms_per_item_fit']:.3f} ms/item** (least-squares "
                f"line of cold p50 on context size, 10-1,000 items; {acc['cold_ms_per_item_diff']:.3f} ms/item between "
                f"the smallest and the largest size). The warm path: {acc['warm_ms_per_item_fit']:.4f} ms/item; the "
                f"cold path's own share (cold - warm): {acc['cold_minus_warm_ms_per_item_fit']:.3f} ms/item."
            )
        lines.append("")
    lv = [x for x in r.get("levels", []) if "warm" in x]
    if lv:
        lines += [
            h2 + " /predict and registration against stored groups",
            "",
            f"{QUESTIONS_PER_REQUEST} known questions per /predict, {s['clients']} concurrent clients (closed loop). "
            f"Cold: the first /predict of {s['probes']} probe groups never predicted (read from Postgres, encoded, "
            f"stored in the local cache and Redis). Warm: {s['warm_requests']} more /predict over the same probes. "
            f"Registration: POST /groups/{{id}}/context (replace, 20 items whose texts are in the embedding cache) for "
            f"{s['register_s']} s.",
            "",
            md_table(
                [
                    "stored groups",
                    "context items",
                    "load s",
                    "DB GB",
                    "context_items GB",
                    "warm p50 ms",
                    "warm p99 ms",
                    "warm p50 ms, 1 client",
                    "cold p50 ms",
                    "cold p99 ms",
                    "cold encode ms",
                    "registrations/s",
                    "items/s",
                    "reg. p50 ms",
                ],
                [
                    [
                        x["stored_groups"],
                        x["db"]["context_items"],
                        x["load"]["load_s"],
                        x["db"]["database_bytes"] / 1e9,
                        x["db"]["context_items_bytes"] / 1e9,
                        x["warm"]["p50_ms"],
                        x["warm"]["p99_ms"],
                        x.get("warm_c1", {}).get("p50_ms"),
                        x["cold"]["p50_ms"],
                        x["cold"]["p99_ms"],
                        x["cold"].get("encode_ms_mean"),
                        x["registration"]["registrations_per_s"],
                        x["registration"]["items_per_s"],
                        x["registration"]["p50_ms"],
                    ]
                    for x in lv
                ],
            ),
            "",
            "Load: "
            + "; ".join(
                f"{x['stored_groups']:,} groups: +{x['load']['groups_loaded']:,} groups / "
                f"{x['load']['items_loaded']:,} items in {x['load']['load_s']} s "
                f"({x['load']['items_per_s']:,.0f} items/s, ANALYZE "
                f"{x['load']['analyze_s']} s)"
                for x in lv
            )
            + ".",
            "",
        ]
        if len(lv) >= 2:
            xs = [x["stored_groups"] for x in lv]
            lines += [
                "Slopes of log(ms) on log(stored groups): "
                + ", ".join(
                    f"{name} {_slope(fit_loglog(xs, [x[w][q] for x in lv]))}"
                    for name, w, q in (
                        ("warm p50", "warm", "p50_ms"),
                        ("warm p99", "warm", "p99_ms"),
                        ("cold p50", "cold", "p50_ms"),
                        ("cold p99", "cold", "p99_ms"),
                    )
                )
                + ".",
                "",
                f"![/predict vs stored groups]({img_prefix}scale_groups.png)",
                "",
            ]
    if lv and all("list_groups" in x for x in lv):
        lines += [
            "GET /groups?limit=100 (p50 of 20 requests, 1 client) by page (offset pagination, ordered by name), and "
            "EXPLAIN (ANALYZE, TIMING OFF) of the last page's statement (repository.list_groups: each group with a "
            "scalar subquery counting its items) with and without that count:",
            "",
            md_table(
                [
                    "stored groups",
                    "first page ms",
                    "middle page ms",
                    "last page ms",
                    "last page offset",
                    "SQL ms",
                    "SQL ms without the count",
                    "count subquery runs",
                ],
                [
                    [
                        x["stored_groups"],
                        x["list_groups"]["first"]["p50_ms"],
                        x["list_groups"]["middle"]["p50_ms"],
                        x["list_groups"]["last"]["p50_ms"],
                        x["list_groups"]["last"]["offset"],
                        x["list_groups"].get("explain_last_page", {}).get("with_count_ms"),
                        x["list_groups"].get("explain_last_page", {}).get("without_count_ms"),
                        x["list_groups"].get("explain_last_page", {}).get("count_subquery_runs"),
                    ]
                    for x in lv
                ],
            ),
            "",
        ]
    cc = r.get("context_curve", {})
    if cc.get("points"):
        lines += [
            h2 + " /predict against context size",
            "",
            f"One group per size registered through the API (appends of <= 500 items; past "
            f"{t.get('template_items', '?')} items the questions repeat), "
            f"cloned in SQL into {s['clones']} groups never predicted: each clone's first /predict is one cold "
            f"sample, then {s['curve_requests']} warm requests over the clones; concurrency 1, "
            f"{QUESTIONS_PER_REQUEST} known questions. Encode: the server's mean `gpo_context_encode_seconds` of the "
            "cold requests.",
            "",
            md_table(
                [
                    "items",
                    "tokens",
                    "register s",
                    "cold p50 ms",
                    "cold p99 ms",
                    "cold marginal ms/item",
                    "encode ms",
                    "context read ms",
                    "state MB",
                    "Redis SET ms",
                    "Redis GET ms",
                    "warm p50 ms",
                    "warm p99 ms",
                ],
                [
                    [
                        p["items"],
                        p["tokens"],
                        p["register_s"],
                        p["cold"]["p50_ms"],
                        p["cold"]["p99_ms"],
                        None if i == 0 else cc["cold_cost"]["marginal_ms_per_item"][i - 1],
                        p["encode_ms_mean"],
                        p.get("db_read_ms"),
                        p["state_bytes"] / 2**20 if "state_bytes" in p else None,
                        p.get("redis_set_ms"),
                        p.get("redis_get_ms"),
                        p["warm"]["p50_ms"],
                        p["warm"]["p99_ms"],
                    ]
                    for i, p in enumerate(cc["points"])
                ],
            ),
            "",
            f"Slopes (log-log): cold p50 {_slope(cc.get('cold_p50_fit'))}, warm p50 {_slope(cc.get('warm_p50_fit'))}, "
            f"encode {_slope(cc.get('encode_fit'))}, context read {_slope(cc.get('db_read_ms_fit'))}, Redis SET "
            f"{_slope(cc.get('redis_set_ms_fit'))}. Per context item (linear fit): cold "
            f"{cc['cold_cost']['ms_per_item_fit']:.4f} ms, warm {cc['warm_cost']['ms_per_item_fit']:.4f} ms, encode "
            f"{cc['encode_cost']['ms_per_item_fit']:.4f} ms, context read "
            f"{cc.get('db_read_ms_cost', {}).get('ms_per_item_fit', float('nan')):.4f} ms, Redis SET "
            f"{cc.get('redis_set_ms_cost', {}).get('ms_per_item_fit', float('nan')):.4f} ms. Context read and Redis "
            "SET/GET are timed in the benchmark's process with the service's own code (repository.get_context with "
            "the vectors decoded; RedisVectorCache.put/get of the group's real encoded state), medians of 5.",
            "",
            f"![/predict vs context size]({img_prefix}scale_context.png)",
            "",
        ]
    es = r.get("encode_scaling", {})
    if es.get("points"):
        lines += [
            h2 + " Encoding a context, in process (where the cold path's growth comes from)",
            "",
            f"The shipped checkpoint in the benchmark's process ({es['torch_threads']} torch thread(s), as the "
            "server), contexts of template items with their stored vectors; up to 2,000 items (GPO_MAX_CONTEXT_ITEMS)."
            " Attention: F.scaled_dot_product_attention alone at the context's token count, times the layers, called "
            "as the model calls it (an all-True boolean mask) and without a mask. Medians of 3.",
            "",
            md_table(
                ["items", "tokens", "encode ms", "features ms", "attention ms (mask)", "attention ms (no mask)"],
                [
                    [
                        p["items"],
                        p["tokens"],
                        p["encode_ms"],
                        p["features_ms"],
                        p["attention_masked_ms"],
                        p["attention_unmasked_ms"],
                    ]
                    for p in es["points"]
                ],
            ),
            "",
            f"Slopes against tokens (log-log): encode {_slope(es.get('encode_ms_fit_tokens'))}, features "
            f"{_slope(es.get('features_ms_fit_tokens'))}, attention with the mask "
            f"{_slope(es.get('attention_masked_ms_fit_tokens'))}, without "
            f"{_slope(es.get('attention_unmasked_ms_fit_tokens'))}.",
            "",
        ]
    fg = r.get("forget_group", [])
    if fg:
        lines += [
            "Every context write calls the context cache's `forget_group`, which scans all local entries under the "
            "cache's lock (timed in process, the service's ContextCache filled with tiny states): "
            + "; ".join(
                f"{x['entries']:,} entries: {x['forget_group_ms']} ms (a hit: {x['get_hit_ms']} ms)" for x in fg
            )
            + ".",
            "",
        ]
    found = findings(r)
    if found:
        lines += [h2 + " What grows faster than it should (from the figures above)", "", *found, ""]
    qc = r.get("questions_curve", {})
    if qc.get("points"):
        lines += [
            h2 + " Warm /predict against questions per request",
            "",
            f"Known questions (in the checkpoint's prior bank), warm probe groups, concurrency 1, "
            f"{s['curve_requests']} requests per point.",
            "",
            md_table(
                ["questions", "p50 ms", "p99 ms", "ms per question (p50)"],
                [
                    [p["questions"], p["warm"]["p50_ms"], p["warm"]["p99_ms"], p["warm"]["p50_ms"] / p["questions"]]
                    for p in qc["points"]
                ],
            ),
            "",
            f"Slope (log-log): warm p50 {_slope(qc.get('warm_p50_fit'))}.",
            "",
            f"![/predict vs questions per request]({img_prefix}scale_questions.png)",
            "",
        ]
    cb = r.get("context_cache", {})
    if cb.get("states"):
        lines += [
            h2 + " Context cache: bytes per group",
            "",
            f"Every encoded context in Redis after the first level's measurements ({cb['states']} states). Per group: "
            f"the {cb['probe_groups']} probe groups ({cb['items_per_group']} items, {cb['tokens_per_group']} option "
            "tokens on average); per item and per context token: all states. Local: the in-process LRU's own "
            "accounting of the same state (float32 keys and values of every layer and the ridge solution; Python "
            "object overhead not counted). Redis: the stored value and `MEMORY USAGE`.",
            "",
            md_table(
                ["where", "bytes per group", "bytes per item", "bytes per context token"],
                [
                    ["local LRU", cb["local_bytes_per_group"], cb["local_bytes_per_item"], cb["local_bytes_per_token"]],
                    [
                        "Redis value",
                        cb["redis_value_bytes_per_group"],
                        cb["redis_value_bytes_per_item"],
                        cb["redis_value_bytes_per_token"],
                    ],
                    [
                        "Redis MEMORY USAGE",
                        cb["redis_memory_usage_per_group"],
                        cb["redis_memory_usage_per_item"],
                        cb["redis_memory_usage_per_token"],
                    ],
                ],
            ),
            "",
            f"So the default GPO_CONTEXT_CACHE_MB=256 holds about {cb['groups_in_default_256mb']:,} groups of "
            f"{cb['items_per_group']} items (mean).",
            "",
        ]
    hr = r.get("hit_ratio", [])
    if hr:
        lines += [
            h2 + " Context cache hit ratio when the working set exceeds it",
            "",
            f"A second server (then a third, with Redis shared) whose GPO_CONTEXT_CACHE_MB holds about half of a "
            f"working set of {hr[0]['working_set']} groups never predicted; one untimed pass fills it, then "
            f"{s['hit_requests']} /predict in uniform random order and 3 sequential cycles, 2 clients. Ratios from the "
            "server's `gpo_context_state_lookups_total`.",
            "",
            md_table(
                [
                    "Redis shared",
                    "order",
                    "cache MB",
                    "capacity C (groups, est.)",
                    "C/N",
                    "requests",
                    "local hits",
                    "Redis hits",
                    "misses",
                    "local hit ratio",
                    "Redis hit ratio (of local misses)",
                    "p50 ms",
                    "p99 ms",
                ],
                [
                    [
                        "yes" if h["redis_shared"] else "no",
                        h["pattern"],
                        h["cache_mb"],
                        h["capacity_groups_est"],
                        h.get("c_over_n"),
                        h["requests"],
                        h["local"],
                        h["shared"],
                        h["miss"],
                        h["local_hit_ratio"],
                        h["shared_hit_ratio_of_local_misses"],
                        h["p50_ms"],
                        h["p99_ms"],
                    ]
                    for h in hr
                ],
            ),
            "",
            "LRU under uniform random access over N groups with room for C keeps a hit ratio of about C/N; a "
            "sequential cycle over more groups than it holds evicts each group just before it comes back (next to no "
            "local hits; the few seen come from the 2 clients reordering requests).",
            "",
        ]
    lines += [
        h2 + " Command",
        "",
        "```bash",
        f".venv/bin/python {r['command'].replace('python ', '', 1)}",
        "```",
        "",
        "Raw figures: [benchmarks/scale.json](benchmarks/scale.json)."
        if heading == "##"
        else "Raw figures: scale.json.",
        "",
    ]
    return "\n".join(lines)


def write_outputs(r: dict[str, Any], args: argparse.Namespace, partial: bool = False) -> None:
    out_json = Path(args.json)
    out_json.write_text(json.dumps(r, indent=2, default=str))
    if partial:
        return
    outdir = out_json.parent
    written = plots(r, outdir)
    md = markdown(r, img_prefix="")
    Path(args.out_md).write_text(md)
    print(md)
    print(f"wrote {out_json}, {args.out_md}, {', '.join(str(outdir / w) for w in written)}", flush=True)
    if not args.no_benchmarks_md:
        section = markdown(r, img_prefix="benchmarks/", heading="##")
        for path in (ROOT / "BENCHMARKS.md", ROOT / "benchmarks" / "NOTES.md"):
            path.write_text(replace_section(path.read_text(), section))
            print(f"section '## Scale (issue 18)' written into {path}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1k stored groups only, smaller curves (development)")
    ap.add_argument("--levels", help="stored-group levels, comma-separated (default 1000,10000,100000)")
    ap.add_argument("--time-budget-s", type=float, default=5400, help="wall-clock budget of the whole run")
    ap.add_argument("--reserve-s", type=float, default=240, help="time kept for measuring after a load")
    ap.add_argument("--max-db-gb", type=float, default=25, help="largest database the levels may make")
    ap.add_argument("--max-load-s", type=float, default=900, help="warn when a level's load is projected past this")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--probes", type=int, default=50, help="cold probe groups per level")
    ap.add_argument("--warm-requests", type=int, default=600)
    ap.add_argument("--register-s", type=float, default=20)
    ap.add_argument("--context-sizes", default="10,30,100,300,1000")
    ap.add_argument("--question-counts", default="1,4,16,64,256")
    ap.add_argument("--encode-sizes", default="100,250,500,1000,2000", help="in-process encode scaling (items)")
    ap.add_argument("--clones", type=int, default=10, help="cold samples per context size")
    ap.add_argument("--curve-requests", type=int, default=100, help="warm requests per curve point")
    ap.add_argument("--working-set", type=int, default=100, help="groups of the hit-ratio runs")
    ap.add_argument("--hit-requests", type=int, default=1500)
    ap.add_argument("--skip-hit-ratio", action="store_true")
    ap.add_argument("--api-threads", type=int, default=1, help="GPO_TORCH_THREADS of the servers")
    ap.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (temporary folder)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "scale.json"))
    ap.add_argument("--out-md", default=str(ROOT / "benchmarks" / "scale.md"))
    ap.add_argument("--no-benchmarks-md", action="store_true", help="do not write the section of BENCHMARKS.md")
    ap.add_argument("--report-only", metavar="JSON", help="tables, plots and sections from a saved scale.json")
    args = ap.parse_args()
    if args.quick:
        args.levels = args.levels or "1000"
        args.context_sizes, args.question_counts, args.encode_sizes = "10,30,100,300", "1,4,16,64", "100,300,1000"
        args.warm_requests, args.register_s, args.clones = 200, 8, 5
        args.curve_requests, args.hit_requests, args.working_set = 40, 400, 60
        args.no_benchmarks_md = True
    args.levels = [int(x) for x in (args.levels or "1000,10000,100000").split(",")]
    args.context_sizes = [int(x) for x in str(args.context_sizes).split(",")]
    args.question_counts = [int(x) for x in str(args.question_counts).split(",")]
    args.encode_sizes = [int(x) for x in str(args.encode_sizes).split(",")]
    if args.report_only:
        results = json.loads(Path(args.report_only).read_text())
    else:
        results = run(args)
    write_outputs(results, args)
    if results.get("cuts") or results.get("notes"):
        loud("THIS RUN WAS CUT SHORT OR REDUCED: " + " | ".join([*results.get("notes", []), *results.get("cuts", [])]))


if __name__ == "__main__":
    main()
