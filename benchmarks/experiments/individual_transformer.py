"""Does the meta-trained transformer add to its content-factor readout on held-out NYT people, and with what training?

    .venv/bin/python benchmarks/experiments/individual_transformer.py --variant default --seeds 0,1,2

Each variant meta-trains the rating GPO (prior mean: the reward model, ridge 1; readout ridge starting at 10, as
`gpo eval-individuals` chooses them by cross-validation) on the fit people of each seed's split and prints the
pairwise accuracy on the held-out people at each context size, beside the readout alone (the untrained model).
The trained model is the best validation checkpoint, without gpo's guard (min_gain_se = -inf).

Measured on 2026-11-25 (seeds 0, 1, 2; one thread per run, two runs at once), pairwise accuracy at k = 1/2/5/10/20:

    readout alone       0.5978  0.6006  0.6044  0.6187  0.6328
    default             0.5979  0.6008  0.6024  0.6169  0.6284
    regularised         0.5976  0.5997  0.6041  0.6168  0.6353
    rank (weight 1)     0.5815  0.5835  0.5913  0.6080  0.6293
    rank_only (10)      0.5801  0.5840  0.5906  0.6065  0.6217
    folds20             0.5967  0.6006  0.6025  0.6136  0.6340
    folds20_regularised 0.5984  0.5982  0.6025  0.6152  0.6316

No training beats the readout on held-out people. The ranking loss raised validation accuracy (seed 0: 0.5995
against 0.5816 for the default) while lowering held-out accuracy, so validation gains do not transfer here.
Fold priors from 95% of the fit people (20 folds, against 5: training features closer to the test prior) do not
change that.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

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
from service.training.nytbooks import load_nytbooks

VARIANTS: dict[str, tuple[dict, dict]] = {  # name: (train config changes, model config changes)
    "default": ({}, {}),
    "folds20": ({"prior_folds": 20}, {}),
    "folds20_regularised": ({"prior_folds": 20, "lr": 3e-4, "weight_decay": 0.01}, {"dropout": 0.1}),
    "rank": ({"rank_weight": 1.0}, {}),
    "rank_only": ({"rank_weight": 10.0}, {}),
    "regularised": ({"lr": 3e-4, "weight_decay": 0.01}, {"dropout": 0.1}),
    "small": ({}, {"n_layers": 2, "d_model": 64, "d_ff": 64}),
    "small_regularised": (
        {"lr": 3e-4, "weight_decay": 0.01},
        {"n_layers": 2, "d_model": 64, "d_ff": 64, "dropout": 0.1},
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="default")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_nytbooks()
    embedder = build_embedder(get_settings(), template_version=RESPONSE_TEMPLATE_VERSION)
    emb = embedder.embed([format_response_item(ds.prompt, it.text) for it in ds.items])
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=8)
    y = ds.matrix()
    index = {p: i for i, p in enumerate(ds.people)}
    ks = (1, 2, 5, 10, 20)
    train_changes, model_changes = VARIANTS[args.variant]
    # the best validation checkpoint, with no guard: this measures what training does on held-out people
    cfg = replace(
        IndividualTrainConfig(reward_lambda=1.0, progress=False, patience=8, min_gain_se=-float("inf")), **train_changes
    )
    res: dict[tuple[str, int], list[float]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        split = split_people(ds.people, 0.6, seed)
        rows = np.array([index[p] for p in split.fit + split.val])
        content = prior_loadings(emb, 8, "content")
        mean = fit_reward_model(emb, y, rows, 1.0).astype(np.float32)
        prior, known = fit_rating_prior(y[rows], 8, loadings=content, mean=mean)
        x = PersonFeatures(spec, emb).build(prior, known)
        m = train_individual_gpo(ds, emb, split, spec, cfg, "rating", {"ridge_init": 10.0, **model_changes})
        untrained = train_individual_gpo(
            ds, emb, split, spec, replace(cfg, max_steps=0), "rating", {"ridge_init": 10.0, **model_changes}
        )
        print(f"seed {seed}: best step {m.best_step} of {m.steps_run}, validation {m.best_val:.4f}", flush=True)
        rng = np.random.default_rng(seed)
        for k in ks:
            for name, model in (("trained", m.model), ("readout", untrained.model)):
                accs = []
                for p in split.test:
                    yp = y[index[p]]
                    c, t = context_draw(ds, p, k, seed)
                    a = pairwise_from("rating", predict_person(model, "rating", x, yp, c, t, rng), yp, t)
                    if a is not None:
                        accs.append(a)
                res.setdefault((name, k), []).append(float(np.mean(accs)))
    print(f"{args.variant} | " + " | ".join(f"k={k}" for k in ks))
    for name in ("trained", "readout"):
        print(f"{name} | " + " | ".join(f"{np.mean(res[(name, k)]):.4f}" for k in ks))


if __name__ == "__main__":
    main()
