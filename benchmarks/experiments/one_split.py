"""One GPO variant on one OpinionQA split: meta-train, then score the test groups beside the baselines.

Used to compare feature/architecture variants quickly before a full `gpo eval`. Example (the figures in
issue 2's notes):
    .venv/bin/python benchmarks/experiments/one_split.py --features prior --readout ridge --budget 400 --threads 2
Prints the training summary and the alignment of GPO, uniform, train_mean, nearest_group and mixture.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import torch

from service.gpo.features import FeatureSpec
from service.training.evaluate import evaluate_split
from service.training.fit import TrainConfig, train_gpo
from service.training.items import build_item_table
from service.training.opinionqa import load_opinionqa
from service.training.splits import make_split, scorable_question_ids, validation_groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", choices=["prior", "emb", "emb+prior"], default="emb+prior")
    ap.add_argument("--readout", choices=["none", "mean", "ridge"], default="ridge", help="prior readout")
    ap.add_argument("--rank", type=int, default=4, help="rank of the population-prior features")
    ap.add_argument("--split", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=5000)
    ap.add_argument("--budget", type=float, default=600.0, help="training wall-time budget (s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", type=json.loads, default={}, help='GPOConfig overrides, e.g. {"n_layers": 3}')
    ap.add_argument("--train", type=json.loads, default={}, help='TrainConfig overrides, e.g. {"lr": 2e-3}')
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)

    ds = load_opinionqa()
    use_emb = args.features in ("emb", "emb+prior")
    if use_emb:
        from service.config import get_settings
        from service.embedder.embed import build_embedder
        from service.training.items import embed_dataset

        table = embed_dataset(ds, build_embedder(get_settings()), progress=False)
    else:
        n_items = sum(q.n_options for q in ds.questions)
        table = build_item_table(ds.questions, np.zeros((n_items, 0), np.float32))
    qids = scorable_question_ids(ds)
    split = make_split(ds.groups, qids, args.split, args.seed, 20)
    fit, val = validation_groups(split.train_groups, args.seed)
    spec = FeatureSpec(
        emb_dim=table.emb.shape[1], use_embedding=use_emb, use_prior=args.features != "emb", prior_rank=args.rank
    )
    cfg = TrainConfig(
        max_steps=args.max_steps,
        batch_size=8,
        n_targets=30,
        time_budget_s=args.budget,
        prior_readout=args.readout,
        seed=args.seed,
        progress=False,
    )
    cfg = TrainConfig(**{**cfg.__dict__, **args.train})
    result = train_gpo(table, ds, fit, val, table.qindex(qids), spec, cfg, args.model)
    print(
        f"steps {result.steps_run}, best step {result.best_step}, best val {result.best_val:.4f}, "
        f"wall {result.wall_s:.0f} s"
    )
    print(
        "history (step, val, val_known, val_new):",
        [
            (h["step"], *(round(h.get(k, float("nan")), 4) for k in ("val_alignment", "val_known", "val_new")))
            for h in result.history
        ],
    )
    baselines = ["uniform", "train_mean", "nearest_group", "mixture", "latent_factor"]
    for r in evaluate_split(ds, table, split, result, baselines):
        print(f"{r['subset']:12s} {r['method']:14s} {r['alignment']:.4f}  (n={r['n_scored']})")


if __name__ == "__main__":
    main()
