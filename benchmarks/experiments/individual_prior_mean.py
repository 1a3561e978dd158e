"""Which prior mean and ridge strength the content-factor readout should start from, on NYT books (held-out people).

    .venv/bin/python benchmarks/experiments/individual_prior_mean.py [--seeds 10]

The readout is mean + content loadings @ z, z the ridge fit of the person's context residuals. Compared: the
item's mean rating over the training people ("item") against a non-personalised reward model's estimate (ridge
on the item's embedding; "rm"), each with ridge strengths 1, 10, 100 and 1e6 (no personalisation), at 1, 2, 5
and 10 context items; pairwise accuracy averaged over held-out people, then over seeds.
"""

from __future__ import annotations

import argparse

import numpy as np

from service.config import get_settings
from service.embedder.embed import build_embedder
from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION, format_response_item
from service.gpo.prior import PopulationPrior
from service.training.individuals.baselines import fit_reward_model, latent_factor_predict
from service.training.individuals.priors import fit_content_basis, fit_rating_prior
from service.training.individuals.splits import context_draw, split_people
from service.training.metrics import pairwise_accuracy
from service.training.nytbooks import load_nytbooks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    ds = load_nytbooks()
    embedder = build_embedder(get_settings(), template_version=RESPONSE_TEMPLATE_VERSION)
    emb = embedder.embed([format_response_item(ds.prompt, it.text) for it in ds.items])
    y = ds.matrix()
    index = {p: i for i, p in enumerate(ds.people)}
    content = fit_content_basis(emb, 8).loadings(emb)
    ks, lams = (1, 2, 5, 10), (1.0, 10.0, 100.0, 1e6)
    res: dict[tuple, list[float]] = {}
    for seed in range(args.seeds):
        split = split_people(ds.people, 0.6, seed)
        rows = np.array([index[p] for p in split.fit + split.val])
        prior, _ = fit_rating_prior(y[rows], 8, loadings=content)
        means = {"item": prior.mean, "rm": fit_reward_model(emb, y, rows, 0.1).astype(np.float32)}
        for k in ks:
            for name, mean in means.items():
                pr = PopulationPrior(mean, prior.loadings)
                for lam in lams:
                    accs = []
                    for p in split.test:
                        c, t = context_draw(ds, p, k, seed)
                        a = pairwise_accuracy(latent_factor_predict(pr, y[index[p]], c, t, lam), y[index[p]][t])
                        if a is not None:
                            accs.append(a)
                    res.setdefault((name, lam, k), []).append(float(np.mean(accs)))
            rm = means["rm"]
            accs = [
                pairwise_accuracy(rm[t], y[index[p]][t]) for p in split.test for t in [context_draw(ds, p, k, seed)[1]]
            ]
            res.setdefault(("reward model alone", 0.0, k), []).append(
                float(np.mean([a for a in accs if a is not None]))
            )
    print("mean / ridge | " + " | ".join(f"k={k}" for k in ks))
    for name in ("item", "rm"):
        for lam in lams:
            print(f"{name} / {lam:g} | " + " | ".join(f"{np.mean(res[(name, lam, k)]):.4f}" for k in ks))
    print("reward model alone | " + " | ".join(f"{np.mean(res[('reward model alone', 0.0, k)]):.4f}" for k in ks))


if __name__ == "__main__":
    main()
