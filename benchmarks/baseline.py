"""/predict against a baseline checkout: the current code vs a git revision (`benchmarks.run --baseline REV`),
measured in one run by interleaving the two servers.

The revision is checked out into a temporary detached git worktree (removed again in every case) and served from
there, with `PYTHONPATH` and the working directory set to that checkout, so the baseline runs its own code and its
own shipped checkpoint; the current server is started the same way from this checkout. Both use the suite's one
`gpo worker`, each its own SQLite file (embedded defaults otherwise), the same group and context. Then R rounds: in
each, each server in turn (ABBA: the order alternates between rounds) runs the concurrency-1 latency run and the
concurrency-16 throughput run. Reported: per server the median over rounds of p50 / p99 at c1 and requests/s at
c16, the ratios current / baseline of those medians, and the per-round ratios' min and max (the noise band).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

SIDES = ("current", "baseline")
COLD_REQUESTS = 2  # per server and round, with a `cold` workload
FIGURES = ("p50_ms", "p99_ms", "rps")  # p50 and p99 at concurrency 1, requests/s at concurrency 16


# ---------------------------------------------------------------------------------------------- pure helpers


def abba_order(rounds: int, sides: Sequence[str] = SIDES) -> list[tuple[str, ...]]:
    """The order of the servers in each round: A B, B A, A B, ... (each side first in every other round)."""
    return [tuple(sides) if i % 2 == 0 else tuple(reversed(sides)) for i in range(rounds)]


def summarize(rounds: Sequence[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Per-round figures ({side: {p50_ms, p99_ms, rps[, cold_ms]}}) -> medians per side, ratios current / baseline
    of the medians, and the min and max of the per-round ratios (how far one round's ratio strays: the noise band)."""
    figures = [f for f in (*FIGURES, "cold_ms") if all(f in r[side] for r in rounds for side in SIDES)]
    median = {side: {f: statistics.median(r[side][f] for r in rounds) for f in figures} for side in SIDES}
    # p50 / p99 / cold: below 1 the current code is faster; rps: above 1 it is
    per_round = {f: [r["current"][f] / r["baseline"][f] for r in rounds] for f in figures}
    return {
        "median": {side: {f: round(v, 3 if f != "rps" else 1) for f, v in m.items()} for side, m in median.items()},
        "ratio": {f: round(median["current"][f] / median["baseline"][f], 3) for f in figures},
        "round_ratio_min_max": {f: [round(min(v), 3), round(max(v), 3)] for f, v in per_round.items()},
    }


def has_uncommitted_changes(porcelain: str, under: str = "service/") -> bool:
    """Whether `git status --porcelain` output shows a change to a tracked file under `under` (untracked: no)."""
    for line in porcelain.splitlines():
        if line.startswith("??") or len(line) < 4:
            continue
        paths = line[3:].split(" -> ")  # a rename shows both paths
        if any(p.strip('"').startswith(under) for p in paths):
            return True
    return False


# ---------------------------------------------------------------------------------------------- git and processes


def _git(root: Path, *args: str) -> str:
    r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


def cold_request(url: str, body: dict, headers: dict[str, str]) -> float:
    """Milliseconds of one /predict (raises on an error answer)."""
    import httpx

    t0 = time.perf_counter()
    httpx.post(f"{url}/predict", json=body, headers=headers, timeout=600).raise_for_status()
    return (time.perf_counter() - t0) * 1000


def describe_revisions(root: Path, rev: str) -> dict[str, Any]:
    """The baseline revision as given and as a short hash, and the current commit (+ uncommitted service/ changes)."""
    return {
        "rev": rev,
        "baseline_commit": _git(root, "rev-parse", "--short", f"{rev}^{{commit}}"),
        "current_commit": _git(root, "rev-parse", "--short", "HEAD"),
        "current_uncommitted": has_uncommitted_changes(_git(root, "status", "--porcelain", "--", "service/")),
    }


@contextmanager
def checkout(root: Path, rev: str) -> Iterator[Path]:
    """`rev` in a temporary detached worktree of the repository at `root`; removed on the way out, whatever
    happened (an error, Ctrl-C)."""
    parent = Path(tempfile.mkdtemp(prefix="gpo-bench-baseline-"))
    path = parent / "checkout"
    try:
        _git(root, "worktree", "add", "--detach", str(path), rev)
        yield path
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(path)], capture_output=True)
        subprocess.run(["git", "-C", str(root), "worktree", "prune"], capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)


def side_env(checkout_dir: Path) -> dict[str, str]:
    """What makes a `python -m service.cli` run the code of `checkout_dir` (it wins over the venv's editable
    install, which points at one checkout)."""
    return {"PYTHONPATH": str(checkout_dir)}


def service_imported_from(checkout_dir: Path) -> str:
    """The file `service` is imported from in that checkout's environment; raises if it is not that checkout's."""
    out = subprocess.run(
        [sys.executable, "-c", "import service; print(service.__file__)"],
        cwd=checkout_dir,
        env={**os.environ, **side_env(checkout_dir)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(checkout_dir.resolve()):
        raise RuntimeError(f"`service` of {checkout_dir} is imported from {out}")
    return out


def create_key(checkout_dir: Path, database_url: str) -> dict[str, str]:
    """A key made by that checkout's own `gpo keys create` (its own migrations): the Authorization header."""
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "bench", "--name", "benchmarks.baseline"],
        cwd=checkout_dir,
        env={**os.environ, **side_env(checkout_dir), "GPO_DATABASE_URL": database_url},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {"Authorization": f"Bearer {out.splitlines()[-1]}"}


# ---------------------------------------------------------------------------------------------- the section


def section(
    root: Path,
    rev: str,
    base_env: dict[str, str],
    context: list[dict],
    bodies: list[dict],
    quick: bool,
    tmp: Path,
    cold: Callable[[str], dict] | None = None,
    workload: str = "known5",
) -> dict[str, Any]:
    """Measure /predict on the current checkout (`root`) and on `rev`, interleaved; `base_env` names the worker
    and the API torch threads (as the main section's servers get them). With `cold` (a tag -> a request no cache
    has seen), each round also times COLD_REQUESTS such requests per server, one at a time (embedding included)."""
    from benchmarks import run as suite
    from benchmarks.loadgen import load

    rounds_n = 5 if quick else 9
    c1_requests, c16_s = (200, 3.0) if quick else (600, 8.0)
    out: dict[str, Any] = {**describe_revisions(root, rev), "rounds_n": rounds_n, "workload": workload}
    out["settings"] = {
        "c1_requests": c1_requests,
        "c16_duration_s": c16_s,
        "api_torch_threads": base_env.get("GPO_TORCH_THREADS"),
    }
    print(
        f"/predict against a baseline checkout: current {out['current_commit']}"
        f"{' + uncommitted changes' if out['current_uncommitted'] else ''} vs baseline {out['baseline_commit']} "
        f"({rev}), {rounds_n} rounds",
        flush=True,
    )
    with ExitStack() as stack:
        dirs = {"current": root, "baseline": stack.enter_context(checkout(root, rev))}
        out["service_imported_from"] = {side: service_imported_from(d) for side, d in dirs.items()}
        print("service imported from:", out["service_imported_from"], flush=True)
        procs, headers = {}, {}
        for side, d in dirs.items():
            db = f"sqlite:///{tmp / f'baseline-{side}.sqlite3'}"
            port = suite.free_port()
            proc = suite.Proc(
                f"api-{side}",
                ["serve", "--port", str(port)],
                {**base_env, "GPO_DATABASE_URL": db, **side_env(d)},
                port,
                tmp,
                cmd=[sys.executable, "-m", "service.cli"],
                cwd=d,
            )
            stack.callback(proc.stop)
            proc.wait_ready()
            procs[side] = proc
            headers[side] = create_key(d, db)
        for side, proc in procs.items():
            suite.register(proc.url, "bench", context, headers=headers[side])
            suite.warm(proc.url, bodies, headers=headers[side])
            target = [("127.0.0.1", proc.port)]
            load(target, "/predict", bodies, concurrency=4, duration_s=1.0, headers=headers[side])  # connection paths
        out["load_avg_start"] = [round(x, 2) for x in os.getloadavg()]
        rounds: list[dict[str, dict[str, Any]]] = []
        for i, order in enumerate(abba_order(rounds_n)):
            row: dict[str, dict[str, Any]] = {}
            for side in order:
                target = [("127.0.0.1", procs[side].port)]
                h = headers[side]
                c1 = load(target, "/predict", bodies, concurrency=1, requests_per_connection=c1_requests, headers=h)
                c16 = load(target, "/predict", bodies, concurrency=16, duration_s=c16_s, headers=h)
                statuses: dict[str, int] = {}
                for res in (c1, c16):
                    for k, v in res.statuses.items():
                        statuses[str(k)] = statuses.get(str(k), 0) + v
                row[side] = {
                    "p50_ms": round(c1.pct(50), 3),
                    "p99_ms": round(c1.pct(99), 3),
                    "rps": round(c16.rps, 1),
                    "statuses": statuses,
                }
                if cold is not None:
                    times = [cold_request(procs[side].url, cold(f"{side}-{i}-{j}"), h) for j in range(COLD_REQUESTS)]
                    row[side]["cold_ms"] = round(statistics.median(times), 1)
                print(f"  round {i + 1} {side:8s}: {row[side]}", flush=True)
            rounds.append({"order": list(order), **row})
        out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["rounds"] = rounds
    out.update(summarize(rounds))
    bad = [
        (i + 1, side, r[side]["statuses"])
        for i, r in enumerate(rounds)
        for side in SIDES
        if set(r[side]["statuses"]) != {"200"}
    ]
    if bad:
        print(f"WARNING: non-200 answers in the baseline section: {bad}", flush=True)
    print(
        f"baseline: medians {out['median']}; current / baseline p50 {out['ratio']['p50_ms']} "
        f"(rounds {out['round_ratio_min_max']['p50_ms']}), rps {out['ratio']['rps']} "
        f"(rounds {out['round_ratio_min_max']['rps']})",
        flush=True,
    )
    return out


def markdown(b: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """The section's lines of BENCHMARKS.md (or of its own report with --only-baseline)."""
    cur = f"`{b['current_commit']}`" + (" + uncommitted changes under service/" if b["current_uncommitted"] else "")
    base = f"`{b['baseline_commit']}`" + (f" (`--baseline {b['rev']}`)" if b["rev"] != b["baseline_commit"] else "")
    s, m, ratio, band = b["settings"], b["median"], b["ratio"], b["round_ratio_min_max"]
    figures = [f for f in (*FIGURES, "cold_ms") if f in ratio]
    heads = {"p50_ms": "p50 ms (c1)", "p99_ms": "p99 ms (c1)", "rps": "req/s (c16)", "cold_ms": "new texts ms"}
    work = (
        "Workload: one request of 32 questions outside the prior bank (the shipped partisan questions, then reworded "
        f"OpinionQA questions; their embeddings cached after warm-up); *new texts*: {COLD_REQUESTS} more such requests "
        "per server and round, one at a time, with every question text made new (every option embedded by the "
        "worker: embedding included), median."
        if b.get("workload") == "new32"
        else "Workload: one known five-option question per request."
    )
    lines = [
        "",
        "## /predict against a baseline checkout",
        "",
        f"Current {cur} vs baseline {base}, measured in the same run on {machine['cpus']} CPUs "
        f"({machine['platform']}): {b['rounds_n']} rounds; in each, each server in turn (the order alternating "
        f"between rounds: ABBA) runs {s['c1_requests']} requests at concurrency 1 and {s['c16_duration_s']:g} s at "
        f"concurrency 16. Same `gpo worker`, each server its own SQLite file, API torch threads "
        f"{s['api_torch_threads']}. Load average at start / end {b['load_avg_start'][0]} / {b['load_avg_end'][0]}. "
        "Figures: median over rounds; ratios current / baseline of the medians, with the min - max of the "
        "per-round ratios. " + work,
        "",
        "| server | " + " | ".join(heads[f] for f in figures) + " |",
        "|---" * (len(figures) + 1) + "|",
        f"| current {b['current_commit']} | " + " | ".join(str(m["current"][f]) for f in figures) + " |",
        f"| baseline {b['baseline_commit']} | " + " | ".join(str(m["baseline"][f]) for f in figures) + " |",
        "| **current / baseline** (rounds min - max) | "
        + " | ".join(f"**{ratio[f]}** ({band[f][0]} - {band[f][1]})" for f in figures)
        + " |",
        "",
        "p50, p99 and new-text times below 1: the current code answers faster; req/s above 1: it serves more.",
        "",
    ]
    return lines


def standalone_markdown(r: dict[str, Any]) -> str:
    """The report of a `--only-baseline` run: a header and this section."""
    m = r["machine"]
    lines = [
        "# Benchmarks: /predict against a baseline checkout",
        "",
        f"Measured {r['date']} by `.venv/bin/python -m benchmarks.run --only-baseline --baseline "
        f"{r['baseline']['rev']}{' --quick' if r['quick'] else ''}"
        f"{' --workload new32' if r['baseline'].get('workload') == 'new32' else ''}` on {m['cpus']} CPUs "
        f"({m['platform']}, Python {m['python']}, torch {m['torch']}). Processes on loopback: one `gpo worker` "
        "(SmolLM2) and two `gpo serve`; "
        "the load generator (benchmarks/loadgen.py, closed loop, keep-alive) runs on the same cores.",
    ]
    return "\n".join(lines + markdown(r["baseline"], m))
