"""The checkpoints shipped in model_store/ load, are of the kind they are served as, match the bundled embedder,
and predict: what `gpo serve` with the documented settings starts from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.serving.predictor import AnsweredItem, Item, Predictor

STORE = Path(__file__).resolve().parents[2] / "model_store"
SHIPPED = {"opinionqa-gpo": "choice", "nytbooks-rating": "rating", "nytbooks-comparison": "comparison"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_checkpoint_loads_and_is_its_kind(name: str) -> None:
    predictor = Predictor.from_store(STORE, name)
    assert predictor.kind == SHIPPED[name]
    meta = predictor.embedder_meta
    assert meta["name"] == "smollm2" and meta["pooling"] == "mean" and meta["dim"] == predictor.spec.emb_dim
    assert meta["key_prefix"].startswith("smollm2-135m-instruct")


def test_the_shipped_rating_model_scores_new_responses_from_their_text() -> None:
    """A response nobody rated gets the stored reward model's score as its prior mean, and a rating context moves
    the predictions towards the person."""
    predictor = Predictor.from_store(STORE, "nytbooks-rating")
    assert predictor.reward is not None and predictor.content is not None
    rng = np.random.default_rng(0)
    dim = predictor.spec.emb_dim
    a, b = rng.normal(size=(1, dim)).astype(np.float32), rng.normal(size=(1, dim)).astype(np.float32)
    mu, sd, w, bias = predictor.reward.mu, predictor.reward.sd, predictor.reward.w, predictor.reward.b
    for emb in (a, b):
        f = predictor.features(Item("Rate it.", ["a response nobody rated"], emb))
        assert f[0, predictor.spec.prior_slice.start + 1] == pytest.approx(float(((emb[0] - mu) / sd) @ w + bias))
    likes_a = [AnsweredItem("Rate it.", ["liked"], a + 0.1, np.array([1.0], dtype=np.float32))]
    likes_b = [AnsweredItem("Rate it.", ["liked"], b + 0.1, np.array([1.0], dtype=np.float32))]
    targets = [Item("Rate it.", ["first"], a), Item("Rate it.", ["second"], b)]
    for_a = [p.distribution[0] for p in predictor.predict(likes_a, targets)]
    for_b = [p.distribution[0] for p in predictor.predict(likes_b, targets)]
    assert for_a[0] - for_a[1] > for_b[0] - for_b[1]  # liking something like a ranks a higher


def test_the_shipped_comparison_model_moves_with_its_context() -> None:
    """The shipped comparison model has the pair readout: a group that preferred responses like a over responses
    like b puts a higher over b than the opposite group does (the previous version answered both the same)."""
    predictor = Predictor.from_store(STORE, "nytbooks-comparison")
    cfg = predictor.model.cfg
    assert cfg.comparison_head == "score" and cfg.prior_readout == "ridge"
    rng = np.random.default_rng(1)
    dim = predictor.spec.emb_dim
    a, b = rng.normal(size=(1, dim)).astype(np.float32), rng.normal(size=(1, dim)).astype(np.float32)

    def context(prefers_a: bool) -> list[AnsweredItem]:
        items = []
        for j in range(5):
            ea = a + 0.3 * rng.normal(size=(1, dim)).astype(np.float32)
            eb = b + 0.3 * rng.normal(size=(1, dim)).astype(np.float32)
            p = np.array([1.0, 0.0] if prefers_a else [0.0, 1.0], dtype=np.float32)
            items.append(AnsweredItem("Read it?", [f"a{j}", f"b{j}"], np.concatenate([ea, eb]), p))
        return items

    target = [Item("Read it?", ["like a", "like b"], np.concatenate([a, b]))]
    for_a = predictor.predict_pairs(context(True), target)[0]
    for_b = predictor.predict_pairs(context(False), target)[0]
    assert for_a > for_b + 0.05
