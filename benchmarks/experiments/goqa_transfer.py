"""Does GlobalOpinionQA teach the text prior which directions of text split groups (issue 16)? Training side only.

    .venv/bin/python benchmarks/experiments/goqa_transfer.py [--embedder smollm|minilm_plain] [--seeds 0,1,2]

The text prior reads a new option's loadings on the training groups' principal directions from its embedding, with
~410 training questions to learn from (training-side r about 0.29). GlobalOpinionQA has 1,726 more questions, answered
by countries, not by our groups. If the directions of text that tell countries apart (religion, tradition, economics)
are partly those that tell US groups apart, they can guide the map: a ridge map from GlobalOpinionQA's option vectors
to its countries' loadings (prior rank 8, ragged answers imputed as `fit_prior` does) gives a [D, 8] matrix; its top
`d` left singular vectors span a subspace U, and the OpinionQA map is fitted on [x, c * x U] (a ridge that penalises
that subspace less, by c). c = 0 is the served map. Scored as embedders.py's training-side criterion: out-of-fold
(5 question folds) estimates of the known training questions' loadings (the new-questions split's training groups
and questions), relative squared error and r; the ridge strength is the best of the grid for each arm alike. No
OpinionQA held-out question or test group is read, and GlobalOpinionQA is not a source of either.
"""

import argparse
import logging
from pathlib import Path

import numpy as np
from embedders import tables

from service.cli.runtime import embed_group_dataset, load_group_dataset
from service.gpo.features import centred_features
from service.gpo.prior import fit_prior
from service.training.evaluate import EvalConfig
from service.training.features import answers_matrix, fit_group_priors
from service.training.held_out import new_question_split
from service.training.splits import answered_sets, make_split, scorable_question_ids
from service.training.text_prior import TEXT_ALPHAS, prior_targets, question_folds

GOQA = Path("service/data/globalopinionqa/globalopinionqa.jsonl.gz")


def ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    return np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ y)


def goqa_directions(table, ds, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """[D, 8] the ridge map from GlobalOpinionQA's standardised, question-centred option vectors (OpinionQA's
    scaling) to its countries' loadings; its strength by 5 question folds."""
    prior = fit_prior(answers_matrix(table, ds, list(ds.groups)), 8)
    x = centred_features(table.emb, table.item_q, mu, sd)
    y = prior.loadings.astype(np.float64)
    folds = question_folds(len(table.questions), 5, 0)[table.item_q]
    errs = []
    for a in TEXT_ALPHAS:
        e = 0.0
        for f in range(5):
            w = ridge(x[folds != f], y[folds != f], a)
            e += float(((x[folds == f] @ w - y[folds == f]) ** 2).sum())
        errs.append(e)
    best = TEXT_ALPHAS[int(np.argmin(errs))]
    est = np.zeros_like(y)
    for f in range(5):
        est[folds == f] = x[folds == f] @ ridge(x[folds != f], y[folds != f], best)
    print(
        f"  GlobalOpinionQA's own text map: alpha {best:g}, "
        f"out-of-fold r {np.corrcoef(est.ravel(), y.ravel())[0, 1]:.3f}"
    )
    return ridge(x, y, best)


def goqa_country_directions(table, ds, mu: np.ndarray, sd: np.ndarray, n: int = 25) -> np.ndarray:
    """[D, n] ridge maps (alpha by 5 question folds, one for all) from GlobalOpinionQA's option vectors to each of
    the `n` countries that answered most questions' deviation from the question's mean over the countries that
    answered it, each fitted on the questions that country answered: no imputation."""
    y = answers_matrix(table, ds, list(ds.groups))
    dev = y - np.nanmean(y, axis=1, keepdims=True)
    top = np.argsort(-np.isfinite(y).sum(axis=0), kind="stable")[:n]
    x = centred_features(table.emb, table.item_q, mu, sd)
    folds = question_folds(len(table.questions), 5, 0)[table.item_q]
    best, best_err = None, np.inf
    for a in TEXT_ALPHAS:
        err = tot = 0.0
        for g in top:
            obs = np.isfinite(dev[:, g])
            for f in range(5):
                fit, est = obs & (folds != f), obs & (folds == f)
                w = ridge(x[fit], dev[fit, g][:, None], a)
                err += float((((x[est] @ w)[:, 0] - dev[est, g]) ** 2).sum())
                tot += float((dev[est, g] ** 2).sum())
        if err < best_err:
            best, best_err, best_tot = a, err, tot
    print(
        f"  GlobalOpinionQA's countries' text maps: alpha {best:g}, "
        f"out-of-fold relative error {best_err / best_tot:.3f}"
    )
    return np.column_stack(
        [ridge(x[np.isfinite(dev[:, g])], dev[np.isfinite(dev[:, g]), g][:, None], best)[:, 0] for g in top]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", default="smollm")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dims", default="2,4,8")
    parser.add_argument("--boosts", default="1,3,10")
    parser.add_argument("--goqa-target", default="loadings", choices=["loadings", "countries"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ds, _, _ = load_group_dataset(None)
    gds, _, _ = load_group_dataset(GOQA)
    table = tables(embed_group_dataset(ds)[0], [args.embedder])[args.embedder]
    gtable = tables(embed_group_dataset(gds)[0], [args.embedder])[args.embedder]
    arms = [(0, 0.0)] + [(d, c) for d in map(int, args.dims.split(",")) for c in map(float, args.boosts.split(","))]
    results = {arm: [] for arm in arms}
    for seed in map(int, args.seeds.split(",")):
        base = make_split(ds.groups, scorable_question_ids(ds), 0.6, seed, 20, answered_sets(ds))
        known, split = new_question_split(ds, base, EvalConfig().new_question_share, seed, 20)
        known_q = np.zeros(len(table.questions), dtype=bool)
        known_q[table.qindex(known)] = True
        priors = fit_group_priors(table, ds, list(split.train_groups), known_q, 8)
        rows = np.flatnonzero(priors.known)
        mu, sd = table.emb[rows].mean(axis=0), np.maximum(table.emb[rows].std(axis=0), 1e-6)
        x = centred_features(table.emb[rows], table.item_q[rows], mu, sd)
        y = prior_targets(table, priors.full, rows)[:, 1:]
        maps = goqa_directions if args.goqa_target == "loadings" else goqa_country_directions
        u, _, _ = np.linalg.svd(maps(gtable, gds, mu, sd), full_matrices=False)
        folds = question_folds(len(table.questions), 5, seed)[table.item_q[rows]]
        for d, c in arms:
            z = x if d == 0 else np.concatenate([x, c * (x @ u[:, :d])], axis=1)
            best = None
            for a in TEXT_ALPHAS:
                est = np.zeros_like(y)
                for f in range(5):
                    est[folds == f] = z[folds == f] @ ridge(z[folds != f], y[folds != f], a)
                rel = float(((est - y) ** 2).sum() / (y**2).sum())
                if best is None or rel < best[0]:
                    best = (rel, float(np.corrcoef(est.ravel(), y.ravel())[0, 1]), a)
            results[(d, c)].append(best)
            print(
                f"seed {seed} d {d} c {c:g}: relative error {best[0]:.4f} r {best[1]:.4f} (alpha {best[2]:g})",
                flush=True,
            )
    for (d, c), rs in results.items():
        print(
            f"mean d {d} c {c:g}: relative error {np.mean([r[0] for r in rs]):.4f} r {np.mean([r[1] for r in rs]):.4f}"
        )


if __name__ == "__main__":
    main()
