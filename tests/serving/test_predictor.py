"""Predictor: features of served items, embedder checks, and predictions from a saved checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.gpo.checkpoint import Checkpoint, PriorBank, save_checkpoint
from service.gpo.features import FeatureSpec
from service.gpo.model import GPO, GPOConfig
from service.gpo.prior import PopulationPrior, question_key
from service.serving.predictor import AnsweredItem, EmbedderMismatch, Item, Predictor, PriorBasis

EMB, RANK = 6, 2
KNOWN_Q, KNOWN_OPTS = "Is the sky blue?", ["Yes", "No", "Unsure"]


@pytest.fixture
def predictor(tmp_path) -> Predictor:
    torch.manual_seed(0)
    spec = FeatureSpec(emb_dim=EMB, use_embedding=True, use_prior=True, prior_rank=RANK)
    cfg = GPOConfig(
        dim_x=spec.dim_x,
        d_model=16,
        n_layers=1,
        n_heads=2,
        d_ff=16,
        prior_feature=EMB,
        prior_rank=RANK,
        prior_readout="ridge",
    )
    prior = PopulationPrior(np.array([0.6, 0.3, 0.1], np.float32), np.random.rand(3, RANK).astype(np.float32))
    bank = PriorBank(prior, {question_key(KNOWN_Q, KNOWN_OPTS): (0, 3)})
    meta = {"features": spec.to_dict(), "embedder": {"key_prefix": "lm@r|mean|gpo-mc-v1", "dim": EMB}}
    save_checkpoint(Checkpoint(GPO(cfg), meta, bank), tmp_path, "toy")
    return Predictor.from_store(tmp_path, "toy")


def _item(rng, question, options, dist=None):
    emb = rng.standard_normal((len(options), EMB)).astype(np.float32)
    if dist is None:
        return Item(question, options, emb)
    return AnsweredItem(question, options, emb, np.asarray(dist, np.float32))


def test_features_use_the_prior_bank_for_known_questions_only(predictor):
    rng = np.random.default_rng(0)
    known = predictor.features(_item(rng, "  is the SKY blue? ", ["yes", "no", "unsure"]))  # same key
    unknown = predictor.features(_item(rng, "Is grass green?", ["Yes", "No", "Unsure"]))
    assert known.shape == unknown.shape == (3, EMB + 2 + RANK)
    np.testing.assert_allclose(known[:, EMB], 1.0)
    np.testing.assert_allclose(known[:, EMB + 1], [0.6, 0.3, 0.1], rtol=1e-6)
    np.testing.assert_array_equal(unknown[:, EMB:], 0.0)
    assert predictor.is_known(KNOWN_Q, KNOWN_OPTS) and not predictor.is_known(KNOWN_Q, ["Yes", "No"])


def test_predictions_are_distributions_and_batching_changes_nothing(predictor):
    rng = np.random.default_rng(1)
    ctx = [_item(rng, f"q{i}", ["a", "b"], [0.3, 0.7]) for i in range(3)]
    ctx.append(_item(rng, KNOWN_Q, KNOWN_OPTS, [0.5, 0.4, 0.1]))
    tgt = [_item(rng, "t1", ["x", "y", "z", "w"]), _item(rng, KNOWN_Q, KNOWN_OPTS)]
    other_ctx = [_item(rng, "q9", ["a", "b"], [0.9, 0.1])]
    alone = predictor.predict(ctx, tgt)
    together = predictor.predict_many([(other_ctx, tgt[:1]), (ctx, tgt)])[1]
    for a, b, t in zip(alone, together, tgt, strict=True):
        assert a.distribution.shape == (len(t.options),) and abs(a.distribution.sum() - 1) < 1e-9
        np.testing.assert_allclose(a.distribution, b.distribution, atol=1e-6)
        np.testing.assert_allclose(a.std, b.std, atol=1e-6)


def test_embedder_mismatch_is_refused_with_a_clear_message(predictor):
    predictor.check_embedder("lm@r|mean|gpo-mc-v1", EMB)
    with pytest.raises(EmbedderMismatch, match="trained on embeddings"):
        predictor.check_embedder("other@r|mean|gpo-mc-v1", EMB)
    with pytest.raises(EmbedderMismatch, match="6-dim"):
        predictor.check_embedder("lm@r|mean|gpo-mc-v1", 8)


def test_bad_inputs_raise(predictor):
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="at least one context"):
        predictor.predict([], [_item(rng, "t", ["a", "b"])])
    with pytest.raises(ValueError, match="embeddings must be"):
        predictor.features(Item("t", ["a", "b"], np.zeros((3, EMB), np.float32)))


# ---------------------------------------------------------------------------------------------- cached contexts


def _random_group(rng, n_ctx: int, n_tgt: int):
    ctx = []
    for i in range(n_ctx):
        if i % 3 == 0:
            ctx.append(_item(rng, KNOWN_Q, KNOWN_OPTS, rng.dirichlet(np.ones(3))))
        else:
            k = int(rng.integers(2, 6))
            ctx.append(_item(rng, f"c{i}", [f"o{j}" for j in range(k)], rng.dirichlet(np.ones(k))))
    tgt = [_item(rng, f"t{i}", [f"o{j}" for j in range(int(rng.integers(2, 6)))]) for i in range(n_tgt)]
    tgt.append(_item(rng, KNOWN_Q, KNOWN_OPTS))
    return ctx, tgt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encoded_context_predicts_as_the_full_forward(predictor, seed):
    """Random groups, batched together: encode once + targets only == the full forward, to 1e-5."""
    with torch.no_grad():  # a trained model: the head's mean channel is no longer zero
        predictor.model.head[-1].weight.normal_(0, 0.5)
    rng = np.random.default_rng(seed)
    groups = [_random_group(rng, int(rng.integers(1, 40)), int(rng.integers(1, 6))) for _ in range(4)]
    cached = predictor.predict_encoded([(predictor.encode(c), t) for c, t in groups])
    full = predictor.predict_many(groups)
    worst = 0.0
    for per_group_cached, per_group_full in zip(cached, full, strict=True):
        for a, b in zip(per_group_cached, per_group_full, strict=True):
            worst = max(worst, float(np.abs(a.distribution - b.distribution).max()), float(np.abs(a.std - b.std).max()))
    assert worst <= 1e-5, worst


def test_encoded_context_round_trips_through_a_flat_array(predictor):
    rng = np.random.default_rng(4)
    ctx, tgt = _random_group(rng, 7, 3)
    state = predictor.encode(ctx)
    array = predictor.state_to_array(state)
    assert array.dtype == np.float32 and array.ndim == 1
    again = predictor.state_from_array(array)
    a, b = predictor.predict_encoded([(state, tgt)])[0], predictor.predict_encoded([(again, tgt)])[0]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.distribution, y.distribution)
    with pytest.raises(ValueError, match="does not fit"):
        predictor.state_from_array(array[:-1])


def test_requests_on_one_encoded_context_share_a_row_and_get_their_own_answers(predictor):
    with torch.no_grad():
        predictor.model.head[-1].weight.normal_(0, 0.5)
    rng = np.random.default_rng(8)
    (c1, t1), (c2, t2) = _random_group(rng, 9, 3), _random_group(rng, 4, 2)
    s1, s2 = predictor.encode(c1), predictor.encode(c2)
    together = predictor.predict_encoded([(s1, t1[:2]), (s2, t2), (s1, t1[2:]), (s1, t1)])
    alone = [predictor.predict_encoded([(s, t)])[0] for s, t in [(s1, t1[:2]), (s2, t2), (s1, t1[2:]), (s1, t1)]]
    for a_req, b_req in zip(together, alone, strict=True):
        assert len(a_req) == len(b_req)
        for a, b in zip(a_req, b_req, strict=True):
            np.testing.assert_allclose(a.distribution, b.distribution, atol=1e-6)
            np.testing.assert_allclose(a.std, b.std, atol=1e-6)


def test_a_new_question_gets_its_text_prior_when_the_checkpoint_stores_one(tmp_path):
    """A checkpoint with a text prior serves a question outside its bank with the text prior's features (flag
    TEXT_FLAG, the options' means summing to 1); known questions keep their own prior; the features round-trip
    through the saved checkpoint."""
    from service.gpo.features import TEXT_FLAG, TextPrior

    rng = np.random.default_rng(3)
    emb = rng.standard_normal((40, EMB))
    item_q = np.repeat(np.arange(10), 4)
    text = TextPrior.fit(emb, item_q, rng.standard_normal((40, 1 + RANK)) * 0.1, alpha=1.0)
    spec = FeatureSpec(emb_dim=EMB, use_embedding=True, use_prior=True, prior_rank=RANK)
    cfg = GPOConfig(dim_x=spec.dim_x, d_model=16, n_layers=1, n_heads=2, d_ff=16, prior_feature=EMB, prior_rank=RANK)
    prior = PopulationPrior(np.array([0.6, 0.3, 0.1], np.float32), np.random.rand(3, RANK).astype(np.float32))
    bank = PriorBank(prior, {question_key(KNOWN_Q, KNOWN_OPTS): (0, 3)})
    meta = {"features": spec.to_dict(), "embedder": {"key_prefix": "lm@r|mean|gpo-mc-v1", "dim": EMB}}
    save_checkpoint(Checkpoint(GPO(cfg), meta, bank, extra=text.to_checkpoint()), tmp_path, "texty")
    served = Predictor.from_store(tmp_path, "texty")
    new = _item(rng, "Is grass green?", ["Yes", "No", "Unsure"])
    f = served.features(new)
    np.testing.assert_allclose(f[:, EMB], TEXT_FLAG)
    np.testing.assert_allclose(f[:, EMB:], text.question_features(new.embeddings), rtol=1e-5, atol=1e-6)
    assert f[:, EMB + 1].sum() == pytest.approx(1.0, abs=1e-5)  # the deviations from uniform sum to 0
    assert served.prior_basis(new.question, new.options) == PriorBasis("text")  # no matcher: no similarity
    assert served.prior_basis(KNOWN_Q, KNOWN_OPTS) == PriorBasis("known")
    known = served.features(_item(rng, KNOWN_Q, KNOWN_OPTS))
    np.testing.assert_allclose(known[:, EMB], 1.0)
    preds = served.predict([_item(rng, "q0", ["a", "b"], [0.3, 0.7])], [new])
    assert preds[0].distribution.sum() == pytest.approx(1.0)


def test_a_rewording_with_its_options_in_another_order_borrows_each_options_own_prior(tmp_path):
    """The checkpoint's matcher stores option vectors: a known question asked with its options reversed gets, for
    each option, the prior of the bank option it means, not of the one at its position."""
    from service.gpo.matching import QuestionMatcher, match_text, option_text

    spec = FeatureSpec(emb_dim=EMB, use_embedding=True, use_prior=True, prior_rank=RANK)
    cfg = GPOConfig(dim_x=spec.dim_x, d_model=16, n_layers=1, n_heads=2, d_ff=16, prior_feature=EMB, prior_rank=RANK)
    prior = PopulationPrior(np.array([0.6, 0.3, 0.1], np.float32), np.random.rand(3, RANK).astype(np.float32))
    bank = PriorBank(prior, {question_key(KNOWN_Q, KNOWN_OPTS): (0, 3)})
    option_vectors = np.eye(3, dtype=np.float32)  # the bank's options, in its order
    matcher = QuestionMatcher(np.array([[1.0, 0.0]], np.float32), np.array([0]), np.array([3]), 0.9, option_vectors)
    meta = {"features": spec.to_dict(), "embedder": {"key_prefix": "lm@r|mean|gpo-mc-v1", "dim": EMB}}
    save_checkpoint(Checkpoint(GPO(cfg), meta, bank, extra=matcher.to_checkpoint()), tmp_path, "ordered")
    served = Predictor.from_store(tmp_path, "ordered")
    item = _item(np.random.default_rng(6), "Is the sky blue, would you say?", ["Unsure", "Nope", "Yes indeed"])
    vectors = {match_text(item.question, item.options): np.array([1.0, 0.0], np.float32)}
    vectors |= {option_text(o): option_vectors[j] for o, j in zip(item.options, [2, 1, 0], strict=True)}
    served.use_question_encoder(lambda text: vectors[text])
    np.testing.assert_array_equal(served.matched_rows(item.question, item.options), [2, 1, 0])
    f = served.features(item)
    np.testing.assert_allclose(f[:, EMB + 1 :], prior.features(np.array([2, 1, 0]))[:, 1:], rtol=1e-6)


def test_a_rewording_borrows_its_known_questions_prior_when_a_matcher_and_encoder_are_there(tmp_path):
    """A checkpoint with a matcher: with a question encoder attached, a question outside the bank whose vector is
    near a known one (as many options) gets that question's prior features (flagged TEXT_FLAG), option by option;
    without an encoder, or far from every known question, or with another option count, it stays new."""
    from service.gpo.features import TEXT_FLAG
    from service.gpo.matching import QuestionMatcher, match_text

    spec = FeatureSpec(emb_dim=EMB, use_embedding=True, use_prior=True, prior_rank=RANK)
    cfg = GPOConfig(dim_x=spec.dim_x, d_model=16, n_layers=1, n_heads=2, d_ff=16, prior_feature=EMB, prior_rank=RANK)
    prior = PopulationPrior(np.array([0.6, 0.3, 0.1], np.float32), np.random.rand(3, RANK).astype(np.float32))
    bank = PriorBank(prior, {question_key(KNOWN_Q, KNOWN_OPTS): (0, 3)})
    matcher = QuestionMatcher(np.array([[1.0, 0.0]], np.float32), np.array([0]), np.array([3]), threshold=0.9)
    meta = {"features": spec.to_dict(), "embedder": {"key_prefix": "lm@r|mean|gpo-mc-v1", "dim": EMB}}
    save_checkpoint(Checkpoint(GPO(cfg), meta, bank, extra=matcher.to_checkpoint()), tmp_path, "matchy")
    served = Predictor.from_store(tmp_path, "matchy")
    assert served.matcher is not None and served.matcher.threshold == 0.9
    rng = np.random.default_rng(5)
    reworded = _item(rng, "Would you say the sky is blue?", ["It is", "It isn't", "Not sure"])
    np.testing.assert_array_equal(served.features(reworded)[:, EMB:], 0.0)  # no encoder attached: new
    assert served.prior_basis(reworded.question, reworded.options).source == "none"  # and no text prior either
    vectors = {
        match_text(reworded.question, reworded.options): np.array([0.95, np.sqrt(1 - 0.95**2)], np.float32),
        match_text("Is grass green?", ["Yes", "No", "Unsure"]): np.array([0.0, 1.0], np.float32),
        match_text("Would you say the sky is blue?", ["It is", "It isn't"]): np.array([1.0, 0.0], np.float32),
    }
    asked = []
    served.use_question_encoder(lambda text: asked.append(text) or vectors[text])
    f = served.features(reworded)
    np.testing.assert_allclose(f[:, EMB + 1 :], prior.features(np.arange(3))[:, 1:], rtol=1e-6)
    np.testing.assert_allclose(f[:, EMB], TEXT_FLAG)  # an estimate: weighs as a text estimate in a context
    np.testing.assert_allclose(f[:, :EMB], reworded.embeddings)  # its own embedding stays
    np.testing.assert_array_equal(served.features(_item(rng, "Is grass green?", ["Yes", "No", "Unsure"]))[:, EMB:], 0.0)
    two = _item(rng, "Would you say the sky is blue?", ["It is", "It isn't"])
    np.testing.assert_array_equal(served.features(two)[:, EMB:], 0.0)  # 2 options: no known question has 2
    basis = served.prior_basis(reworded.question, reworded.options)
    assert (basis.source, basis.similarity, basis.share) == ("reworded", pytest.approx(0.95, abs=1e-6), None)
    assert served.prior_basis(two.question, two.options) == PriorBasis("none")  # no similarity: nothing to compare
    far = served.prior_basis("Is grass green?", ["Yes", "No", "Unsure"])
    assert (far.source, far.similarity) == ("none", pytest.approx(0.0, abs=1e-6))
    served.features(_item(rng, KNOWN_Q, KNOWN_OPTS))
    assert match_text(KNOWN_Q, KNOWN_OPTS) not in asked  # an exact match needs no encoder
    served.features(reworded)  # asked again: its match is remembered, the encoder is not called
    assert asked.count(match_text(reworded.question, reworded.options)) == 1
    served.use_question_encoder(lambda text: vectors[match_text("Is grass green?", ["Yes", "No", "Unsure"])])
    np.testing.assert_array_equal(served.features(reworded)[:, EMB:], 0.0)  # a new encoder: matches forgotten


@pytest.mark.parametrize("lam_loadings", [None, 0.2], ids=["one share", "split shares"])
def test_a_new_question_leans_on_its_nearest_known_questions_when_the_matcher_borrows_softly(tmp_path, lam_loadings):
    """A checkpoint whose matcher has a BlendRule (and no threshold): a new question's text features are blended
    with its nearest bank questions' priors by the rule, as evaluation computes them
    (QuestionMatcher.blended_features), and the result round-trips through the saved checkpoint; with split shares
    the loadings take their own."""
    from service.gpo.features import TEXT_FLAG, TextPrior
    from service.gpo.matching import BlendRule, QuestionMatcher, match_text

    rng = np.random.default_rng(4)
    text = TextPrior.fit(rng.standard_normal((40, EMB)), np.repeat(np.arange(10), 4), rng.standard_normal((40, 3)), 1.0)
    spec = FeatureSpec(emb_dim=EMB, use_embedding=True, use_prior=True, prior_rank=RANK)
    cfg = GPOConfig(dim_x=spec.dim_x, d_model=16, n_layers=1, n_heads=2, d_ff=16, prior_feature=EMB, prior_rank=RANK)
    prior = PopulationPrior(rng.dirichlet(np.ones(3), size=2).reshape(-1).astype(np.float32), rng.random((6, RANK)))
    other_q, other_opts = "Is the sea blue?", ["Yes", "No", "Unsure"]
    bank = PriorBank(prior, {question_key(KNOWN_Q, KNOWN_OPTS): (0, 3), question_key(other_q, other_opts): (3, 3)})
    rule = BlendRule(k=2, beta=10.0, lam=0.8, lam_loadings=lam_loadings)
    vectors = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    matcher = QuestionMatcher(vectors, np.array([0, 3]), np.array([3, 3]), float("inf"), None, rule)
    meta = {"features": spec.to_dict(), "embedder": {"key_prefix": "lm@r|mean|gpo-mc-v1", "dim": EMB}}
    extra = text.to_checkpoint() | matcher.to_checkpoint()
    save_checkpoint(Checkpoint(GPO(cfg), meta, bank, extra=extra), tmp_path, "soft")
    served = Predictor.from_store(tmp_path, "soft")
    assert served.matcher is not None and served.matcher.blend == rule
    new = _item(rng, "Would you say the sky is blue?", ["It is", "It isn't", "Not sure"])
    alone = served.features(new)  # no encoder attached: the text prior alone
    np.testing.assert_allclose(alone[:, EMB:], text.question_features(new.embeddings), rtol=1e-5, atol=1e-6)
    question = np.array([0.8, 0.6], np.float32)
    served.use_question_encoder(lambda t: question if t == match_text(new.question, new.options) else None)
    f = served.features(new)
    want = matcher.blended_features(prior, text.question_features(new.embeddings), question, None)
    np.testing.assert_allclose(f[:, EMB:], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f[:, EMB], TEXT_FLAG)
    assert not np.allclose(f[:, EMB + 1 :], alone[:, EMB + 1 :])  # the neighbours moved it
    basis = served.prior_basis(new.question, new.options)  # nearest: [0.6, 0.8] . [0.8, 0.6] = 0.96
    assert (basis.source, basis.similarity) == ("borrowed", pytest.approx(0.96, abs=1e-6))
    assert basis.share == pytest.approx(rule.share(0.96, loadings=True)) and basis.share > 0
    assert served.prior_basis(KNOWN_Q, KNOWN_OPTS).source == "known"
    assert f[:, EMB + 1].sum() == pytest.approx(1.0, abs=1e-5)  # still a distribution's means
    np.testing.assert_allclose(
        served.features(_item(rng, KNOWN_Q, KNOWN_OPTS))[:, EMB + 1 :], prior.features(np.arange(3))[:, 1:], rtol=1e-6
    )
