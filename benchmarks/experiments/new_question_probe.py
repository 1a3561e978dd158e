"""The new-questions and new-context protocols without GPO: uniform, train_mean and the text baseline
`linear_probe` (service.training.probe), with group contrast, per seed (60% split, 20 context questions, the splits
and held-out questions of `gpo eval`). Minutes, not hours: nothing is trained.

    .venv/bin/python benchmarks/experiments/new_question_probe.py [--data FILE] [--seeds 0,1,2]
"""

import argparse
import logging
from pathlib import Path

import numpy as np

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.training.evaluate import EvalConfig, evaluate_split
from service.training.held_out import new_context_splits, new_question_split
from service.training.splits import answered_sets, make_split, scorable_question_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="dataset JSONL (default: shipped OpinionQA)")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ds, _, _ = load_group_dataset(args.data)
    table, _ = embed_group_dataset(ds)
    cfg = EvalConfig()
    qids = scorable_question_ids(ds)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        base = make_split(ds.groups, qids, 0.6, seed, cfg.n_context, answered_sets(ds))
        known, split = new_question_split(ds, base, cfg.new_question_share, seed, cfg.n_context)
        runs = [("new_questions", split, known, ["uniform"])]
        ctx_known, known_split, new_split = new_context_splits(ds, base, cfg.new_question_share, seed, cfg.n_context)
        runs += [
            ("new_context/known_targets", known_split, ctx_known, ["uniform", "train_mean"]),
            ("new_context/new_targets", new_split, ctx_known, ["uniform"]),
        ]
        for name, sp, kn, baselines in runs:
            for r in evaluate_split(ds, table, sp, None, baselines, subsets=("all",), probe_known=kn):
                rows.append((name, r))
                print(
                    f"seed {seed} {name:>25} {r['method']:>13}: alignment {r['alignment']:.4f}  contrast r "
                    f"{r.get('contrast_r', float('nan')):+.3f}  spread {r.get('pred_spread', float('nan')):.3f} / "
                    f"{r.get('true_spread', float('nan')):.3f}",
                    flush=True,
                )
    for name in dict.fromkeys(n for n, _ in rows):
        for m in dict.fromkeys(r["method"] for n, r in rows if n == name):
            a = [r["alignment"] for n, r in rows if n == name and r["method"] == m]
            c = [r["contrast_r"] for n, r in rows if n == name and r["method"] == m and "contrast_r" in r]
            print(
                f"mean {name:>25} {m:>13}: alignment {np.mean(a):.4f} ± {np.std(a):.4f}  contrast r {np.mean(c):+.3f}"
            )


if __name__ == "__main__":
    main()
