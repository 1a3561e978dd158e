"""Loopback ports for the servers tests start (uvicorn in a thread, `gpo serve` and redis-server processes)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST = 10000  # below the ports of well-known local services


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux; the usual default elsewhere)."""
    try:
        lo, hi = (int(p) for p in EPHEMERAL_RANGE.read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int = 1) -> list[int]:
    """`n` distinct loopback ports nothing listens on now, drawn outside the kernel's ephemeral range.

    A port the kernel hands out for bind(0) comes from the ephemeral range, and between this check and the server's
    own bind any outgoing connection (a starting replica's to Postgres or Redis) may take it as its source port: the
    server then fails to bind. Ports outside that range are never taken that way."""
    lo, hi = ephemeral_range()
    pool = range(LOWEST, lo) if lo - LOWEST >= 1000 else range(hi + 1, 65536)
    rng = random.SystemRandom()
    found: list[int] = []
    for _ in range(1000):
        port = rng.choice(pool)
        if port in found:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError(f"no {n} free loopback ports in {pool}")


def free_port() -> int:
    """One loopback port nothing listens on now (see `free_ports`)."""
    return free_ports(1)[0]
