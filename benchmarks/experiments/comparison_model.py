"""The comparison model with the pair readout (GPOConfig pair_beta_init; `gpo train-individuals --kind comparison`)
against the reward model on held-out NYT people, as `gpo eval-individuals` scores it.

    .venv/bin/python benchmarks/experiments/comparison_model.py [--seeds 0,1,2] [--time-budget-s 200]

Per seed: the 60/40 split of people, the reward model (ridge 1.0, what cross-validation chose in most seeds),
the score-head comparison model meta-trained on the training people (its readout kept unless the trained
transformer beats it on validation by more than a standard error), then pairwise accuracy over every target pair
of each test person at 2, 5, 10 and 20 context items (the same draws for both).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace

import numpy as np

from service.config import get_settings
from service.embedder.embed import build_embedder
from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION, format_response_item
from service.gpo.features import FeatureSpec
from service.training.individuals.baselines import fit_reward_model
from service.training.individuals.priors import PersonFeatures, fit_rating_prior, prior_loadings
from service.training.individuals.splits import context_draw, split_people
from service.training.individuals.train import (
    IndividualTrainConfig,
    pairwise_from,
    predict_person,
    train_individual_gpo,
)
from service.training.metrics import pairwise_accuracy
from service.training.nytbooks import load_nytbooks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--time-budget-s", type=float, default=200.0)
    ap.add_argument("--no-readout", action="store_true", help="the score head without the pair readout")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ds = load_nytbooks()
    embedder = build_embedder(get_settings(), template_version=RESPONSE_TEMPLATE_VERSION)
    emb = embedder.embed([format_response_item(ds.prompt, it.text) for it in ds.items])
    y = ds.matrix()
    index = {p: i for i, p in enumerate(ds.people)}
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=8)
    ks = (2, 5, 10, 20)
    res: dict[tuple[str, int], list[float]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        split = split_people(ds.people, 0.6, seed)
        rows = np.array([index[p] for p in split.fit + split.val])
        cfg = replace(
            IndividualTrainConfig(), seed=seed, time_budget_s=args.time_budget_s, pair_readout=not args.no_readout
        )
        reward = fit_reward_model(emb, y, rows, cfg.reward_lambda)
        content = prior_loadings(emb, spec.prior_rank, cfg.loadings)
        prior, known = fit_rating_prior(y[rows], spec.prior_rank, loadings=content, mean=reward.astype(np.float32))
        m = train_individual_gpo(ds, emb, split, spec, cfg, "comparison_bt")
        print(f"seed {seed}: best step {m.best_step} (0 = readout kept), validation {m.best_val:.4f}", flush=True)
        x_test = PersonFeatures(spec, emb).build(prior, known)
        rng = np.random.default_rng(seed)
        for k in ks:
            g, r = [], []
            for p in split.test:
                yp = y[index[p]]
                ctx, tgt = context_draw(ds, p, k, seed)
                acc = pairwise_from(
                    "comparison_bt", predict_person(m.model, "comparison_bt", x_test, yp, ctx, tgt, rng), yp, tgt
                )
                base = pairwise_accuracy(reward[tgt], yp[tgt])
                if acc is not None and base is not None:
                    g.append(acc)
                    r.append(base)
            res.setdefault(("gpo comparison", k), []).append(float(np.mean(g)))
            res.setdefault(("reward model", k), []).append(float(np.mean(r)))
    print("method | " + " | ".join(f"k={k}" for k in ks))
    for name in ("gpo comparison", "reward model"):
        print(name + " | " + " | ".join(f"{np.mean(res[(name, k)]):.4f}" for k in ks))
    diffs = [np.array(res[("gpo comparison", k)]) - np.array(res[("reward model", k)]) for k in ks]
    print("difference | " + " | ".join(f"{d.mean():+.4f} ({(d > 0).sum()}/{len(d)} seeds)" for d in diffs))


if __name__ == "__main__":
    main()
