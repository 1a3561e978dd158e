"""ContextCache: encoded contexts by (checkpoint, embedder, group row, version), local LRU in bytes + Redis."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis
import torch

from service.cache import RedisVectorCache
from service.serving.context_cache import ContextCache, StateKey

from .test_predictor import _random_group, predictor  # noqa: F401 - the fixture

REDIS_URL = "redis://127.0.0.1:6379/0"


def _key(row: int, version: int, model: str = "toy/v0001") -> StateKey:
    return StateKey(model, "lm@r|mean|gpo-mc-v1", row, version)


def test_key_names_checkpoint_embedder_group_and_version() -> None:
    keys = {str(_key(1, 1)), str(_key(1, 2)), str(_key(2, 1)), str(_key(1, 1, "toy/v0002"))}
    keys.add(str(StateKey("toy/v0001", "other@r|mean|gpo-mc-v1", 1, 1)))
    assert len(keys) == 5


def test_local_lru_is_bounded_in_bytes(predictor) -> None:  # noqa: F811
    rng = np.random.default_rng(0)
    state = predictor.encode(_random_group(rng, 10, 1)[0])
    size = (state.keys.numel() + state.values.numel() + state.z.numel()) * 4
    cache = ContextCache(predictor, max_bytes=int(size * 2.5))
    for v in range(4):
        cache.put(_key(1, v), state)
    assert cache.stats["entries"] == 2 and cache.stats["bytes"] <= cache.max_bytes
    assert cache.get(_key(1, 0)) == (None, "miss")
    assert cache.get(_key(1, 3))[1] == "local"
    assert cache.forget_group(1) == 2 and cache.stats["entries"] == 0


def test_off_when_zero_bytes_and_no_shared_cache(predictor) -> None:  # noqa: F811
    cache = ContextCache(predictor, max_bytes=0)
    assert not cache.enabled
    cache.put(_key(1, 1), predictor.encode(_random_group(np.random.default_rng(1), 3, 1)[0]))
    assert cache.get(_key(1, 1)) == (None, "miss")


@pytest.fixture
def shared():
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        pytest.skip("no Redis")
    prefix = f"gpo-ctx-test-{uuid.uuid4().hex[:8]}:"
    cache = RedisVectorCache(REDIS_URL, prefix, ttl_s=60)
    yield cache
    raw = redis.Redis.from_url(REDIS_URL)
    keys = list(raw.scan_iter(match=prefix + "*"))
    if keys:
        raw.unlink(*keys)
    raw.close()
    cache.close()


def test_another_replica_reads_the_state_from_redis(predictor, shared) -> None:  # noqa: F811
    rng = np.random.default_rng(2)
    ctx, tgt = _random_group(rng, 8, 2)
    state = predictor.encode(ctx)
    ContextCache(predictor, 2**20, shared).put(_key(5, 3), state)
    other = ContextCache(predictor, 2**20, shared)  # a second replica: empty local LRU
    found, where = other.get(_key(5, 3))
    assert where == "shared" and found is not None
    assert other.get(_key(5, 3))[1] == "local"  # kept locally afterwards
    assert other.get(_key(5, 4)) == (None, "miss")
    a, b = predictor.predict_encoded([(state, tgt), (found, tgt)])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.distribution, y.distribution, atol=1e-6)


def test_a_foreign_value_under_the_key_is_a_miss(predictor, shared) -> None:  # noqa: F811
    shared.put(str(_key(9, 1)), np.zeros(7, np.float32))
    assert ContextCache(predictor, 2**20, shared).get(_key(9, 1)) == (None, "miss")


def test_states_are_read_only_in_use(predictor) -> None:  # noqa: F811
    """The cached tensors are used as they are by every request: predicting must not change them."""
    rng = np.random.default_rng(3)
    ctx, tgt = _random_group(rng, 5, 2)
    state = predictor.encode(ctx)
    before = state.keys.clone()
    predictor.predict_encoded([(state, tgt), (state, tgt)])
    assert torch.equal(state.keys, before)


def test_a_rating_models_state_goes_through_redis_with_its_own_layout(predictor, shared) -> None:  # noqa: F811
    """The cache is built around the choice model; a rating model's state (with its ridge solution) is written and
    read with the rating model's layout."""
    from pathlib import Path

    from service.serving.predictor import AnsweredItem, Item, Predictor

    rating = Predictor.from_store(Path(__file__).resolve().parents[2] / "model_store", "nytbooks-rating")
    rng = np.random.default_rng(3)
    dim = rating.spec.emb_dim
    ctx = [
        AnsweredItem("Rate:", [f"r{i}"], rng.normal(size=(1, dim)).astype(np.float32), np.array([rng.random()]))
        for i in range(5)
    ]
    tgt = [Item("Rate:", [f"t{i}"], rng.normal(size=(1, dim)).astype(np.float32)) for i in range(3)]
    state = rating.encode(ctx)
    assert state.z is not None
    key = _key(11, 1, rating.model_version)
    ContextCache(predictor, 2**20, shared).put(key, state, rating)
    found, where = ContextCache(predictor, 2**20, shared).get(key, rating)  # another replica
    assert where == "shared" and found is not None
    a, b = rating.predict_encoded([(state, tgt), (found, tgt)])
    full = rating.predict(ctx, tgt)
    for x, y, z in zip(a, b, full, strict=True):
        np.testing.assert_allclose(x.distribution, y.distribution, atol=1e-6)
        np.testing.assert_allclose(y.distribution, z.distribution, atol=1e-5)
