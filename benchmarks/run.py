"""The benchmark suite of issue 4: one command, figures printed and written to BENCHMARKS.md (+ JSON).

    .venv/bin/python -m benchmarks.run                  # everything (about 10 minutes on a 2-core CPU)
    .venv/bin/python -m benchmarks.run --quick          # shorter runs, same sections
    .venv/bin/python -m benchmarks.run --baseline REV   # + /predict against git revision REV, interleaved
    .venv/bin/python -m benchmarks.run --only-baseline --baseline REV --quick   # that section alone (baseline.md)

Real processes on loopback: one `gpo worker` (the base LLM, SmolLM2 by default) and `gpo serve` replicas in
front of it, with the shipped checkpoint and the shipped OpinionQA data (a group with 100 context questions,
five-option target questions). Every ratio is measured within this one run. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from benchmarks import baseline
from benchmarks.loadgen import load
from benchmarks.naive_gpo import naive_eval_group, naive_loss

ROOT = Path(__file__).resolve().parent.parent
GPO = str(Path(sys.executable).parent / "gpo")
POSTGRES_ADMIN_URL = os.environ.get("GPO_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GPO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

TARGETS = {
    "predict_p50_ms_c1": ("<=", 5.0),
    "predict_rps_c16": (">=", 300.0),
    "cached_vs_reencode": (">=", 5.0),
    "embedding_hit_vs_miss": (">=", 100.0),
    "train_step_vs_naive": (">=", 10.0),
    "eval_vs_naive": (">=", 10.0),
    "generate_score_share_n4": ("<=", 0.05),
    "generate_score_share_n8": ("<=", 0.05),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A `gpo` subprocess on a port, its log in a file; peak memory read from /proc."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        port: int,
        logdir: Path,
        *,
        cmd: list[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """`cmd` (default: the venv's `gpo`) + `args`, run in `cwd`, with os.environ updated by `env`."""
        self.name, self.port = name, port
        self.log = open(logdir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(
            [*(cmd or [GPO]), *args], cwd=cwd, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT
        )

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
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(20)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.log.close()


# ---------------------------------------------------------------------------------------------- workload


# The Authorization header of the database the servers of the current phase share (set by `use_key_of`).
AUTH: dict[str, str] = {}


def use_key_of(database_url: str) -> None:
    """Create an API key in that database (as `gpo keys create` does) and send it from now on."""
    from service.auth import create_key
    from service.db.migrate import upgrade_database
    from service.db.session import make_engine, make_sessionmaker

    upgrade_database(database_url)
    engine = make_engine(database_url)
    try:
        _, secret = create_key(make_sessionmaker(engine), "bench", "benchmarks.run")
    finally:
        engine.dispose()
    AUTH.clear()
    AUTH["Authorization"] = f"Bearer {secret}"


def workload(n_context: int = 100, n_targets: int = 20) -> tuple[list[dict], list[dict]]:
    """A real OpinionQA group: n_context context items and n_targets five-option target questions."""
    from service.training.opinionqa import load_opinionqa

    ds = load_opinionqa()
    group = ds.groups[0]
    five = [q for q in ds.questions if len(q.options) == 5][:n_targets]
    taken = {q.qid for q in five}
    ctx_q = [q for q in ds.questions if q.qid not in taken][:n_context]
    context = [
        {"question": q.text, "options": list(q.options), "distribution": [float(v) for v in ds.dists[group][q.qid]]}
        for q in ctx_q
    ]
    targets = [{"question": q.text, "options": list(q.options)} for q in five]
    return context, targets


def new_question_targets(n_targets: int = 32) -> list[dict]:
    """n_targets questions outside the shipped checkpoint's prior bank, with their options: the shipped partisan
    questions (service/data/partisan), then reworded OpinionQA questions (service/data/reworded)."""
    rows = []
    for path in (
        ROOT / "service" / "data" / "partisan" / "partisan_questions.jsonl",
        ROOT / "service" / "data" / "reworded" / "opinionqa_reworded.jsonl",
    ):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"question": r["text"], "options": list(r["options"])} for r in rows[:n_targets]]


def fresh_body(group: str, targets: list[dict], tag: str) -> dict:
    """One request with every target's question text made new (" (poll <tag>)" appended): nothing of it is in any
    embedding cache, so answering it embeds every option."""
    return {"group_id": group, "questions": [{**t, "question": f"{t['question']} (poll {tag})"} for t in targets]}


def predict_bodies(group: str, targets: list[dict]) -> list[dict]:
    """One request per five-option question (what a client asking about one question sends)."""
    return [{"group_id": group, "questions": [t]} for t in targets]


def register(url: str, group: str, context: list[dict], headers: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    r = httpx.post(
        f"{url}/groups/{group}/context",
        json={"mode": "replace", "items": context},
        timeout=900,
        headers=AUTH if headers is None else headers,
    )
    r.raise_for_status()
    return time.perf_counter() - t0


def warm(url: str, bodies: list[dict], headers: dict[str, str] | None = None) -> None:
    for b in bodies:
        httpx.post(
            f"{url}/predict", json=b, timeout=600, headers=AUTH if headers is None else headers
        ).raise_for_status()


def latency_and_throughput(ports: list[int], bodies: list[dict], quick: bool) -> dict[str, Any]:
    targets = [("127.0.0.1", p) for p in ports]
    load(targets, "/predict", bodies, concurrency=4, duration_s=1.0, headers=AUTH)  # warm the connection paths
    c1 = load(targets, "/predict", bodies, concurrency=1, requests_per_connection=300 if quick else 1000, headers=AUTH)
    c16 = load(targets, "/predict", bodies, concurrency=16, duration_s=4.0 if quick else 10.0, headers=AUTH)
    return {"c1": c1.summary(), "c16": c16.summary()}


# ---------------------------------------------------------------------------------------------- sections


def section_cached_vs_reencode_model(quick: bool) -> dict[str, Any]:
    """In-process, the shipped checkpoint: encode + targets per request vs targets against a cached context."""
    from service.config import Settings
    from service.serving.predictor import AnsweredItem, Item, Predictor

    settings = Settings()
    predictor = Predictor.from_store(settings.model_store, settings.checkpoint)
    dim = predictor.spec.emb_dim
    rng = np.random.default_rng(0)
    context, targets = workload()
    ctx = [
        AnsweredItem(
            c["question"],
            c["options"],
            rng.standard_normal((len(c["options"]), dim)).astype(np.float32),
            np.asarray(c["distribution"], np.float32),
        )
        for c in context
    ]
    tgt = [Item(targets[0]["question"], targets[0]["options"], rng.standard_normal((5, dim)).astype(np.float32))]
    reps = 50 if quick else 200
    state = predictor.encode(ctx)

    def timeit(fn: Callable[[], object]) -> float:
        for _ in range(5):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    full_ms = timeit(lambda: predictor.predict(ctx, tgt))
    encode_then_ms = timeit(lambda: predictor.predict_encoded([(predictor.encode(ctx), tgt)]))
    cached_ms = timeit(lambda: predictor.predict_encoded([(state, tgt)]))
    return {
        "context_tokens": int(state.mask.shape[1]),
        "full_forward_ms": round(full_ms, 3),
        "encode_then_targets_ms": round(encode_then_ms, 3),
        "cached_targets_ms": round(cached_ms, 3),
        "ratio_full_vs_cached": round(full_ms / cached_ms, 1),
    }


def section_embedding_cache(worker_url: str, texts: list[str], quick: bool) -> dict[str, Any]:
    """ItemEmbeddings (the API's path) with the worker over HTTP: a miss (LLM forward) vs a hit (LRU, Redis)."""
    import anyio

    from service.cache import LRUVectorCache, RedisVectorCache
    from service.config import Settings
    from service.embedder.client import build_worker
    from service.serving.embeddings import ItemEmbeddings

    settings = Settings(worker_url=worker_url)
    prefix = f"gpo-bench-{uuid.uuid4().hex[:8]}:"
    out: dict[str, Any] = {"texts_per_call": 5}

    async def main() -> None:
        worker = build_worker(settings)
        info = await worker.info()
        key = info.key_prefix("gpo-mc-v1")
        for name, cache in (("lru", LRUVectorCache(10_000)), ("redis", RedisVectorCache(REDIS_URL, prefix))):
            emb = ItemEmbeddings(cache, worker)
            miss, hit = [], []
            n = 4 if quick else 8
            for i in range(n):
                batch = [f"{t} [{name} {i}]" for t in texts[:5]]  # never seen: a miss
                t0 = time.perf_counter()
                await emb.embed(batch, key)
                miss.append(time.perf_counter() - t0)
                for _ in range(20):
                    t0 = time.perf_counter()
                    await emb.embed(batch, key)
                    hit.append(time.perf_counter() - t0)
            if name == "redis":
                cache.delete_prefix("")
            cache.close()
            m, h = statistics.median(miss) * 1000, statistics.median(hit) * 1000
            out[name] = {"miss_ms": round(m, 3), "hit_ms": round(h, 4), "ratio": round(m / h, 1)}
        await worker.aclose()

    anyio.run(main)
    return out


def _synthetic_episodes(dim_x: int, B: int = 8, seed: int = 0) -> list:
    """A meta-training batch of the default shapes: B groups, context 10..100 questions, 30 targets, 4 options."""
    from service.gpo.batch import Episode

    g = torch.Generator().manual_seed(seed)
    eps = []
    for _ in range(B):
        n_ctx = int(torch.randint(10, 101, (1,), generator=g))
        k = 4
        n = (n_ctx + 30) * k
        is_ctx = torch.zeros(n, dtype=torch.bool)
        is_ctx[: n_ctx * k] = True
        q = torch.cat([torch.zeros(n_ctx * k, dtype=torch.long), torch.arange(30).repeat_interleave(k)])
        y = torch.softmax(torch.randn(n_ctx + 30, k, generator=g), -1).reshape(-1)
        eps.append(Episode(x=torch.randn(n, dim_x, generator=g), y=y, is_context=is_ctx, question=q))
    return eps


def _synthetic_batch(dim_x: int, B: int = 8, seed: int = 0):
    """`_synthetic_episodes` padded into one batch."""
    from service.gpo.batch import collate

    return collate(_synthetic_episodes(dim_x, B, seed))


def step_flops(fn: Callable[[], torch.Tensor]) -> int:
    """Floating-point operations of one forward + backward, counted by torch's FlopCounterMode (matmuls and
    attention; the CPU flash-attention kernels are counted with torch's own SDPA formulas)."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(
            q, k, v
        ),
        aten._scaled_dot_product_flash_attention_for_cpu_backward: lambda g, q, k, v, *a, out_shape=None, **kw: (
            sdpa_backward_flop_count(g, q, k, v)
        ),
    }
    with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        fn().backward()
    return int(counter.get_total_flops())


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """What this machine's BLAS reaches on a large square matmul at the current thread count (GFLOP/s)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return reps * 2 * n**3 / (time.perf_counter() - t0) / 1e9


def section_training_and_eval(quick: bool) -> dict[str, Any]:
    """Meta-training step and one test group's evaluation: ours vs the naive reference, same weights, same shapes.

    Ours is the trainer's step (`episodes_loss`: episodes of similar length padded together); "ours, one padded
    batch" is the same model code on the batch padded as a whole, which is what the naive reference runs.
    """
    from service.config import Settings
    from service.gpo.batch import collate, collate_buckets
    from service.gpo.model import GPO, GPOConfig
    from service.serving.predictor import Predictor
    from service.training.fit import episodes_loss

    settings = Settings()
    ckpt_cfg = Predictor.from_store(settings.model_store, settings.checkpoint).model.cfg
    model = GPO(GPOConfig(**{**ckpt_cfg.to_dict()}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    episodes = [_synthetic_episodes(ckpt_cfg.dim_x, seed=s) for s in range(3)]
    padded = [collate(e) for e in episodes]
    losses: dict[str, Callable[[int], torch.Tensor]] = {
        "ours": lambda i: episodes_loss(model, episodes[i]),
        "ours_padded": lambda i: model.loss(padded[i]),
        "naive": lambda i: naive_loss(model, padded[i]),
    }

    def step(name: str, i: int) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        losses[name](i % len(episodes)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return time.perf_counter() - t0

    model.train()
    reps = 5 if quick else 15
    times: dict[str, list[float]] = {name: [] for name in losses}
    for name in losses:  # warm-up
        step(name, 0)
    for i in range(reps):  # interleaved, so that a noisy neighbour hits every variant alike
        for name in losses:
            times[name].append(step(name, i))
    ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
    flops = {name: step_flops(lambda name=name: losses[name](0)) for name in losses}
    peak = {"float32": matmul_peak_gflops(torch.float32), "bfloat16": matmul_peak_gflops(torch.bfloat16)}
    # loss equality on one batch (the reference computes the same function)
    with torch.no_grad():
        model.eval()
        a, b, c = (float(losses[name](0)) for name in ("ours", "ours_padded", "naive"))
    real = sum(int(e.y.shape[0]) for e in episodes[0])
    buckets = collate_buckets(episodes[0])
    groups = [len(idx) for idx, _ in buckets]
    in_groups = sum(int(b.x.shape[0] * b.x.shape[1]) for _, b in buckets)

    # evaluation of one test group: 20 context questions, 660 four-option target questions
    g = torch.Generator().manual_seed(1)
    n_ctx_tok, n_tgt_q = 80, 660 if not quick else 160
    x_ctx = torch.randn(n_ctx_tok, ckpt_cfg.dim_x, generator=g)
    y_ctx = torch.softmax(torch.randn(20, 4, generator=g), -1).reshape(-1)
    x_tgt = torch.randn(n_tgt_q * 4, ckpt_cfg.dim_x, generator=g)
    from service.gpo.batch import GPOBatch

    n = n_ctx_tok + n_tgt_q * 4
    is_ctx = torch.zeros(1, n, dtype=torch.bool)
    is_ctx[0, :n_ctx_tok] = True
    question = torch.cat([torch.zeros(n_ctx_tok, dtype=torch.long), torch.arange(n_tgt_q).repeat_interleave(4)])[None]
    batch = GPOBatch(
        torch.cat([x_ctx, x_tgt])[None], torch.cat([y_ctx, torch.zeros(n_tgt_q * 4)])[None], is_ctx, ~is_ctx, question
    )
    with torch.no_grad():
        model(batch)
        t0 = time.perf_counter()
        ours_pred = model(batch)
        ours_eval = time.perf_counter() - t0
        t0 = time.perf_counter()
        naive_logits = naive_eval_group(model, x_ctx, y_ctx, x_tgt)
        naive_eval = time.perf_counter() - t0
    same = float((ours_pred.logits[0, n_ctx_tok:] - naive_logits).abs().max())
    ours, naive = ms["ours"], ms["naive"]
    return {
        "train_step_ms": round(ours, 2),
        "train_step_padded_ms": round(ms["ours_padded"], 2),
        "naive_train_step_ms": round(naive, 2),
        "train_ratio": round(naive / ours, 2),
        "train_ratio_padded": round(naive / ms["ours_padded"], 2),
        "loss_ours_padded_naive": [round(a, 6), round(b, 6), round(c, 6)],
        "train_tokens": {
            "real": real,
            "in_groups": in_groups,
            "padded": int(padded[0].x.shape[0] * padded[0].x.shape[1]),
        },
        "train_groups": groups,
        "train_gflop": {name: round(f / 1e9, 2) for name, f in flops.items()},
        "train_gflops_per_s": {name: round(flops[name] / 1e9 / (ms[name] / 1000), 1) for name in losses},
        "matmul_peak_gflops_per_s": {k: round(v, 1) for k, v in peak.items()},
        # the step time if our FLOPs ran at the machine's large-matmul rate, and the ratio that would give
        "train_floor_ms": {k: round(flops["ours"] / 1e9 / v * 1000, 1) for k, v in peak.items()},
        "train_ratio_ceiling": {k: round(naive / (flops["ours"] / 1e9 / v * 1000), 2) for k, v in peak.items()},
        "eval_group_s": round(ours_eval, 4),
        "naive_eval_group_s": round(naive_eval, 3),
        "eval_ratio": round(naive_eval / ours_eval, 1),
        "eval_target_questions": n_tgt_q,
        "eval_max_abs_logit_diff": same,
    }


def section_generate(url: str, group: str, quick: bool) -> dict[str, Any]:
    """/generate through HTTP: where the time goes (Server-Timing: context, sample, score)."""
    out: dict[str, Any] = {}
    for n in (4, 8):
        rows = []
        for rep in range(1 if quick else 3):
            # the API's defaults for the rest: max_new_tokens 64, temperature 0.8
            body = {"group_id": group, "prompt": "Describe what makes a good neighbour.", "n": n, "seed": 100 + rep}
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/generate", json=body, timeout=900, headers=AUTH)
            total = time.perf_counter() - t0
            r.raise_for_status()
            parts = {k: float(v) / 1000 for k, v in (p.split(";dur=") for p in r.headers["Server-Timing"].split(", "))}
            rows.append({"total_s": total, **{f"{k}_s": v for k, v in parts.items()}})
        score = statistics.mean(r["score_s"] for r in rows)
        total = statistics.mean(r["total_s"] for r in rows)
        out[f"n{n}"] = {
            "total_s": round(total, 3),
            "sample_s": round(statistics.mean(r["sample_s"] for r in rows), 3),
            "score_s": round(score, 4),
            "score_share": round(score / total, 4),
            "reps": len(rows),
        }
    return out


# ---------------------------------------------------------------------------------------------- orchestration


def _postgres_database() -> tuple[str, Callable[[], None]]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"gpo_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False), drop


def _clear_redis(prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=prefix + "*", count=1000))
    if keys:
        r.unlink(*keys)
    r.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "api_torch_threads": args.api_threads,
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
    }
    context, targets = workload()
    bodies = predict_bodies("bench", targets)
    cold = None
    if args.workload == "new32":  # one request of 32 new questions; and fresh ones, whose options are embedded
        targets = new_question_targets(32)
        bodies = [{"group_id": "bench", "questions": targets}]
        cold = lambda tag: fresh_body("bench", targets, tag)  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="gpo-bench-"))
    procs: list[Proc] = []
    drop_db: Callable[[], None] | None = None
    redis_prefix = f"gpo-bench-{uuid.uuid4().hex[:8]}:"
    try:
        wport = free_port()
        worker = Proc("worker", ["worker", "--port", str(wport)], {"GPO_ACCESS_LOG": "false"}, wport, tmp)
        procs.append(worker)
        worker.wait_ready()
        base_env = {
            "GPO_WORKER_URL": worker.url,
            "GPO_TORCH_THREADS": str(args.api_threads),
            "GPO_WORKER_TIMEOUT_S": "600",
        }
        if args.baseline:  # first, before the other sections start servers: its own two, interleaved
            results["baseline"] = baseline.section(
                ROOT, args.baseline, base_env, context, bodies, args.quick, tmp, cold=cold, workload=args.workload
            )
            if args.only_baseline:
                return results

        # 1. one replica on the embedded defaults (SQLite file, in-process cache), worker in its own process
        port = free_port()
        api = Proc(
            "api",
            ["serve", "--port", str(port)],
            {**base_env, "GPO_DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}"},
            port,
            tmp,
        )
        procs.append(api)
        api.wait_ready()
        use_key_of(f"sqlite:///{tmp / 'bench.sqlite3'}")
        results["register_100_items_s"] = round(register(api.url, "bench", context), 2)
        warm(api.url, bodies)
        print("predict: one replica, SQLite, warm caches", flush=True)
        results["predict"] = latency_and_throughput([port], bodies, args.quick)
        print(json.dumps(results["predict"]), flush=True)

        # 2. the same server without the context cache: the context is read and re-encoded per request
        nport = free_port()
        nocache = Proc(
            "api-nocache",
            ["serve", "--port", str(nport)],
            {
                **base_env,
                "GPO_DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
                "GPO_CONTEXT_CACHE_MB": "0",
                "GPO_MIGRATE_ON_START": "false",
            },
            nport,
            tmp,
        )
        procs.append(nocache)
        nocache.wait_ready()
        warm(nocache.url, bodies)
        c1 = load(
            [("127.0.0.1", nport)],
            "/predict",
            bodies,
            concurrency=1,
            requests_per_connection=100 if args.quick else 300,
            headers=AUTH,
        )
        nocache.stop()
        procs.remove(nocache)
        results["reencode_http"] = {"c1": c1.summary()}
        results["cached_vs_reencode_http"] = round(c1.pct(50) / results["predict"]["c1"]["p50_ms"], 1)
        print("re-encoding per request:", json.dumps(results["reencode_http"]), flush=True)

        results["cached_vs_reencode_model"] = section_cached_vs_reencode_model(args.quick)
        print("model only:", json.dumps(results["cached_vs_reencode_model"]), flush=True)

        texts = [f"{t['question']} {o}" for t in targets for o in t["options"]]
        results["embedding_cache"] = section_embedding_cache(worker.url, texts, args.quick)
        print("embedding cache:", json.dumps(results["embedding_cache"]), flush=True)

        if not args.skip_generate:
            results["generate"] = section_generate(api.url, "bench", args.quick)
            print("generate:", json.dumps(results["generate"]), flush=True)

        results["peak_rss_mib"] = {"api": round(api.peak_rss_mib(), 1), "worker": round(worker.peak_rss_mib(), 1)}
        api.stop()
        procs.remove(api)

        # 3. two replicas sharing Postgres and Redis
        db_url, drop_db = _postgres_database()
        use_key_of(db_url)
        shared_env = {
            **base_env,
            "GPO_DATABASE_URL": db_url,
            "GPO_REDIS_URL": REDIS_URL,
            "GPO_REDIS_PREFIX": redis_prefix,
        }
        ports = [free_port(), free_port()]
        replicas = []
        for i, p in enumerate(ports):
            r = Proc(f"replica{i}", ["serve", "--port", str(p)], shared_env, p, tmp)
            procs.append(r)
            r.wait_ready()
            replicas.append(r)
        register(replicas[0].url, "bench", context)
        for r in replicas:
            warm(r.url, bodies)
        one = latency_and_throughput([ports[0]], bodies, args.quick)
        two = latency_and_throughput(ports, bodies, args.quick)
        # a context change through replica 0 is what replica 1 answers with next
        v0 = httpx.post(f"{replicas[1].url}/predict", json=bodies[0], headers=AUTH).json()["context_version"]
        httpx.post(
            f"{replicas[0].url}/groups/bench/context",
            json={"mode": "append", "items": [context[0]]},
            timeout=600,
            headers=AUTH,
        ).raise_for_status()
        v1 = httpx.post(f"{replicas[1].url}/predict", json=bodies[0], headers=AUTH).json()["context_version"]
        results["replicas"] = {"one_replica": one, "two_replicas": two, "version_seen_by_other_replica": [v0, v1]}
        print("replicas:", json.dumps(results["replicas"]), flush=True)
        results["peak_rss_mib"]["replica"] = round(max(r.peak_rss_mib() for r in replicas), 1)
    finally:
        for p in procs:
            p.stop()
        if drop_db is not None:
            drop_db()
        if not args.only_baseline:
            _clear_redis(redis_prefix)

    print("training and evaluation vs the naive reference", flush=True)
    results["training"] = section_training_and_eval(args.quick)
    print(json.dumps(results["training"]), flush=True)
    results["checks"] = checks(results)
    return results


def checks(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    values = {
        "predict_p50_ms_c1": r["predict"]["c1"]["p50_ms"],
        "predict_rps_c16": r["predict"]["c16"]["rps"],
        "cached_vs_reencode": r["cached_vs_reencode_http"],
        "embedding_hit_vs_miss": min(r["embedding_cache"][k]["ratio"] for k in ("lru", "redis")),
        "train_step_vs_naive": r["training"]["train_ratio"],
        "eval_vs_naive": r["training"]["eval_ratio"],
    }
    if "generate" in r:
        values["generate_score_share_n4"] = r["generate"]["n4"]["score_share"]
        values["generate_score_share_n8"] = r["generate"]["n8"]["score_share"]
    out = {}
    for name, value in values.items():
        op, target = TARGETS[name]
        ok = value <= target if op == "<=" else value >= target
        out[name] = {"value": value, "target": f"{op} {target:g}", "met": bool(ok)}
    return out


def _training_detail(t: dict[str, Any]) -> list[str]:
    """The training step's padding, FLOPs and the ceiling the machine's matmul rate puts on the ratio."""
    if "train_gflop" not in t:  # results saved before these figures existed
        return []
    f, r, pk, floor, ceil = (
        t["train_gflop"],
        t["train_gflops_per_s"],
        t["matmul_peak_gflops_per_s"],
        t["train_floor_ms"],
        t["train_ratio_ceiling"],
    )
    tok = t["train_tokens"]
    return [
        f"  - Ours pads the batch's episodes in groups of similar length ({t['train_groups']} episodes per group), "
        f"so it runs {tok['in_groups']} token positions for {tok['real']} real tokens, where one padded batch runs "
        f"{tok['padded']}. The same model code "
        f"on the one padded batch takes {t['train_step_padded_ms']} ms ({t['train_ratio_padded']}x vs naive).",
        f"  - Work per step (forward + backward, torch's FlopCounterMode): ours {f['ours']} GFLOP, one padded "
        f"batch {f['ours_padded']}, naive {f['naive']}. Achieved: {r['ours']}, {r['ours_padded']} and "
        f"{r['naive']} GFLOP/s. This machine's large-matmul rate: {pk['float32']} GFLOP/s in float32, "
        f"{pk['bfloat16']} in bfloat16.",
        f"  - **Ceiling.** Even at the float32 matmul rate, our step's FLOPs take {floor['float32']} ms: at most "
        f"**{ceil['float32']}x** faster than the naive step (**{ceil['bfloat16']}x** at the bfloat16 rate, "
        f"{floor['bfloat16']} ms). A 10x step needs fewer FLOPs, not a faster implementation of these.",
    ]


def markdown(r: dict[str, Any]) -> str:
    if "predict" not in r:  # --only-baseline
        return baseline.standalone_markdown(r)
    m = r["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {r['date']} by `.venv/bin/python -m benchmarks.run{' --quick' if r['quick'] else ''}` on "
        f"{m['cpus']} CPUs ({m['platform']}, Python {m['python']}, torch {m['torch']}, API torch threads "
        f"{m['api_torch_threads']}). One run; every ratio compares figures of this run. Processes on loopback: one "
        "`gpo worker` (SmolLM2) and `gpo serve` replicas; the load generator (benchmarks/loadgen.py, closed loop, "
        "keep-alive) runs on the same 2 cores.",
        "",
        "## Targets (issue 4)",
        "",
        "| figure | measured | target | met |",
        "|---|---|---|---|",
    ]
    for name, c in r["checks"].items():
        lines.append(f"| {name} | {c['value']} | {c['target']} | {'yes' if c['met'] else '**NO**'} |")
    p = r["predict"]
    lines += [
        "",
        "## /predict over HTTP (group with 100 context questions, one five-option question per request)",
        "",
        "| setup | concurrency | requests | req/s | p50 ms | p99 ms | statuses |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name: str, c: str, s: dict) -> str:
        return f"| {name} | {c} | {s['requests']} | {s['rps']} | {s['p50_ms']} | {s['p99_ms']} | {s['statuses']} |"

    lines.append(row("1 replica, SQLite, cached context", "1", p["c1"]))
    lines.append(row("1 replica, SQLite, cached context", "16", p["c16"]))
    lines.append(row("1 replica, SQLite, re-encoding per request", "1", r["reencode_http"]["c1"]))
    rep = r["replicas"]
    lines.append(row("1 replica, Postgres + Redis", "1", rep["one_replica"]["c1"]))
    lines.append(row("1 replica, Postgres + Redis", "16", rep["one_replica"]["c16"]))
    lines.append(row("2 replicas, Postgres + Redis", "1", rep["two_replicas"]["c1"]))
    lines.append(row("2 replicas, Postgres + Redis", "16 (8 + 8)", rep["two_replicas"]["c16"]))
    mm = r["cached_vs_reencode_model"]
    e = r["embedding_cache"]
    t = r["training"]
    lines += [
        "",
        f"Context version seen by replica 1 before / after a change through replica 0: "
        f"{rep['version_seen_by_other_replica']}.",
        "",
        "## Cached context vs re-encoding",
        "",
        f"- HTTP p50, cached {p['c1']['p50_ms']} ms vs re-encoding {r['reencode_http']['c1']['p50_ms']} ms: "
        f"**{r['cached_vs_reencode_http']}x** (the re-encoding server reads the 100 items and their embeddings "
        "from the database and encodes them per request).",
        f"- Model only ({mm['context_tokens']} context tokens, one five-option target): full forward "
        f"{mm['full_forward_ms']} ms, encode + targets {mm['encode_then_targets_ms']} ms, cached targets "
        f"{mm['cached_targets_ms']} ms: **{mm['ratio_full_vs_cached']}x**.",
        "",
        "## Embedding cache (the API's ItemEmbeddings, 5 texts per call, worker over HTTP)",
        "",
        "| cache | miss ms | hit ms | ratio |",
        "|---|---|---|---|",
        f"| in-process LRU | {e['lru']['miss_ms']} | {e['lru']['hit_ms']} | {e['lru']['ratio']}x |",
        f"| Redis | {e['redis']['miss_ms']} | {e['redis']['hit_ms']} | {e['redis']['ratio']}x |",
        "",
        "## Meta-training and evaluation vs the naive reference (benchmarks/naive_gpo.py)",
        "",
        f"- Training step (8 groups, context 10-100 questions, 30 targets, 4 options, the shipped architecture; "
        f"median of interleaved steps): ours {t['train_step_ms']} ms, naive {t['naive_train_step_ms']} ms: "
        f"**{t['train_ratio']}x** (losses ours / ours padded / naive {t['loss_ours_padded_naive']}).",
        *_training_detail(t),
        f"- Evaluation of one group (20 context questions, {t['eval_target_questions']} four-option targets): ours "
        f"{t['eval_group_s']} s (one forward), naive {t['naive_eval_group_s']} s (one forward per option): "
        f"**{t['eval_ratio']}x** (max |logit difference| {t['eval_max_abs_logit_diff']:.2e}).",
    ]
    if "generate" in r:
        g = r["generate"]
        lines += [
            "",
            "## /generate (API defaults: max_new_tokens 64, temperature 0.8): share of the time spent on scoring",
            "",
            "| n | total s | sampling s (vectors pooled while sampling) | scoring s (GPO forward) | scoring share |",
            "|---|---|---|---|---|",
        ]
        for n in (4, 8):
            x = g[f"n{n}"]
            lines.append(f"| {n} | {x['total_s']} | {x['sample_s']} | {x['score_s']} | {x['score_share']:.1%} |")
    if "baseline" in r:
        lines += baseline.markdown(r["baseline"], m)
    pk = r["peak_rss_mib"]
    lines += [
        "",
        "## Peak memory (VmHWM)",
        "",
        f"API {pk['api']} MiB, API replica on Postgres + Redis {pk.get('replica', 'n/a')} MiB, worker "
        f"{pk['worker']} MiB.",
        "",
    ]
    missed = [n for n, c in r["checks"].items() if not c["met"]]
    if missed:
        lines += ["## Missed targets", "", "Missed in this run: " + ", ".join(missed) + ". See the notes below.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (a smoke test of the suite)")
    ap.add_argument(
        "--out", help="markdown report (default BENCHMARKS.md; benchmarks/baseline.md with --only-baseline)"
    )
    ap.add_argument("--json", help="results (default benchmarks/results.json; benchmarks/baseline.json likewise)")
    ap.add_argument("--baseline", metavar="REV", help="also measure /predict against this git revision, interleaved")
    ap.add_argument("--only-baseline", action="store_true", help="only the worker and the --baseline section")
    ap.add_argument(
        "--workload",
        choices=("known5", "new32"),
        default="known5",
        help="baseline section: one known five-option question per request (known5), or one request of 32 questions "
        "outside the prior bank, plus fresh ones whose options must be embedded (new32)",
    )
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of this process (training section)")
    ap.add_argument("--api-threads", type=int, default=1, help="GPO_TORCH_THREADS of the API processes")
    ap.add_argument("--report-only", metavar="JSON", help="rewrite the markdown from a saved results file")
    args = ap.parse_args()
    if args.only_baseline and not args.baseline:
        ap.error("--only-baseline needs --baseline REV")
    alone = args.only_baseline or (args.report_only and "predict" not in json.loads(Path(args.report_only).read_text()))
    args.out = args.out or str(ROOT / ("benchmarks/baseline.md" if alone else "BENCHMARKS.md"))
    args.json = args.json or str(ROOT / "benchmarks" / ("baseline.json" if alone else "results.json"))
    if args.report_only:
        results = json.loads(Path(args.report_only).read_text())
    else:
        results = run(args)
        Path(args.json).write_text(json.dumps(results, indent=2))
    text = markdown(results)
    notes = ROOT / "benchmarks" / "NOTES.md"
    if notes.exists() and not alone:
        text += "\n" + notes.read_text()
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
