"""Individuals: priors, splits and draws, the leak-free fold priors, baselines, metrics, and a small end-to-end run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.gpo.features import FeatureSpec
from service.gpo.losses import bt_loss
from service.training.individuals.baselines import fit_reward_model, knn_predict, latent_factor_predict
from service.training.individuals.episodes import bt_episode, comparison_pairs
from service.training.individuals.evaluate import IndividualEvalConfig, evaluate_individuals
from service.training.individuals.priors import (
    PersonFeatures,
    fit_content_basis,
    fit_person_priors,
    fit_rating_prior,
)
from service.training.individuals.splits import PeopleSplit, context_draw, person_seed, split_people
from service.training.individuals.train import (
    IndividualTrainConfig,
    pairwise_from,
    predict_person,
    train_individual_gpo,
)
from service.training.metrics import exact_accuracy, pairwise_accuracy, rating_rmse, spearman
from service.training.ratings import RatedItem, RatingsDataset


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic(n_people: int = 60, n_items: int = 40, per_person: int = 20, seed: int = 0):
    """People whose 1..4 ratings follow item popularity plus a taste direction in item-content space; the item
    'embeddings' carry that content. Returns (dataset, embeddings)."""
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(n_items, 3))
    emb = np.concatenate([content, rng.normal(scale=0.3, size=(n_items, 5))], axis=1).astype(np.float32)
    pop = rng.normal(scale=0.6, size=n_items)
    items = [RatedItem(f"i{j}", f"item number {j}") for j in range(n_items)]
    scores = {}
    for p in range(n_people):
        taste = rng.normal(scale=1.2, size=3)
        rated = rng.choice(n_items, size=per_person, replace=False)
        latent = pop[rated] + content[rated] @ taste + rng.normal(scale=0.4, size=per_person)
        levels = np.clip(np.round(2.5 + latent), 1, 4)
        scores[f"p{p}"] = {f"i{j}": float(s) for j, s in zip(rated, levels, strict=True)}
    ds = RatingsDataset(
        items=items, people=list(scores), scores=scores, scale=(1.0, 4.0), attributes={}, prompt="Rate:"
    )
    return ds, emb


def test_rating_prior_means_and_unrated_items() -> None:
    y = np.array([[0.0, 1.0, np.nan], [1.0, np.nan, np.nan], [0.5, 0.0, np.nan]])
    prior, known = fit_rating_prior(y, rank=2)
    assert known.tolist() == [True, True, False]
    assert np.allclose(prior.mean, [0.5, 0.5, 0.0])
    assert np.all(prior.loadings[2] == 0)


def test_content_loadings_cover_new_items() -> None:
    _, emb = synthetic()
    basis = fit_content_basis(emb[:30], rank=3)
    new = basis.loadings(emb[30:])  # items nobody rated still get loadings from their embedding
    assert new.shape == (10, 3) and np.isfinite(new).all()
    own = basis.loadings(emb[:30]).astype(np.float64)
    gram = own.T @ own  # coordinates on principal directions: uncorrelated, in decreasing variance
    assert np.allclose(gram, np.diag(np.diag(gram)), atol=1e-3 * gram.max())
    assert np.all(np.diff(np.diag(gram)) <= 1e-6)


def test_fold_priors_never_encode_a_persons_own_ratings() -> None:
    """The leak that leave-one-out priors have: a person's features must not change with their own ratings."""
    ds, emb = synthetic()
    y = ds.matrix()
    index = {p: i for i, p in enumerate(ds.people)}
    split = split_people(ds.people, 0.7, seed=0)
    content = fit_content_basis(emb, 3).loadings(emb)

    def reward_of(matrix: np.ndarray):
        return lambda rows: fit_reward_model(emb, matrix, rows, 0.1)

    # content loadings with the reward model's mean (the default), with item means, and SVD loadings
    for loadings, reward in ((content, True), (content, False), (None, False)):
        _, _, priors = fit_person_priors(
            y, split, index, 3, loadings, n_folds=5, seed=0, mean_of=reward_of(y) if reward else None
        )
        for person in (split.fit[0], split.val[0]):
            changed = y.copy()
            row = index[person]
            changed[row] = np.where(np.isnan(y[row]), np.nan, 1.0 - y[row])
            _, _, priors2 = fit_person_priors(
                changed, split, index, 3, loadings, n_folds=5, seed=0, mean_of=reward_of(changed) if reward else None
            )
            assert np.array_equal(priors[person][0].mean, priors2[person][0].mean)
            # ... while the prior of test people (all training people) does follow them
            full, full2 = (
                fit_person_priors(m, split, index, 3, loadings, 5, 0, reward_of(m) if reward else None)[0]
                for m in (y, changed)
            )
            assert not np.allclose(full.mean, full2.mean)
            if loadings is not None:
                assert np.array_equal(priors[person][0].loadings, priors2[person][0].loadings)
            else:  # SVD loadings are rotated onto the basis of all training people: equal up to a k x k rotation
                a, b = priors[person][0].loadings, priors2[person][0].loadings
                u, _, vt = np.linalg.svd(b.T @ a)
                assert np.allclose(b @ (u @ vt), a, atol=1e-4)


def test_splits_and_draws() -> None:
    ds, _ = synthetic()
    split = split_people(ds.people, 0.6, seed=3)
    assert isinstance(split, PeopleSplit)
    assert not set(split.test) & set(split.fit + split.val) and not set(split.fit) & set(split.val)
    assert sorted(split.fit + split.val + split.test) == sorted(ds.people)
    c1, t1 = context_draw(ds, "p1", 5, seed=0)
    c2, t2 = context_draw(ds, "p1", 5, seed=0)
    assert c1.tolist() == c2.tolist() and t1.tolist() == t2.tolist()  # every method sees the same draw
    assert len(c1) == 5 and len(t1) == 15 and not set(c1) & set(t1)


def test_people_whose_ids_share_a_prefix_get_different_draws() -> None:
    """The seed hashes the whole id: the old one read its first bytes only (and kept 4 of them), so NYT ids
    that began alike, e.g. '5f4d9b88...' and '5f4d9b88...', drew the same positions."""
    items = [RatedItem(f"i{j}", f"item {j}") for j in range(30)]
    same = {f"i{j}": float(1 + j % 4) for j in range(30)}  # both rate every item alike
    people = ["5f4d9b883f20a00367ccff69", "5f4d9b883f20a00367ccff70"]  # a common 22-character prefix
    ds = RatingsDataset(items=items, people=people, scores={p: same for p in people}, scale=(1.0, 4.0))
    assert person_seed(people[0]) != person_seed(people[1])
    draws = [context_draw(ds, p, 10, seed=0)[0].tolist() for p in people]
    assert draws[0] != draws[1]
    assert context_draw(ds, people[0], 10, seed=0)[0].tolist() == draws[0]  # still the same draw every time


def test_metrics() -> None:
    true = np.array([1.0, 2.0, 3.0, 3.0])
    assert pairwise_accuracy(np.array([0.1, 0.2, 0.3, 0.0]), true) == pytest.approx(3 / 5)
    assert pairwise_accuracy(np.zeros(4), true) == 0.5  # ties in the prediction count one half
    assert pairwise_accuracy(np.arange(3.0), np.ones(3)) is None
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.ones(3), np.arange(3.0)) is None
    assert rating_rmse(np.array([1.0, 3.0]), np.array([2.0, 3.0])) == pytest.approx(np.sqrt(0.5))
    assert exact_accuracy(np.array([1.4, 2.6, 3.9]), np.array([1.0, 3.0, 3.0]), [1, 2, 3, 4]) == pytest.approx(2 / 3)


def test_comparison_pairs_and_their_accuracy() -> None:
    y = np.array([0.0, 1.0, 1.0, 0.5])
    a, b, label = comparison_pairs(y, np.arange(4))
    assert len(a) == 5  # (1, 2) is a tie
    assert all(label[i] == float(y[a[i]] > y[b[i]]) for i in range(len(a)))
    tgt = np.array([0, 1, 3])
    perfect = np.array([0.0, 0.0, 1.0])  # P(a>b) over triu pairs (0,1), (0,3), (1,3): 0 < 1, 0 < .5, 1 > .5
    assert pairwise_from("comparison", perfect, y, tgt) == 1.0
    assert pairwise_from("comparison", 1.0 - perfect, y, tgt) == 0.0


def test_baselines_personalise_on_synthetic_taste() -> None:
    ds, emb = synthetic(n_people=120)
    y = ds.matrix()
    index = {p: i for i, p in enumerate(ds.people)}
    split = split_people(ds.people, 0.7, seed=0)
    rows = np.array([index[p] for p in split.fit + split.val])
    content = fit_content_basis(emb, 3).loadings(emb)
    prior, _ = fit_rating_prior(y[rows], 3, loadings=content)
    accs = {"mean": [], "content": [], "knn": []}
    for p in split.test:
        c, t = context_draw(ds, p, 10, 0)
        yp = y[index[p]]
        accs["mean"].append(pairwise_accuracy(prior.mean[t], yp[t]))
        accs["content"].append(pairwise_accuracy(latent_factor_predict(prior, yp, c, t, 1.0), yp[t]))
        accs["knn"].append(pairwise_accuracy(knn_predict(y, rows, yp, c, t, 10, prior.mean), yp[t]))
    means = {k: np.mean([a for a in v if a is not None]) for k, v in accs.items()}
    assert means["content"] > means["mean"] + 0.05  # taste in content space is recovered from 10 ratings


@pytest.mark.parametrize("min_gain_se", [float("inf"), -float("inf")])
def test_the_readout_is_kept_unless_training_beats_it_on_validation(min_gain_se: float) -> None:
    """The untrained rating GPO is its ridge readout exactly (the content-factor estimate from the reward model's
    mean); the trained checkpoint replaces it only when it wins on validation by the required margin."""
    ds, emb = synthetic(n_people=60)
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=3)
    split = split_people(ds.people, 0.7, seed=0)
    cfg = IndividualTrainConfig(
        max_steps=30, eval_every=10, batch_size=4, time_budget_s=60, progress=False, min_gain_se=min_gain_se
    )
    tiny = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16, "ridge_init": 2.0}
    result = train_individual_gpo(ds, emb, split, spec, cfg, "rating", tiny)
    y = ds.matrix()
    x = PersonFeatures(spec, emb).build(result.prior, result.known)
    person = split.test[0]
    yp = y[ds.people.index(person)]
    c, t = context_draw(ds, person, 8, seed=0)
    pred = predict_person(result.model, "rating", x, yp, c, t, np.random.default_rng(0))
    readout = latent_factor_predict(result.prior, yp, c, t, 2.0)
    if min_gain_se == float("inf"):  # no gain is enough: the readout is kept
        assert result.best_step == 0
        assert np.allclose(pred, readout, atol=1e-5)
        # its std is one constant: the readout's residual spread on the validation people, not the random head's
        from service.gpo.batch import collate
        from service.training.individuals.episodes import rating_episode

        with torch.no_grad():
            std = result.model(collate([rating_episode(x, yp, c, t)])).std[0, len(c) :]
        rms = float(np.sqrt(np.mean((readout - yp[t]) ** 2)))
        assert torch.allclose(std, std[0]) and 0.5 * rms < float(std[0]) < 2.0 * rms
    else:  # any checkpoint better than step 0 on validation is kept
        assert result.best_step == min(h["step"] for h in result.history if h["val_alignment"] == result.best_val)
    index = {q: i for i, q in enumerate(ds.people)}
    rows = np.array([index[q] for q in split.fit + split.val])
    assert np.allclose(result.prior.mean, fit_reward_model(emb, y, rows, cfg.reward_lambda), atol=1e-6)


def test_the_comparison_readout_is_the_closed_form_pair_fit() -> None:
    """The untrained score-head comparison model scores a response beta * reward + loadings @ u, u one Newton step of
    the ridge logistic fit of the person's context pairs (benchmarks/experiments/comparison_readout.py); with no
    pair rated differently it falls back to the reward model's order."""
    from service.training.individuals.baselines import fit_pair_beta

    ds, emb = synthetic(n_people=60)
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=3)
    split = split_people(ds.people, 0.7, seed=0)
    cfg = IndividualTrainConfig(
        max_steps=20, eval_every=10, batch_size=4, time_budget_s=60, progress=False, min_gain_se=float("inf")
    )
    tiny = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}
    result = train_individual_gpo(ds, emb, split, spec, cfg, "comparison_bt", tiny)
    model = result.model
    assert result.best_step == 0 and model.cfg.prior_readout == "ridge" and model.cfg.comparison_head == "score"
    y = ds.matrix()
    index = {q: i for i, q in enumerate(ds.people)}
    rows = np.array([index[q] for q in split.fit + split.val])
    assert model.cfg.pair_beta_init == pytest.approx(fit_pair_beta(result.prior.mean, y, rows))
    assert model.cfg.ridge_init == cfg.pair_ridge
    x = PersonFeatures(spec, emb).build(result.prior, result.known)
    beta, ridge = float(model.log_beta.detach().exp()), float(model.log_ridge.detach().exp())
    mean, load = result.prior.mean.astype(np.float64), result.prior.loadings.astype(np.float64)
    person = split.test[0]
    yp = y[index[person]]
    c, t = context_draw(ds, person, 8, seed=0)
    a, b, lab = comparison_pairs(yp, c)
    assert len(a) > 0
    d, off = load[a] - load[b], beta * (mean[a] - mean[b])
    p = 1 / (1 + np.exp(-off))
    u = np.linalg.solve((d * (p * (1 - p))[:, None]).T @ d + ridge * np.eye(3), d.T @ (lab - p))
    got = predict_person(model, "comparison_bt", x, yp, c, t, np.random.default_rng(0))
    assert np.allclose(got, beta * mean[t] + load[t] @ u, atol=1e-4)
    tied = yp.copy()
    tied[c] = 0.5  # every context pair tied: nothing to fit
    got = predict_person(model, "comparison_bt", x, tied, c, t, np.random.default_rng(0))
    assert np.allclose(got, beta * mean[t], atol=1e-4)


def test_fit_pair_beta_recovers_the_scale_of_the_mean() -> None:
    """Pairs labelled by sampling sigmoid(2.5 * (mean_a - mean_b)): the fit finds about 2.5."""
    from service.training.individuals.baselines import fit_pair_beta

    rng = np.random.default_rng(0)
    mean = rng.normal(size=40)
    y = np.full((400, 40), np.nan)
    for r in range(400):
        items = rng.choice(40, size=2, replace=False)
        first = rng.random() < 1 / (1 + np.exp(-2.5 * (mean[items[0]] - mean[items[1]])))
        y[r, items] = (1.0, 0.0) if first else (0.0, 1.0)
    assert fit_pair_beta(mean, y, np.arange(400)) == pytest.approx(2.5, rel=0.25)


@pytest.mark.parametrize("kind_comparison", [False, True])
def test_evaluate_individuals_end_to_end(kind_comparison: bool) -> None:
    ds, emb = synthetic(n_people=80)
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=3)
    cfg = IndividualEvalConfig(seeds=(0,), n_context=(5, 10), main_context=10, comparison=kind_comparison)
    tcfg = IndividualTrainConfig(max_steps=30, eval_every=10, batch_size=4, time_budget_s=60, progress=False)
    records, meta = evaluate_individuals(
        ds, emb, spec, cfg, tcfg, {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}
    )
    methods = {r["method"] for r in records}
    expected = {"gpo", "global_mean", "context_mean", "knn", "reward_model", "latent_factor", "content_factor"}
    assert methods == expected | ({"gpo_comparison", "gpo_comparison_bt"} if kind_comparison else set())
    for r in records:
        assert r["n_people"] == 32 and 0.0 <= r["pairwise"] <= 1.0
    gpo = [r for r in records if r["method"] == "gpo" and r["n_context"] == 10][0]
    mean = [r for r in records if r["method"] == "global_mean" and r["n_context"] == 10][0]
    assert gpo["pairwise"] > mean["pairwise"]  # the content-factor readout personalises from the first step
    chosen = meta["chosen"]["0"]
    assert set(chosen) == {"knn_k", "reward_lambda", "lf_lambda", "content_lambda", "prior_mean", "prior_cv"}
    assert chosen["prior_mean"] in ("reward", "shrunk") and chosen["prior_cv"]["chosen"] == chosen["prior_mean"]


def test_bradley_terry_episode_and_loss() -> None:
    """Context tokens are pairs (flag 1), targets single items (flag 0); the loss is the BT cross-entropy of the
    target pairs: log 2 per pair when every score is equal."""
    from service.gpo.model import GPO, GPOConfig

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g)
    y = np.array([0.0, 1.0, 0.5, 0.0, 1.0, 0.5])
    ep, (ia, ib, lab) = bt_episode(x, y, np.array([0, 1, 2]), np.array([3, 4, 5]), np.random.default_rng(0))
    n_ctx = int(ep.is_context.sum())
    assert n_ctx == 3 and ep.x.shape == (6, 5)
    assert ep.x[:n_ctx, -1].tolist() == [1.0] * 3 and ep.x[n_ctx:, -1].tolist() == [0.0] * 3
    assert torch.equal(ep.x[n_ctx:, :4], x[3:])
    tgt = np.array([3, 4, 5])
    assert all(lab[i] == float(y[tgt[ia[i]]] > y[tgt[ib[i]]]) for i in range(len(ia)))
    model = GPO(
        GPOConfig(dim_x=5, d_model=8, n_layers=1, n_heads=2, d_ff=8, kind="comparison", comparison_head="score")
    )
    loss = bt_loss(model, [ep], [(ia, ib, lab)])
    assert torch.isfinite(loss) and loss.requires_grad
    with torch.no_grad():  # make the head output the item's true score: the loss must drop
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()
    base = float(bt_loss(model, [ep], [(ia, ib, lab)]))
    assert base == pytest.approx(len(ia) * np.log(2), rel=1e-5)  # equal scores: every pair at 1/2
