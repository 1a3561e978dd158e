"""Item prior means for individuals: the empirical Bayes shrinkage of known items' means towards the text estimate,
the out-of-item reward model, no held-out person's rating in any prior, and the shrunk mean served for known items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.gpo.checkpoint import save_checkpoint
from service.gpo.features import FeatureSpec
from service.serving.predictor import Item, Predictor
from service.training.individuals.baselines import fit_reward_model, fit_reward_out_of_item, fit_reward_regressor
from service.training.individuals.cv import choose_prior_mean, people_folds
from service.training.individuals.export import rating_checkpoint
from service.training.individuals.priors import (
    KAPPA_MAX,
    PRIOR_MEANS,
    fit_content_basis,
    fit_person_priors,
    item_prior_mean,
    shrink_item_means,
)
from service.training.individuals.splits import split_people
from service.training.individuals.train import IndividualTrainConfig, train_individual_gpo
from service.training.ratings import RatedItem, RatingsDataset

from .test_individuals import synthetic


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ratings_around(theta: np.ndarray, n_people: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """y [P, I]: every person rates every item theta_i plus noise of sd sigma."""
    return theta[None, :] + rng.normal(scale=sigma, size=(n_people, theta.shape[0]))


def test_kappa_is_large_when_item_means_are_noise_around_the_text_estimate() -> None:
    rng = np.random.default_rng(0)
    text = rng.normal(size=400)
    y = ratings_around(text, 20, 0.3, rng)
    fit = shrink_item_means(y, text)
    assert fit.sigma2 == pytest.approx(0.09, rel=0.05)
    assert fit.kappa > 100  # the items' own means add only noise: the text estimate counts for many ratings
    assert np.mean(np.abs(fit.mean - text)) < 0.2 * np.mean(np.abs(y.mean(axis=0) - text))


def test_kappa_is_small_when_the_item_means_carry_signal() -> None:
    rng = np.random.default_rng(1)
    text = rng.normal(size=400)
    theta = text + rng.normal(scale=0.5, size=400)  # tau2 = 0.25
    y = ratings_around(theta, 20, 0.3, rng)  # sigma2 = 0.09: kappa = 0.36
    fit = shrink_item_means(y, text)
    assert 0.2 < fit.kappa < 0.6
    ybar = y.mean(axis=0)
    assert np.allclose(fit.mean, (20 * ybar + fit.kappa * text) / (20 + fit.kappa))
    err = lambda m: float(np.mean((m - theta) ** 2))  # noqa: E731
    assert err(fit.mean) < err(ybar) < err(text)


def test_unrated_items_get_the_text_estimate_and_missing_within_variance_trusts_it() -> None:
    rng = np.random.default_rng(2)
    text = rng.normal(size=30)
    y = ratings_around(text + 1.0, 10, 0.2, rng)
    y[:, :5] = np.nan  # nobody rated the first five items
    y[:3, 5] = np.nan  # the sixth item has 7 ratings
    fit = shrink_item_means(y, text)
    assert np.array_equal(fit.mean[:5], text[:5])
    ybar5 = float(np.nanmean(y[:, 5]))
    assert fit.mean[5] == pytest.approx((7 * ybar5 + fit.kappa * text[5]) / (7 + fit.kappa))
    assert 0 <= fit.kappa <= KAPPA_MAX
    one = np.full((3, 4), np.nan)
    one[0, 1], one[1, 2] = 0.5, 0.7  # no item rated twice: no within-item variance, the text estimate alone
    fit1 = shrink_item_means(one, text[:4])
    assert fit1.kappa == KAPPA_MAX and np.array_equal(fit1.mean, text[:4])


def test_the_out_of_item_reward_model_never_sees_the_items_own_ratings() -> None:
    ds, emb = synthetic()
    y = ds.matrix()
    rows = np.arange(40)
    out = fit_reward_out_of_item(emb, y, rows, 0.1, n_folds=4)
    fold = np.arange(y.shape[1]) % 4
    for f in range(4):  # the fold's scores are the reward model fitted with the fold's ratings blanked out
        blank = y.copy()
        blank[:, fold == f] = np.nan
        assert np.allclose(out[fold == f], fit_reward_model(emb, blank, rows, 0.1)[fold == f], atol=1e-6)
    changed = y.copy()
    changed[:, 3] = np.where(np.isnan(y[:, 3]), np.nan, 1.0 - y[:, 3])
    assert fit_reward_out_of_item(emb, changed, rows, 0.1, 4)[3] == pytest.approx(out[3], abs=1e-12)


@pytest.mark.parametrize("how", PRIOR_MEANS)
def test_no_held_out_persons_rating_reaches_a_prior(how: str) -> None:
    """A test person's ratings change nothing; a fit person's change nothing in their own fold's prior."""
    ds, emb = synthetic()
    y = ds.matrix()
    index = {p: i for i, p in enumerate(ds.people)}
    split = split_people(ds.people, 0.7, seed=0)
    content = fit_content_basis(emb, 3).loadings(emb)
    rng = np.random.default_rng(3)

    def priors_of(m: np.ndarray):
        return fit_person_priors(m, split, index, 3, content, 5, 0, item_prior_mean(how, emb, m, 0.1, 4))

    full, known, priors = priors_of(y)
    for person in split.test[:3]:
        changed = y.copy()
        row = index[person]
        changed[row] = np.where(np.isnan(y[row]), np.nan, rng.uniform(size=y.shape[1]))  # arbitrary ratings
        full2, known2, priors2 = priors_of(changed)
        assert np.array_equal(full.mean, full2.mean) and np.array_equal(full.loadings, full2.loadings)
        assert np.array_equal(known, known2)
        for p in split.fit + split.val:
            assert np.array_equal(priors[p][0].mean, priors2[p][0].mean), p
    person = split.fit[0]
    changed = y.copy()
    row = index[person]
    changed[row] = np.where(np.isnan(y[row]), np.nan, 1.0 - y[row])
    full2, _, priors2 = priors_of(changed)
    fold = [p for p in split.fit if priors[p][0] is priors[person][0]]
    for p in fold:  # everyone in the person's fold shares the prior of the other folds
        assert np.array_equal(priors[p][0].mean, priors2[p][0].mean)
    assert not np.allclose(priors[split.val[0]][0].mean, priors2[split.val[0]][0].mean)  # the others do see them
    assert not np.allclose(full.mean, full2.mean)


def test_a_known_item_is_served_the_shrunk_mean_and_a_new_item_the_reward_estimate(tmp_path) -> None:
    ds, emb = synthetic(n_people=50)
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=3)
    split = split_people(ds.people, 0.7, seed=0)
    cfg = IndividualTrainConfig(
        max_steps=10, eval_every=5, batch_size=4, time_budget_s=60, progress=False, prior_mean="shrunk"
    )
    tiny = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16, "ridge_init": 1.0}
    result = train_individual_gpo(ds, emb, split, spec, cfg, "rating", tiny)
    meta = {"key_prefix": "synthetic", "template_version": "gpo-resp-v1", "dim": int(emb.shape[1])}
    path = save_checkpoint(rating_checkpoint(result, ds, emb, meta), tmp_path, "ratings")
    predictor = Predictor.from_store(path.parent.parent, "ratings")
    # computed here from the meta-train people, independently of training
    y = ds.matrix()
    index = {q: i for i, q in enumerate(ds.people)}
    rows = np.array([index[q] for q in split.fit + split.val])
    mean_of = item_prior_mean("shrunk", emb, y, cfg.reward_lambda, cfg.prior_item_folds)
    assert mean_of is not None
    shrunk = mean_of(rows)
    reward = fit_reward_regressor(emb, y, rows, cfg.reward_lambda)
    assert np.allclose(result.prior.mean, shrunk, atol=1e-6)
    assert not np.allclose(shrunk, reward.score(emb), atol=1e-3)  # the shrinkage does move known items
    p = spec.prior_slice
    for i in (0, 3, 17):
        known = predictor.features(Item(ds.prompt, [ds.items[i].text], emb[i : i + 1]))
        assert known[0, p.start] == 1.0
        assert known[0, p.start + 1] == pytest.approx(float(shrunk[i]), abs=1e-6)
    new_emb = emb[:1] + 0.5  # an item nobody rated
    new = predictor.features(Item("A prompt nobody used?", ["a new response"], new_emb))
    assert new[0, p.start] == 1.0
    assert new[0, p.start + 1] == pytest.approx(float(reward.score(new_emb)[0]), abs=1e-5)


def rated_population(pop_in_text: bool, seed: int = 0, n_people: int = 150, n_items: int = 50, per_person: int = 25):
    """People rating 1..5: an item's popularity plus a taste direction in content space. pop_in_text: the
    popularity is a linear function of the item's embedding (the text estimate has it; the item means add only
    noise); else it is independent of the embedding (only the item's ratings tell it). (dataset, embeddings)."""
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(n_items, 3))
    extra = rng.normal(size=(n_items, 5))
    emb = np.concatenate([content, extra], axis=1).astype(np.float32)
    pop = extra @ rng.normal(scale=0.4, size=5) if pop_in_text else rng.normal(scale=0.8, size=n_items)
    items = [RatedItem(f"i{j}", f"item number {j}") for j in range(n_items)]
    scores = {}
    for p in range(n_people):
        taste = rng.normal(scale=0.5, size=3)
        rated = rng.choice(n_items, size=per_person, replace=False)
        latent = pop[rated] + content[rated] @ taste + rng.normal(scale=0.5, size=per_person)
        levels = np.clip(np.round(3 + latent), 1, 5)
        scores[f"p{p}"] = {f"i{j}": float(s) for j, s in zip(rated, levels, strict=True)}
    ds = RatingsDataset(items=items, people=list(scores), scores=scores, scale=(1.0, 5.0), attributes={}, prompt="?")
    return ds, emb


def auto_choice(ds: RatingsDataset, emb: np.ndarray, y: np.ndarray | None = None):
    split = split_people(ds.people, 0.7, seed=0)
    y = ds.matrix() if y is None else y
    folds = people_folds(ds, y, split.fit + split.val, 5, (2, 5, 10), 2, seed=0)
    content = fit_content_basis(emb, 3).loadings(emb)
    return choose_prior_mean(folds, emb, y, content, 3, 0.1, 1.0, 5)


def test_auto_picks_shrunk_when_the_item_means_carry_signal_the_text_lacks() -> None:
    choice = auto_choice(*rated_population(pop_in_text=False))
    assert choice.chosen == "shrunk"
    assert choice.diff > choice.se > 0
    assert choice.scores["shrunk"] > choice.scores["reward"]


def test_auto_keeps_reward_when_the_item_means_are_noise_around_the_text_estimate() -> None:
    choice = auto_choice(*rated_population(pop_in_text=True))
    assert choice.chosen == "reward"
    assert choice.diff <= choice.se


def test_auto_never_reads_a_test_persons_ratings() -> None:
    ds, emb = rated_population(pop_in_text=False, n_people=60)
    y = ds.matrix()
    split = split_people(ds.people, 0.7, seed=0)
    rng = np.random.default_rng(4)
    changed = y.copy()
    for person in split.test:  # every test person rates anything at all
        row = ds.people.index(person)
        changed[row] = np.where(np.isnan(y[row]), np.nan, rng.uniform(size=y.shape[1]))
    assert auto_choice(ds, emb, changed) == auto_choice(ds, emb, y)
    # and through training: the same choice, recorded in the model and its checkpoint's metrics
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=3)
    cfg = IndividualTrainConfig(max_steps=2, eval_every=2, batch_size=2, time_budget_s=60, progress=False)
    assert cfg.prior_mean == "auto"
    tiny = {"d_model": 8, "n_layers": 1, "n_heads": 2, "d_ff": 8, "ridge_init": 1.0}
    results = []
    for m in (y, changed):
        scores = {p: dict(s) for p, s in ds.scores.items()}
        for p in split.test:
            row = ds.people.index(p)
            lo, hi = ds.scale
            scores[p] = {
                it.item_id: lo + (hi - lo) * float(m[row, j])
                for j, it in enumerate(ds.items)
                if it.item_id in scores[p]
            }
        ds_m = RatingsDataset(
            items=ds.items, people=ds.people, scores=scores, scale=ds.scale, attributes={}, prompt="?"
        )
        results.append(train_individual_gpo(ds_m, emb, split, spec, cfg, "rating", tiny))
    assert results[0].prior_choice == results[1].prior_choice is not None
    assert results[0].prior_mean == results[0].prior_choice["chosen"]
    meta = {"key_prefix": "synthetic", "template_version": "gpo-resp-v1", "dim": int(emb.shape[1])}
    metrics = rating_checkpoint(results[0], ds, emb, meta).metrics
    assert metrics["prior_mean"] == results[0].prior_mean and metrics["prior_cv"] == results[0].prior_choice
