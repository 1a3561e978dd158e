"""Can soft borrowing pick better neighbours than the nearest by topic (issue 16)? A training-side criterion: no
held-out answer reaches it.

    .venv/bin/python benchmarks/experiments/neighbour_metric.py [--variant learned|agree] [--seeds 0,1,2]

Setting as in neighbour_vectors.py (the new-questions protocol's training side at the 60% split; the matcher and its
soft-borrowing rule fitted as served, all-MiniLM-L6-v2 vectors): every known training question gets its blended
prior from its nearest *other* training questions, scored against its own prior (loadings' relative squared error and
r). Here the neighbours are ranked, and weighted, by cosine + gamma * relevance, where relevance is
  learned: a bilinear map v_q' M v_p fitted by ridge (strength lam) to how alike two questions divide the training
           groups: |cos| of their ordinal signatures (centred option position times the option loadings, a k-vector),
           centred; M comes from the other four question folds than the row question's, so no question's own
           answers choose its neighbours;
  agree:   |cos| of the row question's out-of-fold text-prior signature and each bank question's own signature
           (neighbours that divide groups as the text estimate says), centred.
gamma 0 is the served rule (its figures must equal neighbour_vectors.py's minilm row). The share beside the text
estimate still follows the nearest cosine, as served.
"""

import argparse

import numpy as np
from neighbour_vectors import (  # the sibling script (run from the checkout's root, as documented)
    as_new_questions,
    fit_training_side,
)

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.embedder.sentence import SentenceEncoder
from service.training.matching import with_question_vectors
from service.training.text_prior import prior_targets

GRIDS = {"learned": [0.0, 0.25, 0.5, 1.0, 2.0, 4.0], "agree": [0.0, 0.05, 0.1, 0.2, 0.4]}
LAMS = {"learned": [1.0, 10.0, 100.0], "agree": [0.0]}


def signature(loadings: np.ndarray) -> np.ndarray:
    """A question's unit ordinal signature: centred option position times its options' loadings [n, k] -> [k]."""
    pos = np.arange(len(loadings)) - (len(loadings) - 1) / 2
    s = pos @ np.nan_to_num(loadings)
    return s / max(float(np.linalg.norm(s)), 1e-9)


def fold_metric(v: np.ndarray, s: np.ndarray, fold: np.ndarray, lam: float) -> np.ndarray:
    """[n, n] learned relevance of every bank question (columns) to each question (rows), M fitted without the row
    question's fold: ridge of the centred |signature cosine| on the bilinear form of the question vectors."""
    out = np.zeros((len(v), len(v)))
    for f in np.unique(fold):
        a = np.flatnonzero(fold != f)
        target = s[np.ix_(a, a)] - s[np.ix_(a, a)].mean()
        g = np.linalg.inv(v[a].T @ v[a] + lam * np.eye(v.shape[1]))
        m = g @ v[a].T @ target @ v[a] @ g
        b = np.flatnonzero(fold == f)
        out[b] = v[b] @ m @ v.T
    return out


def run(table, ds, seed: int, variant: str) -> dict:
    side = fit_training_side(table, ds, seed)
    priors, texts, bank, qs = side
    rule = bank.blend
    own = [prior_targets(table, priors.full, table.rows([q]))[:, 1:] for q in qs]
    sig = np.array([signature(L) for L in own])
    results = {}
    for lam in LAMS[variant]:
        if variant == "learned":
            fold = np.random.default_rng(seed).integers(0, 5, len(qs))
            rel = fold_metric(table.qvec[qs].astype(np.float64), np.abs(sig @ sig.T), fold, lam)
        else:
            tsig = np.array([signature(texts.oof_full[table.rows([q])][:, 1:]) for q in qs])
            rel = np.abs(tsig @ sig.T)
            rel -= rel.mean()
        for gamma in GRIDS[variant]:
            est, tru = [], []
            for j, _, rows, text, others, cos in as_new_questions(table, side):
                score = cos + gamma * rel[j, others]
                order = np.argsort(-score, kind="stable")[: rule.k]
                lent = [prior_targets(table, priors.full, bank.rows(int(others[o]), table.ovec[rows])) for o in order]
                near = np.tensordot(rule.weights(score[order]), np.stack(lent).astype(np.float64), axes=1)
                est.append(rule.mix(text, near, float(cos.max()))[:, 1:])
                tru.append(own[j])
            e, o = np.concatenate(est).ravel(), np.concatenate(tru).ravel()
            results[(lam, gamma)] = (float(((e - o) ** 2).sum() / (o**2).sum()), float(np.corrcoef(e, o)[0, 1]))
            rel_err, r = results[(lam, gamma)]
            print(f"seed {seed} lam {lam:g} gamma {gamma:g}: relative error {rel_err:.4f} r {r:.4f}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="learned", choices=sorted(GRIDS))
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    ds, _, _ = load_group_dataset(None)
    base, _ = embed_group_dataset(ds)
    table = with_question_vectors(base, SentenceEncoder())
    rows = [run(table, ds, int(s), args.variant) for s in args.seeds.split(",")]
    for key in rows[0]:
        rel_err, r = (float(np.mean([x[key][i] for x in rows])) for i in (0, 1))
        print(f"{args.variant} mean lam {key[0]:g} gamma {key[1]:g}: relative error {rel_err:.4f} r {r:.4f}")


if __name__ == "__main__":
    main()
