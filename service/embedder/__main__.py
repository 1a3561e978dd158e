"""`python -m service.embedder warm|bench`: fill the embedding cache, or measure load and embedding speed.

warm FILE    embed the texts of FILE (JSON lines, one string each) into the cache of the current Settings.
bench        first load (GGUF conversion, in a fresh temporary cache), reload, embedding throughput, and a
             fully cached rerun in a fresh Embedder; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from service.config import get_settings
from service.embedder.embed import Embedder, EmbeddingCache, warm
from service.embedder.loading import BaseLM, identify_base_lm, load_base_lm
from service.embedder.prompts import format_items

log = logging.getLogger("service.embedder")

_FALLBACK_QUESTIONS = [
    (
        "How much of a problem is crime in your local community?",
        ["A major problem", "A minor problem", "Not a problem"],
    ),
    (
        "Do you think the economy will be better, worse or the same a year from now?",
        ["Better", "Worse", "Same"],
    ),
    ("How often do you read a printed newspaper?", ["Daily", "Several times a week", "Rarely", "Never"]),
    ("Should the government do more to address climate change?", ["Much more", "Somewhat more", "No more"]),
]


def read_opinionqa_items(root: Path, n: int) -> list[str]:
    """Up to `n` prompt+option texts from OpinionQA `*/SEX_data.json` (all options of each question)."""
    texts: list[str] = []
    for path in sorted(root.glob("human_resp/*/SEX_data.json")):
        for entry in json.loads(path.read_text()).values():
            texts.extend(format_items(entry["question_text"], list(entry["MC_options"])))
            if len(texts) >= n:
                return texts[:n]
    return texts


def bench_texts(n: int, opinionqa: Path | None) -> list[str]:
    texts = read_opinionqa_items(opinionqa, n) if opinionqa is not None else []
    i = 0
    while len(texts) < n:  # pad with numbered variants of built-in questions
        q, opts = _FALLBACK_QUESTIONS[i % len(_FALLBACK_QUESTIONS)]
        texts.extend(format_items(f"{q} (variant {i})", opts))
        i += 1
    return texts[:n]


def run_bench(args: argparse.Namespace) -> dict[str, float | int | str]:
    settings = get_settings()
    texts = bench_texts(args.n, args.opinionqa)
    t0 = time.perf_counter()
    import transformers  # noqa: F401  (timed apart: every process that loads a model pays it once)

    import_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="gpo-bench-") as tmp:
        cache_dir = Path(tmp) if args.fresh else settings.cache_dir

        def load() -> BaseLM:
            return load_base_lm(
                settings.embedder,
                revision=settings.embedder_revision,
                device=settings.device,
                load_in_8bit=settings.load_in_8bit,
                cache_dir=cache_dir,
            )

        t0 = time.perf_counter()
        lm = load()
        first_load = time.perf_counter() - t0
        del lm
        t0 = time.perf_counter()
        lm = load()
        reload = time.perf_counter() - t0

        cache = EmbeddingCache(Path(tmp) / "bench-embeddings")  # always empty at start: a cold run
        emb = Embedder(lm, pooling=settings.pooling, batch_size=args.batch_size, cache=cache)
        Embedder(lm, pooling=settings.pooling, batch_size=args.batch_size).embed(texts[: args.batch_size])  # warm-up
        t0 = time.perf_counter()
        vecs = emb.embed(texts, progress=args.progress)
        embed_s = time.perf_counter() - t0

        def must_not_load() -> BaseLM:
            raise AssertionError("cached rerun tried to load the model")

        t0 = time.perf_counter()
        ident = identify_base_lm(settings.embedder, revision=settings.embedder_revision, cache_dir=cache_dir)
        lazy = Embedder(must_not_load, identity=ident, pooling=settings.pooling, cache=EmbeddingCache(cache.directory))
        again = lazy.embed(texts)
        cached_s = time.perf_counter() - t0
        assert (again == vecs).all()
    return {
        "model": f"{lm.model_id}@{lm.revision}",
        "device": str(lm.device),
        "n_texts": len(texts),
        "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
        "dim": int(vecs.shape[1]),
        "batch_size": args.batch_size,
        "transformers_import_s": round(import_s, 2),
        "first_load_s": round(first_load, 2),
        "reload_s": round(reload, 2),
        "embed_s": round(embed_s, 2),
        "texts_per_s": round(len(texts) / embed_s, 1),
        "cached_rerun_s": round(cached_s, 4),
        "converted": bool(args.fresh),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.embedder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("warm", help="embed texts (JSON lines) into the cache")
    w.add_argument("file", type=Path)
    b = sub.add_parser("bench", help="measure load, reload, throughput and cached rerun")
    b.add_argument("--n", type=int, default=200)
    b.add_argument("--batch-size", type=int, default=16)
    b.add_argument("--opinionqa", type=Path, default=None, help="OpinionQA folder for realistic texts")
    b.add_argument("--fresh", action="store_true", help="convert the GGUF again in a temporary cache")
    b.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.cmd == "warm":
        texts = [json.loads(line) for line in args.file.read_text().splitlines() if line.strip()]
        t0 = time.perf_counter()
        computed = warm(texts, get_settings())
        print(json.dumps({"texts": len(texts), "computed": computed, "seconds": round(time.perf_counter() - t0, 3)}))
    else:
        print(json.dumps(run_bench(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
