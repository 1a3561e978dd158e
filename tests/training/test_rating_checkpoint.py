"""A rating GPO saved as a servable checkpoint: the Predictor gives what the offline evaluation gives, for known
items (prior bank) and new ones (content loadings from their embedding), through the full and the cached path."""

from __future__ import annotations

import numpy as np
import pytest

from service.embedder.prompts import format_response_item
from service.gpo.checkpoint import save_checkpoint
from service.gpo.features import FeatureSpec
from service.serving.predictor import AnsweredItem, Item, Predictor
from service.training.individuals.baselines import fit_reward_regressor
from service.training.individuals.episodes import comparison_pairs
from service.training.individuals.export import rating_checkpoint
from service.training.individuals.priors import PersonFeatures, fit_content_basis
from service.training.individuals.splits import context_draw, split_people
from service.training.individuals.train import IndividualTrainConfig, predict_person, train_individual_gpo

from .test_individuals import synthetic

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    ds, emb = synthetic(n_people=50)
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=3)
    split = split_people(ds.people, 0.7, seed=0)
    cfg = IndividualTrainConfig(max_steps=20, eval_every=10, batch_size=4, time_budget_s=60, progress=False)
    result = train_individual_gpo(ds, emb, split, spec, cfg, "rating", {**TINY, "ridge_init": 1.0})
    meta = {"key_prefix": "synthetic", "template_version": "gpo-resp-v1", "dim": int(emb.shape[1])}
    path = save_checkpoint(rating_checkpoint(result, ds, emb, meta), tmp_path_factory.mktemp("store"), "ratings")
    return ds, emb, spec, split, result, Predictor.from_store(path.parent.parent, "ratings")


def test_the_predictor_serves_what_the_evaluation_scores(trained) -> None:
    ds, emb, spec, split, result, predictor = trained
    assert predictor.kind == "rating" and predictor.model_version == "ratings/v0001"
    y = ds.matrix()
    x = PersonFeatures(spec, emb).build(result.prior, result.known)
    for person in split.test[:5]:
        yp = y[ds.people.index(person)]
        ctx, tgt = context_draw(ds, person, 6, seed=0)
        offline = predict_person(result.model, "rating", x, yp, ctx, tgt, np.random.default_rng(0))
        context = [
            AnsweredItem(ds.prompt, [ds.items[i].text], emb[i : i + 1], np.array([yp[i]], dtype=np.float32))
            for i in ctx
        ]
        targets = [Item(ds.prompt, [ds.items[i].text], emb[i : i + 1]) for i in tgt]
        served = [p.distribution[0] for p in predictor.predict(context, targets)]
        assert np.allclose(served, offline, atol=1e-5)
        cached = [p.distribution[0] for p in predictor.predict_encoded([(predictor.encode(context), targets)])[0]]
        assert np.allclose(cached, served, atol=1e-5)


def test_a_new_item_gets_content_loadings_and_the_reward_models_estimate(trained) -> None:
    ds, emb, spec, split, result, predictor = trained
    new_emb = emb[:1] + 0.5  # an item nobody rated
    f = predictor.features(Item("A prompt nobody used?", ["a new response"], new_emb))
    basis = fit_content_basis(emb, spec.prior_rank)
    p = spec.prior_slice
    assert f[0, p.start] == 1.0  # known to the readout: its ridge estimate applies
    # the mean is the reward model of the meta-train people, fitted independently here
    index = {q: i for i, q in enumerate(ds.people)}
    rows = np.array([index[q] for q in split.fit + split.val])
    reward = fit_reward_regressor(emb, ds.matrix(), rows, IndividualTrainConfig().reward_lambda)
    assert f[0, p.start + 1] == pytest.approx(float(reward.score(new_emb)[0]), abs=1e-5)
    assert f[0, p.start + 1] != pytest.approx(float(reward.score(emb[:1])[0]), abs=1e-4)  # it depends on the text
    assert np.allclose(f[0, p.start + 2 :], basis.loadings(new_emb)[0], atol=1e-5)
    # a training item's prior mean is the same reward model's estimate of it
    assert result.prior.mean[3] == pytest.approx(float(reward.score(emb[3:4])[0]), abs=1e-5)
    known = predictor.features(Item(ds.prompt, [ds.items[3].text], emb[3:4]))
    assert np.allclose(known[0, p], result.prior.features(np.array([3]))[0], atol=1e-6)


def test_texts_follow_the_kind(trained) -> None:
    _, _, _, _, _, predictor = trained
    assert predictor.item_texts("Rate it.", ["Fine."]) == [format_response_item("Rate it.", "Fine.")]


@pytest.mark.parametrize("kind", ["comparison", "comparison_bt"])
def test_a_comparison_checkpoint_serves_what_the_evaluation_scores(
    kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Pair head (appendix H) and score head (Bradley-Terry): /predict's P(a preferred) for pairs of a person's
    target items equals the offline evaluation's, given the pairs of their context items."""
    ds, emb = synthetic(n_people=50)
    spec = FeatureSpec(emb_dim=emb.shape[1], use_embedding=True, use_prior=True, prior_rank=3)
    split = split_people(ds.people, 0.7, seed=0)
    cfg = IndividualTrainConfig(max_steps=20, eval_every=10, batch_size=4, time_budget_s=60, progress=False)
    result = train_individual_gpo(ds, emb, split, spec, cfg, kind, dict(TINY))
    meta = {"key_prefix": "synthetic", "template_version": "gpo-resp-v1", "dim": int(emb.shape[1])}
    store = tmp_path_factory.mktemp("store")
    save_checkpoint(rating_checkpoint(result, ds, emb, meta), store, "pairs")
    predictor = Predictor.from_store(store, "pairs")
    assert predictor.kind == "comparison" and predictor.score_head == (kind == "comparison_bt")
    y = ds.matrix()
    x = PersonFeatures(spec, emb).build(result.prior, result.known)
    person = split.test[0]
    yp = y[ds.people.index(person)]
    ctx, tgt = context_draw(ds, person, 8, seed=0)
    offline = predict_person(result.model, kind, x, yp, ctx, tgt, np.random.default_rng(0))
    a_idx, b_idx = np.triu_indices(len(tgt), k=1)
    if kind == "comparison_bt":  # scores of the targets: P(a) = sigmoid(s_a - s_b)
        offline = 1.0 / (1.0 + np.exp(-(offline[a_idx] - offline[b_idx])))
    ca, cb, label = comparison_pairs(yp, ctx)

    def item(i: int, j: int) -> Item:
        return Item(ds.prompt, [ds.items[i].text, ds.items[j].text], emb[[i, j]])

    context = [
        AnsweredItem(ds.prompt, [ds.items[i].text, ds.items[j].text], emb[[i, j]], np.array([lab, 1 - lab]))
        for i, j, lab in zip(ca, cb, label, strict=True)
    ]
    served = predictor.predict_pairs(context, [item(tgt[i], tgt[j]) for i, j in zip(a_idx, b_idx, strict=True)])
    assert np.allclose(served, offline, atol=1e-5)
    assert predictor.predict_pairs(context, []) == []
