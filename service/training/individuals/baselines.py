"""Baselines for individuals: k nearest people, the non-personalised reward model, the latent-factor estimate."""

from __future__ import annotations

import numpy as np

from service.gpo.features import RewardModel
from service.gpo.prior import PopulationPrior
from service.training.individuals.episodes import comparison_pairs


def knn_predict(
    y: np.ndarray,
    neighbours: np.ndarray,
    y_person: np.ndarray,
    ctx: np.ndarray,
    tgt: np.ndarray,
    k: int,
    fallback: np.ndarray,
) -> np.ndarray:
    """Ratings of the k training people who agree most with the person on the context items (1 - mean absolute
    difference on the co-rated context items, at least one co-rated), averaged with those weights over the
    neighbours who rated each target; items no neighbour rated fall back to `fallback` (the item mean)."""
    yn = y[neighbours]  # [N, I]
    co = ~np.isnan(yn[:, ctx])  # [N, C]
    n_co = co.sum(axis=1)
    diff = np.where(co, np.abs(yn[:, ctx] - y_person[ctx][None, :]), 0.0).sum(axis=1)
    agree = np.where(n_co > 0, 1.0 - diff / np.maximum(n_co, 1), -np.inf)
    # more co-rated items breaks ties, so agreement on one item does not outrank agreement on many
    order = np.lexsort((-n_co, -agree))
    top = [i for i in order[:k] if np.isfinite(agree[i])]
    out = fallback[tgt].astype(np.float64).copy()
    if not top:
        return out
    w = np.maximum(agree[top], 1e-3)
    vals = yn[top][:, tgt]  # [k, T]
    has = ~np.isnan(vals)
    num = np.where(has, vals, 0.0).T @ w
    den = has.T.astype(np.float64) @ w
    return np.where(den > 0, num / np.maximum(den, 1e-12), out)


def fit_reward_regressor(emb: np.ndarray, y: np.ndarray, rows: np.ndarray, lam: float) -> RewardModel:
    """Ridge regression of every training rating (people `rows`, normalised scores) on the item's standardised
    embedding (standardised over all items, which uses no rating); the penalty is lam per rating."""
    sub = y[rows]
    pi, ii = np.nonzero(~np.isnan(sub))
    mu, sd = emb.mean(axis=0), emb.std(axis=0) + 1e-6
    z = (emb - mu) / sd
    xt = z[ii]
    t = sub[pi, ii]
    b0 = float(t.mean())
    w = np.linalg.solve(xt.T @ xt + lam * len(t) * np.eye(z.shape[1]), xt.T @ (t - b0))
    return RewardModel(mu, sd, w, b0)


def fit_reward_out_of_item(emb: np.ndarray, y: np.ndarray, rows: np.ndarray, lam: float, n_folds: int) -> np.ndarray:
    """Every item's reward-model score [I] from a model that never saw that item's ratings: the items are cut into
    `n_folds` folds (a fixed order, no rating used) and each fold is scored by the ridge of fit_reward_regressor
    fitted on the other folds' ratings (people `rows`). The in-sample score of a rated item has already moved
    towards the item's own mean, so it would look better than it is to anything that weighs it against that mean.
    Ratings enter only through per-item counts and sums (the Gram matrix is Z' diag(n) Z), so a fold costs one
    [D, D] solve."""
    assert n_folds >= 2, "at least two folds of items"
    sub = y[rows]
    rated = ~np.isnan(sub)
    counts = rated.sum(axis=0).astype(np.float64)  # [I]
    sums = np.where(rated, sub, 0.0).sum(axis=0)  # [I]
    mu, sd = emb.mean(axis=0), emb.std(axis=0) + 1e-6
    z = ((emb - mu) / sd).astype(np.float64)  # [I, D]
    fold = np.arange(emb.shape[0]) % n_folds
    out = np.zeros(emb.shape[0])
    for f in range(n_folds):
        n = np.where(fold == f, 0.0, counts)
        s = np.where(fold == f, 0.0, sums)
        b0 = float(s.sum() / max(n.sum(), 1.0))
        gram = (z * n[:, None]).T @ z  # [D, D]
        w = np.linalg.solve(gram + lam * n.sum() * np.eye(z.shape[1]), z.T @ (s - n * b0))
        out[fold == f] = b0 + z[fold == f] @ w
    return out


def fit_pair_beta(mean: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    """beta of P(a > b) = sigmoid(beta * (mean_a - mean_b)) fitted by maximum likelihood (Newton, no intercept) on
    every pair the people `rows` rated differently: how many logits one unit of the mean score is worth."""
    diffs, labels = [], []
    for r in rows:
        a, b, lab = comparison_pairs(y[r], np.flatnonzero(~np.isnan(y[r])))
        diffs.append(mean[a] - mean[b])
        labels.append(lab)
    d, lab = np.concatenate(diffs).astype(np.float64), np.concatenate(labels).astype(np.float64)
    beta = 1.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-beta * d))
        step = np.sum((lab - p) * d) / (np.sum(p * (1.0 - p) * d**2) + 1e-12)
        beta += step
        if abs(step) < 1e-8:
            break
    return float(max(beta, 1e-3))


def fit_reward_model(emb: np.ndarray, y: np.ndarray, rows: np.ndarray, lam: float) -> np.ndarray:
    """The reward model's score for every item [I] (see fit_reward_regressor)."""
    return fit_reward_regressor(emb, y, rows, lam).score(emb)


def latent_factor_predict(
    prior: PopulationPrior, y_person: np.ndarray, ctx: np.ndarray, tgt: np.ndarray, lam: float
) -> np.ndarray:
    """mean + loadings @ z, z the ridge fit of the person's context residuals on the loadings."""
    load = prior.loadings.astype(np.float64)
    r = y_person[ctx] - prior.mean[ctx]
    a = load[ctx]
    z = np.linalg.solve(a.T @ a + lam * np.eye(load.shape[1]), a.T @ r)
    return prior.mean[tgt] + load[tgt] @ z
