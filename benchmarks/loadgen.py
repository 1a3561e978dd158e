"""A small closed-loop HTTP/1.1 load generator (keep-alive, asyncio streams): little CPU per request, so the server,
not the client, is what a 2-core benchmark measures. Loopback only."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.latencies_s)

    @property
    def rps(self) -> float:
        return self.n / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")

    def summary(self) -> dict:
        return {
            "requests": self.n,
            "wall_s": round(self.wall_s, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.pct(50), 3),
            "p90_ms": round(self.pct(90), 3),
            "p99_ms": round(self.pct(99), 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


def _request(host: str, path: str, body: bytes, extra_headers: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra_headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    return status, await reader.readexactly(length)


async def _connection(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    offset: int,
    result: LoadResult,
    deadline: float | None,
    n_requests: int | None,
    check: bool,
    extra_headers: str = "",
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        i = 0
        while True:
            if deadline is not None and time.perf_counter() >= deadline:
                break
            if n_requests is not None and i >= n_requests:
                break
            body = bodies[(offset + i) % len(bodies)]
            t0 = time.perf_counter()
            writer.write(_request(host, path, body, extra_headers))
            status, payload = await _read_response(reader)
            result.latencies_s.append(time.perf_counter() - t0)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if check and status == 200:
                json.loads(payload)
            i += 1
    finally:
        writer.close()


async def run_load(
    targets: Sequence[tuple[str, int]],
    path: str,
    bodies: Sequence[dict],
    *,
    concurrency: int,
    duration_s: float | None = None,
    requests_per_connection: int | None = None,
    check: bool = False,
    headers: Mapping[str, str] | None = None,
) -> LoadResult:
    """`concurrency` connections spread round-robin over `targets` (host, port), each sending requests back to
    back (closed loop) for `duration_s` or `requests_per_connection` requests."""
    encoded = [json.dumps(b).encode() for b in bodies]
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    result = LoadResult()
    t0 = time.perf_counter()
    deadline = None if duration_s is None else t0 + duration_s
    await asyncio.gather(
        *(
            _connection(
                targets[c % len(targets)][0],
                targets[c % len(targets)][1],
                path,
                encoded,
                c * 7,
                result,
                deadline,
                requests_per_connection,
                check,
                extra,
            )
            for c in range(concurrency)
        )
    )
    result.wall_s = time.perf_counter() - t0
    return result


def load(*args, **kwargs) -> LoadResult:
    """`run_load` on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop

        return uvloop.run(run_load(*args, **kwargs))
    except ImportError:
        return asyncio.run(run_load(*args, **kwargs))
