"""Overload (issue 17): measure the capacity of one `gpo serve`, then offer it `--factor` times that, open loop.

    .venv/bin/python -m benchmarks.overload [--duration 60] [--factor 10] [--deadline 15] [--warmup-s 20]
                                            [--json F] [--out F]

One spawned `gpo serve` (the embedded defaults: SQLite, in-process worker with the bundled SmolLM2, the shipped
checkpoint) with GPO_REQUEST_TIMEOUT_S=--deadline. A closed-loop warm-up (not measured), then phase 1: closed loop,
--clients clients for --capacity-s seconds: the capacity is the rate of successful answers. Phase 2: open loop at
--factor x capacity for --duration seconds (benchmarks.load --rate). Pass: zero server errors (a 503 with
Retry-After is a refusal), every refusal with Retry-After, every answer within the deadline + 1 s, no acknowledged
write lost. Figures only; never a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import httpx

from benchmarks import load

MIX = {"register": 0.1, "predict": 0.75, "generate": 0.05, "read": 0.1}


def server_deadline(target: load.Target) -> dict:
    """From the server's /metrics: the requests it cut at its deadline, and how late it answered them (the histogram
    gpo_request_deadline_late_seconds: the seconds from the deadline to the answer, measured inside the server)."""
    text = httpx.get(f"{target.url}/metrics", timeout=30).text
    buckets: dict[str, float] = {}
    count = 0.0
    for line in text.splitlines():
        if line.startswith("gpo_request_deadline_late_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("gpo_request_deadline_late_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])
    lag: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gpo_event_loop_lag_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            lag[le] = float(line.rsplit(" ", 1)[1])
    lag_total = lag.get("+Inf", 0.0)
    lag_max = next((le for le, n in sorted(lag.items(), key=lambda kv: float(kv[0])) if n >= lag_total), "+Inf")
    within_1s = buckets.get("1.0", 0.0)
    slowest = next((le for le, n in sorted(buckets.items(), key=lambda kv: float(kv[0])) if n >= count), "+Inf")
    return {
        "cut": int(count),
        "answered_over_1s_late": int(count - within_1s),
        "late_at_most_s": slowest,
        # the server's event loop (gpo_event_loop_lag_seconds): while it is late no request is read or answered, and
        # that time comes before any deadline of the app starts
        "loop_lag_at_most_s": lag_max,
        "loop_lags_over_1s": int(lag_total - lag.get("1.0", 0.0)),
    }


def logged_errors(log: list[str]) -> list[str]:
    """Each ERROR line or traceback of the server's log, whole: chained tracebacks included, up to the final
    exception line."""
    chained = ("Traceback", "During handling", "The above exception")
    found, i = [], 0
    while i < len(log):
        if not (" ERROR " in log[i] or log[i].startswith("Traceback")):
            i += 1
            continue
        j = i + 1
        while j < len(log):
            if log[j].startswith((" ", "\t", *chained)) or not log[j]:
                j += 1
                continue
            # an exception line: the traceback ends here unless another one is chained to it
            k = j + 1
            while k < len(log) and not log[k]:
                k += 1
            if k < len(log) and log[k].startswith(chained[1:]):
                j = k
                continue
            break
        found.append("\n".join(log[i : j + 1]).rstrip())
        i = j + 1
    return found


def section(capacity: dict, overload: dict, args: argparse.Namespace) -> str:
    c, o, ol = capacity["total"], overload["total"], overload["open_loop"]
    sd = overload["server_deadline"]
    mix = ",".join(f"{k}={v:g}" for k, v in MIX.items())
    worker = (
        "SmolLM2 in a separate `gpo worker` process (GPO_WORKER_URL, the same deadline and nice)"
        if args.worker
        else "in-process SmolLM2"
    )
    offered = overload["open_loop"]["offered_rps"] / max(capacity["total"]["ok_rps"], 1e-9)
    factor = f"{args.factor:g}x" if args.rate <= 0 else f"{offered:.1f}x (a fixed rate)"
    how = f"--factor {args.factor:g}" if args.rate <= 0 else f"--rate {args.rate:g}"
    verdict = "PASS" if overload["passed"] else "FAIL: " + "; ".join(overload["failures"])
    return "\n".join(
        [
            f"## Overload (issue 17): {factor} capacity offered, open loop",
            "",
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
            "`.venv/bin/python -m benchmarks.overload "
            f"--duration {args.duration:g} {how} --deadline {args.deadline:g} --server-nice "
            f"{args.server_nice}{' --worker' if args.worker else ''}`: one `gpo serve` on the embedded defaults "
            f"(SQLite, {worker}, the shipped checkpoint), GPO_REQUEST_TIMEOUT_S={args.deadline:g}, mix {mix}, the load "
            f"generator on the same cores (the server at nice {args.server_nice}, so that the generator's clock is "
            "not starved by it).",
            "",
            f"A closed-loop warm-up of {args.warmup_s:g} s came first, not measured.",
            "",
            "| phase | offered | answered 2xx/s | 429 | 503 (Retry-After) | other 5xx | p50 / p99 of 2xx (ms) "
            "| slowest answer (ms) |",
            "|---|---|---|---|---|---|---|---|",
            f"| capacity: closed loop, {args.clients} clients, {args.capacity_s:g} s | - | {c['ok_rps']} | "
            f"{c['throttled_429']} | {c['refused_503']} | {c['server_errors'] - c['refused_503']} | "
            f"{c['p50_ms']} / {c['p99_ms']} | "
            f"{c['slowest_answer_ms']} |",
            f"| overload: open loop, {args.duration:g} s | {ol['offered_rps']:.1f}/s ({ol['arrivals']} requests, "
            f"{ol['not_sent']} not sent: {(ol['arrivals'] - ol['not_sent']) / args.duration:.1f}/s sent) "
            f"| {o['ok_rps']} | {o['throttled_429']} | {o['refused_503']} | "
            f"{o['server_errors']} | {o['p50_ms']} / {o['p99_ms']} | {o['slowest_answer_ms']} |",
            "",
            "| operation (overload) | requests | 2xx | 429 | 503 (Retry-After) | over the bound | slowest (ms) |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {op} | {v['count']} | {v['ok']} | {v['throttled_429']} | {v['refused_503']} | "
                f"{v['over_answer_bound']} | {v['slowest_answer_ms']} |"
                for op, v in overload["operations"].items()
            ),
            "",
            f"Inside the server: {sd['cut']} requests cut at the deadline, {sd['answered_over_1s_late']} of them "
            f"answered more than 1 s after it (all within {sd['late_at_most_s']} s; gpo_request_deadline_late_seconds)."
            f" The server's event loop was up to {sd['loop_lag_at_most_s']} s late ({sd['loop_lags_over_1s']} times by"
            " more than 1 s; gpo_event_loop_lag_seconds): time before a request reaches the app's deadline."
            f" The load generator's own event loop was up to {ol['client_loop_lag_max_ms']} ms late "
            f"({ol['client_loop_lags_over_500ms']} times by more than 0.5 s): such a delay adds to every answer it "
            "times.",
            "",
            f"Overload verdict (zero 5xx, refusals with Retry-After, every answer within {args.deadline + 1:g} s, "
            f"no acknowledged write lost: {overload['verification']['acknowledged_writes']} checked): **{verdict}**.",
            "",
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--factor", type=float, default=10.0)
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offer this many requests/s instead of --factor x the measured capacity: comparing builds at one rate "
        "(each run's capacity phase differs, and with it the load it offers)",
    )
    p.add_argument("--deadline", type=float, default=15.0, help="GPO_REQUEST_TIMEOUT_S of the server, s")
    p.add_argument(
        "--server-nice",
        type=int,
        default=10,
        help="run the server at this nice level: on shared cores a starved load generator times its own delays",
    )
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--capacity-s", type=float, default=20.0)
    p.add_argument(
        "--warmup-s",
        type=float,
        default=20.0,
        help="closed loop before the capacity phase, not measured: a cold server (first contexts encoded, first "
        "generations) would make the capacity, and so the offered load, too low",
    )
    p.add_argument("--max-in-flight", type=int, default=2000, help="open requests at most (arrivals past it: not sent)")
    p.add_argument(
        "--worker",
        action="store_true",
        help="the base LLM in its own `gpo worker` process (GPO_WORKER_URL, same deadline and nice) instead of in "
        "the API's process",
    )
    p.add_argument("--json", type=Path, default=Path("benchmarks/overload.json"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/overload.md"))
    args = p.parse_args()
    env = {"GPO_REQUEST_TIMEOUT_S": str(args.deadline), "GPO_TORCH_THREADS": "1"}
    common = dict(groups=20, mix=dict(MIX), timeout_s=args.deadline + 30, generate_timeout_s=args.deadline + 30)
    with contextlib.ExitStack() as stack:
        if args.worker:
            env["GPO_WORKER_URL"] = stack.enter_context(load.spawned_worker(env, nice=args.server_nice))
        target = stack.enter_context(load.spawned_server(env, nice=args.server_nice))
        if args.warmup_s > 0:
            warmup_cfg = load.LoadConfig(
                url=target.url, api_key=target.api_key, clients=args.clients, duration_s=args.warmup_s, **common
            )
            warmup = load._run_on(warmup_cfg, target)
            print(
                f"warm-up ({args.warmup_s:g} s, not measured): {warmup['total']['ok_rps']} answered 2xx/s", flush=True
            )
        capacity_cfg = load.LoadConfig(
            url=target.url, api_key=target.api_key, clients=args.clients, duration_s=args.capacity_s, **common
        )
        capacity = load._run_on(capacity_cfg, target)
        capacity["failures"] = load.failures(capacity)
        capacity["passed"] = not capacity["failures"]
        print(load.format_report(capacity), flush=True)
        rate = args.rate if args.rate > 0 else max(1.0, args.factor * capacity["total"]["ok_rps"])
        overload_cfg = load.LoadConfig(
            url=target.url,
            api_key=target.api_key,
            duration_s=args.duration,
            rate=min(rate, 5000.0),
            max_in_flight=args.max_in_flight,
            answer_bound_s=args.deadline + 1,
            seed=1,
            **common,
        )
        overload = load._run_on(overload_cfg, target)
        overload["server_deadline"] = server_deadline(target)
        # the server's own account of any 5xx: its ERROR lines and tracebacks (the log goes with its temporary dir)
        log = target.log_tail(2_000_000).splitlines()
        overload["server_errors_logged"] = logged_errors(log)[:5]
    overload["failures"] = load.failures(overload)
    overload["passed"] = not overload["failures"]
    print(load.format_report(overload), flush=True)
    args.json.write_text(json.dumps({"capacity": capacity, "overload": overload}, indent=1) + "\n")
    text = section(capacity, overload, args)
    args.out.write_text(text)
    print(text)
    return 0 if overload["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
