"""How often does a held-out target have one of the group's own context questions near it (issue 16)?

    .venv/bin/python benchmarks/experiments/context_neighbours.py [--seeds 0,1,2]

An idea for the two unmet group-contrast targets: besides the bank's loadings, a new target could lean on the group's
own answer to a context question that asks nearly the same thing (a kernel over the group's context residuals). It
can only help targets that have such a context question. This counts them on the protocols' real draws (60% split, 20
context questions): for every scored (test group, target), the highest all-MiniLM-L6-v2 cosine (the matcher's
question vectors) to one of that group's context questions with as many options, and, for comparison, to any known
question (the bank soft borrowing already lends from). It reads question texts and the draws only, no answer.
"""

import argparse
import logging

import numpy as np

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.embedder.sentence import SentenceEncoder
from service.training.evaluate import EvalConfig
from service.training.held_out import new_context_splits, new_question_split
from service.training.matching import with_question_vectors
from service.training.splits import answered_sets, make_split, scorable_question_ids

CUTS = (0.7, 0.8, 0.9)


def nearest(table, split, pool_of) -> np.ndarray:
    """For each scored (group, target): the highest cosine to a question of `pool_of(group)` with as many options."""
    out = []
    for g in split.test_groups:
        t, c = table.qindex(split.targets_of(g)), table.qindex(pool_of(g))
        sims = table.qvec[t] @ table.qvec[c].T
        out.append(np.where(table.q_len[t][:, None] == table.q_len[c][None, :], sims, -1.0).max(axis=1))
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ds, _, _ = load_group_dataset(None)
    base, _ = embed_group_dataset(ds)
    table = with_question_vectors(base, SentenceEncoder(), rewordings=None)
    qids, share = scorable_question_ids(ds), EvalConfig().new_question_share
    for seed in (int(s) for s in args.seeds.split(",")):
        split = make_split(ds.groups, qids, 0.6, seed, 20, answered_sets(ds))
        known_nq, nq = new_question_split(ds, split, share, seed, 20)
        known_nc, _, nc = new_context_splits(ds, split, share, seed, 20)
        rows = {
            "new questions: own context": nearest(table, nq, nq.context_of),
            "new questions: any known": nearest(table, nq, lambda _g, k=known_nq: k),
            "new context, new targets: own context": nearest(table, nc, nc.context_of),
            "new context, new targets: any known": nearest(table, nc, lambda _g, k=known_nc: k),
        }
        for name, best in rows.items():
            shares = "  ".join(f">= {c}: {np.mean(best >= c):.3f}" for c in CUTS)
            print(f"seed {seed}  {name:<40} n {len(best):>5}  {shares}", flush=True)


if __name__ == "__main__":
    main()
