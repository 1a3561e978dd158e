"""Issue 15: which known-item prior mean the readout prefers, by cross-validation over training people only.

    python benchmarks/experiments/known_item_prior_cv.py [--seeds 10] [--k 10]

No test person is used. Per seed, the training people (fit + validation of the 60% split) are cut into the five
folds the evaluation's own cross-validation uses; each fold's people are scored with the prior fitted on the other
folds: the content-factor readout (mean + content loadings @ z, ridge 10, GPO's readout alone) at k context items,
two context draws each. Prior means: the reward model in sample ("reward", the default), the empirical Bayes
shrinkage of the item means towards the out-of-item reward model ("shrunk", kappa from the data), the same with
kappa halved or doubled, shrunk towards the in-sample reward model with the same kappa, and the raw item mean.
Prints the mean pairwise accuracy and the paired difference from "reward" (mean, standard error over seeds).
"""

from __future__ import annotations

import argparse

import numpy as np

from service.config import get_settings
from service.embedder.embed import build_embedder
from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION, format_response_item
from service.gpo.prior import PopulationPrior
from service.training.individuals.baselines import fit_reward_model, fit_reward_out_of_item, latent_factor_predict
from service.training.individuals.priors import fit_content_basis, shrink_item_means
from service.training.individuals.splits import context_draw, split_people
from service.training.metrics import pairwise_accuracy
from service.training.nytbooks import load_nytbooks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    ds = load_nytbooks()
    embedder = build_embedder(get_settings(), template_version=RESPONSE_TEMPLATE_VERSION)
    emb = embedder.embed([format_response_item(ds.prompt, it.text) for it in ds.items])
    y = ds.matrix()
    index = {p: i for i, p in enumerate(ds.people)}
    load = fit_content_basis(emb, 8).loadings(emb).astype(np.float32)
    acc: dict[tuple[str, int], list[float]] = {}
    kappas = []
    for seed in range(args.seeds):
        split = split_people(ds.people, 0.6, seed)
        people = split.fit + split.val
        fold_of = np.random.default_rng(seed + 30_000).permutation(len(people)) % 5  # as the evaluation's CV
        for f in range(5):
            rows = np.array([index[p] for p, g in zip(people, fold_of, strict=True) if g != f])
            held = [p for p, g in zip(people, fold_of, strict=True) if g == f]
            r_in = fit_reward_model(emb, y, rows, 1.0)
            r_out = fit_reward_out_of_item(emb, y, rows, 1.0, 10)
            fit = shrink_item_means(y[rows], r_out)
            kappas.append(fit.kappa)
            n = (~np.isnan(y[rows])).sum(axis=0)
            ybar = np.where(n > 0, np.nansum(y[rows], axis=0) / np.maximum(n, 1), r_in)
            kap = fit.kappa
            means = {
                "reward": r_in,
                "shrunk": fit.mean,
                "shrunk, kappa / 2": (n * ybar + kap / 2 * r_out) / (n + kap / 2),
                "shrunk, kappa * 2": (n * ybar + kap * 2 * r_out) / (n + kap * 2),
                "shrunk to in-sample reward": (n * ybar + kap * r_in) / (n + kap),
                "items": ybar,
            }
            for name, mean in means.items():
                prior = PopulationPrior(mean.astype(np.float32), load)
                for p in held:
                    for d in range(2):
                        c, t = context_draw(ds, p, args.k, seed + 10_000 + d)
                        a = pairwise_accuracy(latent_factor_predict(prior, y[index[p]], c, t, 10.0), y[index[p]][t])
                        if a is not None:
                            acc.setdefault((name, seed), []).append(a)
    seeds = range(args.seeds)
    print(f"{args.k} context items, training people only; kappa over folds {min(kappas):.1f}-{max(kappas):.1f}")
    for name in dict.fromkeys(n for n, _ in acc):
        d = np.array([np.mean(acc[(name, s)]) - np.mean(acc[("reward", s)]) for s in seeds])
        mean = np.mean([np.mean(acc[(name, s)]) for s in seeds])
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
        print(f"{name}: {mean:.4f}; minus reward {d.mean():+.4f} (se {se:.4f})")


if __name__ == "__main__":
    main()
