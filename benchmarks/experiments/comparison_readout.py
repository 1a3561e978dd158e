"""Can a closed-form readout personalise comparisons the way the rating readout personalises ratings? NYT books,
held-out people, a person's context given as pairs only (which of two books they rated higher).

    .venv/bin/python benchmarks/experiments/comparison_readout.py [--seeds 5]

The shipped comparison model (score head) barely moves with its context (README, "comparison groups"). The rating
model's edge over the reward model is its ridge readout: mean + content loadings @ z. This measures the same for
pairs, without any transformer:

- "reward model": every item scored by the non-personalised reward model (ridge of the training people's ratings
  on the item's embedding), as the baseline of the individuals evaluation;
- "pair readout (lam)": score(i) = beta * rm(i) + l(i) @ u, u the ridge-regularised logistic fit of the context
  pairs' labels on the differences of the items' content loadings l (8 directions of the embeddings), with the
  reward model's difference as a fixed offset (beta: a 1-d logistic fit of the training people's pairs on rm
  differences). "1 step" is one Newton step from u = 0, which is a closed form (what a model layer would
  compute); "fit" iterates Newton to convergence;
- "rating readout (reference)": what the rating readout gets from the same context items' *ratings*
  (latent_factor_predict, ridge 10): how much of the ratings' information the pairs keep.

Pairwise accuracy over the target items' pairs, mean over held-out people, then over seeds; the same draws for
every method.

Measured 2026-11-25, 10 seeds (60/40 split of people as `gpo eval-individuals`; 18 s after the embeddings):

| method | k=2 | k=5 | k=10 | k=20 |
|---|---|---|---|---|
| reward model | 0.5976 | 0.5949 | 0.5985 | 0.5929 |
| pair readout, 1 step, lam 3 | 0.5995 | 0.6017 | **0.6150** | 0.6168 |
| pair readout, 1 step, lam 10 | 0.5984 | 0.5998 | 0.6128 | **0.6271** |
| pair readout, fit, lam 3 | 0.5995 | 0.6017 | 0.6150 | 0.6163 |
| rating readout from the same items' ratings (reference) | 0.6010 | 0.6009 | 0.6117 | 0.6181 |

- Pair readout (1 step, lam 3) minus the reward model: +0.0018 (9/10 seeds above), +0.0068 (9/10), +0.0166
  (10/10), +0.0239 (10/10) at k = 2, 5, 10, 20. With lam 10: +0.0007, +0.0049, +0.0143, +0.0342 (9-10/10).
- One Newton step from u = 0 is as good as the converged fit (within 0.0005 everywhere): the closed form suffices.
- The pairs among k items keep about all of what their ratings give the rating readout (and more at k >= 10).
- For scale: the shipped comparison models measured 0.5874 (score head) and 0.5830 (pair head) at k=10 in
  RESULTS.md, below the reward model. A comparison readout would be worth ~+0.03 there.
"""

from __future__ import annotations

import argparse

import numpy as np

from service.config import get_settings
from service.embedder.embed import build_embedder
from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION, format_response_item
from service.gpo.prior import PopulationPrior
from service.training.individuals.baselines import fit_reward_model, latent_factor_predict
from service.training.individuals.episodes import comparison_pairs
from service.training.individuals.priors import fit_content_basis
from service.training.individuals.splits import context_draw, split_people
from service.training.metrics import pairwise_accuracy
from service.training.nytbooks import load_nytbooks


def sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-t))


def fit_beta(rm: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    """1-d logistic regression (no intercept) of the training people's pair labels on beta * (rm_a - rm_b)."""
    d, lab = [], []
    for r in rows:
        rated = np.flatnonzero(~np.isnan(y[r]))
        a, b, label = comparison_pairs(y[r], rated)
        d.append(rm[a] - rm[b])
        lab.append(label)
    dd, ll = np.concatenate(d), np.concatenate(lab)
    beta = 1.0
    for _ in range(50):
        p = sigmoid(beta * dd)
        grad, hess = np.sum((ll - p) * dd), np.sum(p * (1 - p) * dd**2) + 1e-9
        beta += grad / hess
    return float(beta)


def pair_readout(
    rm: np.ndarray, load: np.ndarray, beta: float, a: np.ndarray, b: np.ndarray, lab: np.ndarray, lam: float, steps: int
) -> np.ndarray:
    """u of the ridge logistic fit of P(a > b) = sigmoid(beta (rm_a - rm_b) + (l_a - l_b) @ u), `steps` Newton steps."""
    d = load[a] - load[b]  # [P, k]
    off = beta * (rm[a] - rm[b])
    u = np.zeros(load.shape[1])
    for _ in range(steps):
        p = sigmoid(off + d @ u)
        w = p * (1 - p)
        hess = (d * w[:, None]).T @ d + lam * np.eye(len(u))
        grad = d.T @ (lab - p) - lam * u
        u = u + np.linalg.solve(hess, grad)
    return u


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    ds = load_nytbooks()
    embedder = build_embedder(get_settings(), template_version=RESPONSE_TEMPLATE_VERSION)
    emb = embedder.embed([format_response_item(ds.prompt, it.text) for it in ds.items])
    y = ds.matrix()
    index = {p: i for i, p in enumerate(ds.people)}
    load = fit_content_basis(emb, 8).loadings(emb).astype(np.float64)
    ks, lams = (2, 5, 10, 20), (1.0, 3.0, 10.0, 30.0)
    res: dict[tuple, list[float]] = {}
    for seed in range(args.seeds):
        split = split_people(ds.people, 0.6, seed)
        rows = np.array([index[p] for p in split.fit + split.val])
        rm = fit_reward_model(emb, y, rows, 1.0).astype(np.float64)
        beta = fit_beta(rm, y, rows)
        print(f"seed {seed}: beta {beta:.2f}", flush=True)
        prior = PopulationPrior(rm.astype(np.float32), load.astype(np.float32))
        for k in ks:
            accs: dict[tuple, list[float]] = {}
            for p in split.test:
                yp = y[index[p]]
                c, t = context_draw(ds, p, k, seed)
                a, b, lab = comparison_pairs(yp, c)

                def score(name: tuple, s: np.ndarray, t: np.ndarray = t, yp: np.ndarray = yp, out: dict = accs) -> None:
                    acc = pairwise_accuracy(s[t], yp[t])
                    if acc is not None:
                        out.setdefault(name, []).append(acc)

                score(("reward model",), rm)
                everything = np.arange(len(rm))
                score(("rating readout (reference)",), latent_factor_predict(prior, yp, c, everything, 10.0))
                for lam in lams:
                    for steps, label in ((1, "1 step"), (25, "fit")):
                        u = pair_readout(rm, load, beta, a, b, lab, lam, steps) if len(a) else np.zeros(load.shape[1])
                        score(("pair readout", label, lam), beta * rm + load @ u)
            for name, v in accs.items():
                res.setdefault((*name, k), []).append(float(np.mean(v)))
    names = sorted({key[:-1] for key in res}, key=str)
    print("method | " + " | ".join(f"k={k}" for k in ks))
    for name in names:
        print(" / ".join(str(n) for n in name) + " | " + " | ".join(f"{np.mean(res[(*name, k)]):.4f}" for k in ks))
    base = np.array([[res[("reward model", k)][s] for k in ks] for s in range(args.seeds)])
    for name in names:
        if name[0] == "pair readout":
            diff = np.array([[res[(*name, k)][s] for k in ks] for s in range(args.seeds)]) - base
            print(
                " / ".join(str(n) for n in name)
                + " minus reward model | "
                + " | ".join(
                    f"{m:+.4f} ({(d > 0).sum()}/{len(d)} seeds)" for m, d in zip(diff.mean(0), diff.T, strict=True)
                )
            )


if __name__ == "__main__":
    main()
