"""Item priors for individuals: content basis, rating prior, a person's features, leak-free fold priors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from service.gpo.features import ContentBasis, FeatureSpec
from service.gpo.prior import PopulationPrior
from service.training.individuals.baselines import fit_reward_model, fit_reward_out_of_item
from service.training.individuals.splits import PeopleSplit

log = logging.getLogger(__name__)

PRIOR_MEANS = ("shrunk", "reward", "items")
KAPPA_MAX = 1e4  # pseudo-ratings of the text estimate at most: with ~25 ratings an item's mean then weighs 0.25%


def fit_content_basis(emb: np.ndarray, rank: int) -> ContentBasis:
    mu, sd = emb.mean(axis=0), emb.std(axis=0) + 1e-6
    _, _, vt = np.linalg.svd((emb - mu) / sd, full_matrices=False)
    return ContentBasis(mu, sd, vt[:rank].T.copy(), int(emb.shape[0]))


def fit_rating_prior(
    y: np.ndarray,
    rank: int,
    reference: np.ndarray | None = None,
    loadings: np.ndarray | None = None,
    mean: np.ndarray | None = None,
) -> tuple[PopulationPrior, np.ndarray]:
    """(prior, known [I]) from normalised ratings y [P, I] (NaN = unrated).

    mean: each item's mean over the people who rated it; loadings: the top `rank` right singular vectors of
    the mean-centred matrix (unrated = 0) times S / sqrt(P), rotated onto `reference` when given (orthogonal
    Procrustes), so leave-one-out priors share one basis. Items nobody rated are not known (flag 0, zeros).
    Given `loadings` [I, rank] (content loadings, see ContentBasis), they are used as they are. Given `mean` [I]
    (a reward model's estimate from the item's embedding, see RewardModel), it replaces the item means and
    every item is known: its mean and content loadings come from its text, as a new item's do when served.
    """
    rated = ~np.isnan(y)
    counts = rated.sum(axis=0)
    known = counts > 0
    if mean is not None:
        assert mean.shape == (y.shape[1],), "mean must be [items]"
        known = np.ones(y.shape[1], dtype=bool)
    else:
        mean = np.where(known, np.nansum(y, axis=0) / np.maximum(counts, 1), 0.0)
    resid = np.where(rated, y - mean[None, :], 0.0)
    if loadings is not None:
        assert loadings.shape == (y.shape[1], rank), f"loadings must be [items, {rank}]"
        load = np.where(known[:, None], loadings, 0.0)
        return PopulationPrior(mean.astype(np.float32), load.astype(np.float32)), known
    loadings = np.zeros((y.shape[1], rank), dtype=np.float64)
    if rank > 0 and y.shape[0] > 1:
        _, s, vt = np.linalg.svd(resid, full_matrices=False)
        k = min(rank, s.shape[0])
        loadings[:, :k] = vt[:k].T * s[:k] / np.sqrt(y.shape[0])
    if reference is not None and rank > 0:
        u, _, wt = np.linalg.svd(loadings.T @ reference)
        loadings = loadings @ (u @ wt)
    loadings[~known] = 0.0
    return PopulationPrior(mean.astype(np.float32), loadings.astype(np.float32)), known


@dataclass(frozen=True)
class Shrinkage:
    """Item means shrunk towards a text estimate: mean_i = (n_i * ybar_i + kappa * r_i) / (n_i + kappa)."""

    mean: np.ndarray  # [I]
    kappa: float  # the text estimate's worth in ratings
    sigma2: float  # pooled within-item variance of one rating
    tau2: float  # variance of the true item means around the text estimate


def shrink_item_means(y: np.ndarray, text: np.ndarray) -> Shrinkage:
    """Empirical Bayes shrinkage of each item's mean rating over the people of y [P, I] (NaN = unrated) towards
    `text` [I] (the item's estimate from its text; it must not have seen the item's own ratings).

    Model: ybar_i = theta_i + e_i with e_i of variance sigma2 / n_i (people are exchangeable), and theta_i =
    text_i + u_i with u_i of variance tau2; the posterior mean of theta_i is the formula above with kappa =
    sigma2 / tau2. sigma2 is the pooled within-item variance, sum of (y_pi - ybar_i)^2 over sum of (n_i - 1)
    (items with n_i >= 2); tau2 is the method-of-moments estimate mean_i[(ybar_i - text_i)^2 - sigma2 / n_i]
    over the rated items, floored at sigma2 / KAPPA_MAX (so kappa is in [0, KAPPA_MAX]). Without two ratings of
    any item there is no sigma2: kappa = KAPPA_MAX. Items nobody rated get text_i."""
    assert text.shape == (y.shape[1],), "text must be [items]"
    rated = ~np.isnan(y)
    n = rated.sum(axis=0).astype(np.float64)  # [I]
    ybar = np.where(n > 0, np.where(rated, y, 0.0).sum(axis=0) / np.maximum(n, 1.0), 0.0)
    dof = float(np.maximum(n - 1.0, 0.0).sum())
    if dof <= 0:
        return Shrinkage(text.astype(np.float64), KAPPA_MAX, float("nan"), float("nan"))
    sigma2 = float(np.where(rated, (y - ybar[None, :]) ** 2, 0.0).sum() / dof)
    seen = n > 0
    tau2 = float(np.mean((ybar[seen] - text[seen]) ** 2 - sigma2 / n[seen]))
    tau2 = max(tau2, sigma2 / KAPPA_MAX, 1e-12)
    kappa = min(sigma2 / tau2, KAPPA_MAX)
    mean = np.where(seen, (n * ybar + kappa * text) / np.maximum(n + kappa, 1e-12), text)
    return Shrinkage(mean, kappa, sigma2, tau2)


def item_prior_mean(
    how: str, emb: np.ndarray, y: np.ndarray, lam: float, item_folds: int = 10
) -> Callable[[np.ndarray], np.ndarray] | None:
    """`mean_of(rows)` for fit_person_priors: every item's prior mean [I] from the ratings of people `rows` only.

    "reward": the reward model's estimate from the item's embedding (ridge `lam`); "shrunk": the item's mean
    rating shrunk towards the reward model's out-of-item estimate (`item_folds` folds of items) by
    shrink_item_means, an item those people never rated getting the reward model's estimate (as a new item does
    when served); "items": None (fit_rating_prior's raw item means, unrated items unknown)."""
    assert how in PRIOR_MEANS, f"prior_mean is one of {PRIOR_MEANS}, not {how!r}"
    if how == "items":
        return None
    if how == "reward":
        return lambda rows: fit_reward_model(emb, y, rows, lam)

    def shrunk(rows: np.ndarray) -> np.ndarray:
        text = fit_reward_out_of_item(emb, y, rows, lam, item_folds)
        fit = shrink_item_means(y[rows], text)
        log.info("shrunk prior mean of %d people: kappa %.3g", len(rows), fit.kappa)
        unrated = np.isnan(y[rows]).all(axis=0)
        return np.where(unrated, fit_reward_model(emb, y, rows, lam), fit.mean)

    return shrunk


@dataclass
class PersonFeatures:
    """Item features [I, Dx] as one person sees them (their own ratings left out of the prior)."""

    spec: FeatureSpec
    emb: np.ndarray  # [I, D]

    def build(self, prior: PopulationPrior | None, known: np.ndarray) -> torch.Tensor:
        rows = np.arange(self.emb.shape[0])
        return torch.from_numpy(self.spec.build(self.emb, prior, rows, known))


def prior_loadings(emb: np.ndarray, rank: int, source: str) -> np.ndarray | None:
    """Content loadings of every item ("content"), or None to take them from the ratings' SVD ("ratings")."""
    assert source in ("content", "ratings"), f"loadings come from 'content' or 'ratings', not {source!r}"
    return fit_content_basis(emb, rank).loadings(emb) if source == "content" else None


def fit_person_priors(
    y: np.ndarray,
    split: PeopleSplit,
    index: dict[str, int],
    rank: int,
    loadings: np.ndarray | None,
    n_folds: int,
    seed: int,
    mean_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[PopulationPrior, np.ndarray, dict[str, tuple[PopulationPrior, np.ndarray]]]:
    """Priors whose people never include the person they describe, and never vary with that person's ratings.

    Leave-one-out would not do: a person's leave-one-out item mean (S_i - y_pi) / (n_i - 1) is their own
    rating shifted by a per-item constant, which a network that sees each item with many people can learn and
    decode (measured: 0.87 validation pairwise accuracy against 0.56 on test people). So the fit people are cut
    into `n_folds` folds and a fit person's prior comes from the other folds (the same features for everyone
    in a fold); a validation person's from all fit people; test people (and serving) get the prior of fit +
    validation people, returned first. Rating-SVD loadings of every prior are rotated onto that one's basis (a
    k x k rotation: the only trace of a person's ratings in their features; content loadings have none).
    `mean_of(rows)`, when given, is the prior's mean of every item from those people's ratings only (see
    item_prior_mean); it follows the same folds.
    """
    rows = lambda people: np.array([index[p] for p in people])  # noqa: E731

    def prior_of(people: list[str], reference: np.ndarray | None) -> tuple[PopulationPrior, np.ndarray]:
        mean = mean_of(rows(people)).astype(np.float32) if mean_of is not None else None
        return fit_rating_prior(y[rows(people)], rank, reference=reference, loadings=loadings, mean=mean)

    full, known = prior_of(split.fit + split.val, None)
    rng = np.random.default_rng(seed + 20_000)
    fold_of = {p: int(f) for p, f in zip(split.fit, rng.permutation(len(split.fit)) % n_folds, strict=True)}
    out: dict[str, tuple[PopulationPrior, np.ndarray]] = {}
    for f in range(n_folds):
        others = [p for p in split.fit if fold_of[p] != f]
        prior_f = prior_of(others, full.loadings)
        out.update({p: prior_f for p in split.fit if fold_of[p] == f})
    val_prior = prior_of(list(split.fit), full.loadings)
    out.update({p: val_prior for p in split.val})
    return full, known, out
