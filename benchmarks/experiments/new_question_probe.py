"""The new-questions protocol without GPO: uniform and the text baseline `linear_probe` (service.training.probe)
on the questions held out of meta-training, with group contrast, per seed (60% split, 20 context questions, the
splits and held-out questions of `gpo eval`). Minutes, not hours: nothing is trained.

    .venv/bin/python benchmarks/experiments/new_question_probe.py [--data FILE] [--seeds 0,1,2]
"""

import argparse
import logging
from pathlib import Path

import numpy as np

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.training.evaluate import EvalConfig, evaluate_split, new_question_split
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
        for r in evaluate_split(ds, table, split, None, ["uniform"], subsets=("all",), probe_known=known):
            rows.append((seed, r))
            print(
                f"seed {seed} {r['method']:>13}: alignment {r['alignment']:.4f}  contrast r "
                f"{r.get('contrast_r', float('nan')):+.3f}  spread {r.get('pred_spread', float('nan')):.3f} / "
                f"{r.get('true_spread', float('nan')):.3f}",
                flush=True,
            )
    for m in dict.fromkeys(r["method"] for _, r in rows):
        a = [r["alignment"] for _, r in rows if r["method"] == m]
        c = [r["contrast_r"] for _, r in rows if r["method"] == m and "contrast_r" in r]
        print(f"mean {m:>13}: alignment {np.mean(a):.4f} ± {np.std(a):.4f}  contrast r {np.mean(c):+.3f}")


if __name__ == "__main__":
    main()
