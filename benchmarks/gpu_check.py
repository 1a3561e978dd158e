"""The GPU path (issue 18): the base LLM in 8-bit (bitsandbytes) against 16-bit, on what gpo-serve computes with it.

    .venv/bin/python benchmarks/gpu_check.py [--device auto] [--questions 120] [--gen-n 8] [--gen-tokens 64]
        [--json benchmarks/gpu_check.json] [--out benchmarks/gpu_check.md]

Loads the settings' base LLM (GPO_EMBEDDER: the bundled SmolLM2 by default) twice: the reference precision (fp16 on
CUDA, fp32 on CPU) and 8-bit (bitsandbytes int8, CUDA only). For each it measures:
- the pooled item embeddings of `--questions` shipped OpinionQA questions (every option, in the checkpoint's
  template): embeddings per second, and the cosine similarity of each 8-bit vector to its reference vector;
- the served GPO predictions (the shipped checkpoint) for Democrat and Republican, each registered with its answers
  to 20 contentious questions, on those questions: alignment to the true answers, and the largest difference in a
  predicted probability between the two precisions;
- sampling: `--gen-n` responses of at most `--gen-tokens` tokens to a few prompts, new tokens per second.
Without a CUDA device the 8-bit branch is skipped and the output says so in its first line: on CPU the script checks
itself (the reference path end to end), nothing about 8-bit. Figures only; never a test. DEVELOPERS.md (the device
tool) says how to run it on a lent GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.partisan import PARTIES, context_ids  # noqa: E402
from service.config import get_settings  # noqa: E402
from service.embedder.embed import Embedder  # noqa: E402
from service.embedder.generate import sample_responses  # noqa: E402
from service.embedder.loading import BaseLM, load_base_lm, resolve_device  # noqa: E402
from service.serving.predictor import AnsweredItem, Item, Predictor  # noqa: E402
from service.training.datasets import PreferenceDataset  # noqa: E402
from service.training.metrics import question_alignment  # noqa: E402
from service.training.opinionqa import load_opinionqa  # noqa: E402

PROMPTS = (
    "What should cities do about traffic?",
    "Describe a good first job for a teenager.",
    "Should schools teach personal finance? Answer briefly.",
)


def load_variant(settings, device: torch.device, eight_bit: bool) -> BaseLM:
    """The settings' base LLM on `device`: 8-bit (bitsandbytes), or the reference precision (fp16 on CUDA)."""
    lm = load_base_lm(
        settings.embedder,
        revision=settings.embedder_revision,
        device=str(device),
        load_in_8bit=eight_bit,
        cache_dir=settings.cache_dir,
    )
    if device.type == "cuda" and not eight_bit:
        lm.model.half()  # fp16, as the issue compares (load_base_lm picks bf16 where the card has it)
    return lm


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def embed_rate(embedder: Embedder, texts: list[str], device) -> tuple[np.ndarray, float]:
    """(vectors [N, D], embeddings per second) of `texts`, after one warm-up batch."""
    embedder.embed(texts[:32])
    sync(device)
    t0 = time.perf_counter()
    vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
    sync(device)
    return vectors, len(texts) / (time.perf_counter() - t0)


def generation_rate(lm: BaseLM, n: int, max_tokens: int, device) -> dict[str, float]:
    """New tokens per second sampling `n` responses of at most `max_tokens` tokens to each of PROMPTS (seeded)."""
    sample_responses(lm, PROMPTS[0], n=1, max_new_tokens=4, seed=0)  # warm-up
    sync(device)
    tokens, t0 = 0, time.perf_counter()
    for i, prompt in enumerate(PROMPTS):
        texts = sample_responses(lm, prompt, n=n, max_new_tokens=max_tokens, temperature=0.7, seed=i)
        tokens += sum(len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    sync(device)
    wall = time.perf_counter() - t0
    return {"new_tokens": tokens, "seconds": round(wall, 3), "tokens_per_s": round(tokens / wall, 1)}


def served(
    predictor: Predictor, oqa: PreferenceDataset, ctx: list[str], targets: list[str], emb: dict[str, np.ndarray]
):
    """party -> qid -> the served distribution with these embeddings (qid -> [n_options, D])."""
    items = [Item(oqa.question(q).text, oqa.question(q).options, emb[q]) for q in targets]
    out = {}
    for party in PARTIES:
        context = [AnsweredItem(oqa.question(q).text, oqa.question(q).options, emb[q], oqa.dist(party, q)) for q in ctx]
        preds = predictor.predict(context, items)
        out[party] = {q: np.asarray(p.distribution) for q, p in zip(targets, preds, strict=True)}
    return out


def alignment(oqa: PreferenceDataset, preds) -> float:
    scores = [
        question_alignment(oqa.question(q), d, oqa.dist(party, q))
        for party, by_q in preds.items()
        for q, d in by_q.items()
    ]
    return float(np.mean([s for s in scores if s is not None]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = get_settings()
    device = resolve_device(args.device)
    oqa = load_opinionqa()
    predictor = Predictor.from_store(settings.model_store, settings.checkpoint)
    ctx = context_ids(oqa)
    answered = [q.qid for q in oqa.questions if q.qid not in ctx and all(oqa.has(p, q.qid) for p in PARTIES)]
    targets = answered[:: max(1, len(answered) // args.questions)][: args.questions]
    questions = [oqa.question(q) for q in ctx + targets]
    texts = [t for q in questions for t in predictor.choice_texts(q.text, q.options)]
    bounds = np.cumsum([0, *(q.n_options for q in questions)])
    pooling = predictor.ckpt.meta["embedder"].get("pooling", settings.pooling)
    template = predictor.ckpt.meta["embedder"]["template_version"]

    variants = [("reference", False)] + ([("8-bit", True)] if device.type == "cuda" else [])
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "torch": torch.__version__,
        "model": settings.embedder,
        "checkpoint": predictor.model_version,
        "questions": len(targets),
        "texts": len(texts),
        "eight_bit_skipped": device.type != "cuda",
        "variants": {},
    }
    vectors, preds = {}, {}
    for name, eight_bit in variants:
        t0 = time.perf_counter()
        lm = load_variant(settings, device, eight_bit)
        load_s = time.perf_counter() - t0
        embedder = Embedder(lm, pooling=pooling, batch_size=32, template_version=template)
        predictor.check_embedder(embedder.key_prefix, embedder.dim)  # the checkpoint's embedder, as served
        vecs, rate = embed_rate(embedder, texts, device)
        emb = {q.qid: vecs[a:b] for q, a, b in zip(questions, bounds[:-1], bounds[1:], strict=True)}
        vectors[name], preds[name] = vecs, served(predictor, oqa, ctx, targets, emb)
        report["variants"][name] = {
            "dtype": "int8 (bitsandbytes)" if eight_bit else str(next(lm.model.parameters()).dtype),
            "load_s": round(load_s, 2),
            "memory_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None,
            "embeddings_per_s": round(rate, 1),
            "alignment": round(alignment(oqa, preds[name]), 4),
            "generation": generation_rate(lm, args.gen_n, args.gen_tokens, device),
        }
        del lm, embedder
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    if "8-bit" in vectors:
        a, b = vectors["reference"], vectors["8-bit"]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        diff = max(
            float(np.abs(preds["reference"][p][q] - preds["8-bit"][p][q]).max()) for p in PARTIES for q in targets
        )
        report["eight_bit_vs_reference"] = {
            "cosine_mean": round(float(cos.mean()), 5),
            "cosine_min": round(float(cos.min()), 5),
            "cosine_p5": round(float(np.percentile(cos, 5)), 5),
            "max_probability_difference": round(diff, 5),
        }
    return report


def markdown(report: dict[str, Any], command: str) -> str:
    lines = ["## The GPU path: 8-bit against 16-bit (issue 18)", ""]
    if report["eight_bit_skipped"]:
        lines += ["**8-bit skipped: no CUDA device here.** Only the reference path ran (a check of the script).", ""]
    lines += [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}` on {report['device']} "
        f"(torch {report['torch']}): base LLM `{report['model']}`, checkpoint `{report['checkpoint']}`, "
        f"{report['questions']} OpinionQA target questions and 20 context questions ({report['texts']} item texts), "
        "Democrat and Republican.",
        "",
        "| precision | weights | load s | peak GPU memory GB | embeddings/s | alignment | new tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in report["variants"].items():
        lines.append(
            f"| {name} | {v['dtype']} | {v['load_s']} | {v['memory_gb']} | {v['embeddings_per_s']} | "
            f"{v['alignment']} | {v['generation']['tokens_per_s']} |"
        )
    if "eight_bit_vs_reference" in report:
        c = report["eight_bit_vs_reference"]
        lines += [
            "",
            f"8-bit vs reference: cosine of the pooled item vectors mean {c['cosine_mean']}, 5th percentile "
            f"{c['cosine_p5']}, min {c['cosine_min']}; largest difference in a predicted probability "
            f"{c['max_probability_difference']}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--questions", type=int, default=120)
    p.add_argument("--gen-n", type=int, default=8)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "gpu_check.json")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_check.md")
    args = p.parse_args()
    report = run(args)
    command = "benchmarks/gpu_check.py " + " ".join(sys.argv[1:])
    text = markdown(report, command.strip())
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
