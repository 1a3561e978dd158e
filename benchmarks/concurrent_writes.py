"""Concurrent context writes through a separate `gpo worker` under a short deadline: how long until every write has
landed, when each writer retries what was refused (429) or cut (503) after Retry-After.

    .venv/bin/python -m benchmarks.concurrent_writes [--groups 20] [--writers 8] [--items 6] [--deadline 15]

One `gpo worker` and one `gpo serve` (embedded SQLite, GPO_WORKER_URL) at nice 10, GPO_REQUEST_TIMEOUT_S=--deadline,
GPO_TORCH_THREADS=1. Each of --groups groups is replaced by --items fresh items (new texts: nothing cached), --writers
at a time. Prints each answer and the totals. Figures only; never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter

import httpx

from benchmarks import load


async def write_all(target: load.Target, groups: int, writers: int, items: int, patience_s: float) -> Counter:
    rng = random.Random(0)
    statuses: Counter = Counter()
    sem = asyncio.Semaphore(writers)
    headers = {"Authorization": f"Bearer {target.api_key}"}
    async with httpx.AsyncClient(timeout=patience_s, headers=headers) as client:

        async def one(i: int) -> None:
            body = {"mode": "replace", "items": [load._item(rng) for _ in range(items)]}  # noqa: SLF001
            async with sem:
                give_up = time.perf_counter() + patience_s
                while True:
                    t0 = time.perf_counter()
                    r = await client.post(f"{target.url}/groups/g{i}/context", json=body)
                    statuses[r.status_code] += 1
                    print(f"group {i}: {r.status_code} in {time.perf_counter() - t0:.2f} s", flush=True)
                    if r.is_success or "retry-after" not in r.headers or time.perf_counter() > give_up:
                        return
                    await asyncio.sleep(min(float(r.headers["retry-after"]), 5.0))

        await asyncio.gather(*(one(i) for i in range(groups)))
    return statuses


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=20)
    p.add_argument("--writers", type=int, default=8)
    p.add_argument("--items", type=int, default=6)
    p.add_argument("--deadline", type=float, default=15.0)
    p.add_argument("--patience-s", type=float, default=900.0)
    args = p.parse_args()
    env = {"GPO_REQUEST_TIMEOUT_S": str(args.deadline), "GPO_TORCH_THREADS": "1"}
    with load.spawned_worker(env, nice=10) as worker_url:
        env["GPO_WORKER_URL"] = worker_url
        with load.spawned_server(env, nice=10) as target:
            started = time.perf_counter()
            statuses = asyncio.run(write_all(target, args.groups, args.writers, args.items, args.patience_s))
            took = time.perf_counter() - started
    landed = statuses.get(200, 0)
    print(f"{landed} of {args.groups} writes landed in {took:.1f} s; answers {dict(sorted(statuses.items()))}")
    return 0 if landed == args.groups else 1


if __name__ == "__main__":
    raise SystemExit(main())
