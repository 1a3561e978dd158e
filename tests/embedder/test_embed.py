"""Embedder on the tiny LM: shapes, determinism, batch invariance, and a cache that needs no model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.config import Settings
from service.embedder.embed import (
    Embedder,
    EmbeddingCache,
    build_embedder,
    embed_with_cache,
    last_hidden_state,
)
from service.embedder.loading import BaseLM, LMIdentity
from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION, TEMPLATE_VERSION, format_items

TEXTS = [
    *format_items("Is crime a problem where you live?", ["A major problem", "A minor problem", "Not a problem"]),
    "hi",
    "A much longer text that needs padding when it shares a batch with the short ones. " * 3,
    "Write a haiku about autumn.\nAnswer: Leaves fall",
]


def no_model() -> BaseLM:
    raise AssertionError("the model must not be loaded: every text is cached")


def test_shape_dtype_and_dim(tiny_lm: BaseLM) -> None:
    emb = Embedder(tiny_lm, batch_size=4)
    out = emb.embed(TEXTS)
    assert out.shape == (len(TEXTS), 64)
    assert out.dtype == np.float32
    assert emb.dim == 64
    assert np.isfinite(out).all()
    assert Embedder(tiny_lm, pooling="mean_last").embed(TEXTS[:2]).shape == (2, 128)
    assert emb.embed([]).shape == (0, 64)


def test_vectors_are_the_mean_of_the_last_hidden_states(tiny_lm: BaseLM) -> None:
    text = TEXTS[0]
    ids = tiny_lm.tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        hidden = tiny_lm.model(**ids, output_hidden_states=True).hidden_states[-1]  # [1, T, 64]
        base = last_hidden_state(tiny_lm, ids["input_ids"], ids["attention_mask"])
    torch.testing.assert_close(base, hidden)
    expected = hidden[0].mean(dim=0).numpy()
    np.testing.assert_allclose(Embedder(tiny_lm).embed([text])[0], expected, atol=1e-6)
    last = Embedder(tiny_lm, pooling="last").embed([text])[0]
    np.testing.assert_allclose(last, hidden[0, -1].numpy(), atol=1e-6)


def test_deterministic_and_order_preserving(tiny_lm: BaseLM) -> None:
    emb = Embedder(tiny_lm, batch_size=3)
    a = emb.embed(TEXTS)
    b = emb.embed(TEXTS)
    assert np.array_equal(a, b)
    perm = [4, 0, 5, 2, 1, 3]
    np.testing.assert_allclose(emb.embed([TEXTS[i] for i in perm]), a[perm], atol=1e-5)
    # Different texts give different vectors (the random tiny model still separates them).
    assert len({row.tobytes() for row in a}) == len(TEXTS)


@pytest.mark.parametrize("pooling", ["mean", "last", "mean_last"])
def test_batch_size_invariance(tiny_lm: BaseLM, pooling: str) -> None:
    ref = Embedder(tiny_lm, pooling=pooling, batch_size=1).embed(TEXTS)
    for batch_size in (2, 4, 16):
        out = Embedder(tiny_lm, pooling=pooling, batch_size=batch_size).embed(TEXTS)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_key_prefix_names_weights_pooling_and_template(tiny_lm: BaseLM) -> None:
    emb = Embedder(tiny_lm, pooling="last", template_version=RESPONSE_TEMPLATE_VERSION)
    assert emb.key_prefix == f"{tiny_lm.model_id}@{tiny_lm.revision}|last|{RESPONSE_TEMPLATE_VERSION}"
    assert Embedder(tiny_lm).key_prefix.endswith(f"|mean|{TEMPLATE_VERSION}")
    assert Embedder(tiny_lm, max_length=32).key_prefix.endswith("|max32")


def test_cache_hit_is_identical_and_loads_no_model(tiny_lm: BaseLM, tmp_path: Path) -> None:
    cache = EmbeddingCache.in_cache_dir(tmp_path)
    first = Embedder(tiny_lm, batch_size=4, cache=cache)
    vecs = first.embed(TEXTS)
    assert first.n_forward_batches == 2
    assert len(cache) == len(TEXTS)
    assert (tmp_path / "embeddings" / EmbeddingCache.FILENAME).is_file()

    # A fresh process would build the Embedder from a factory: a fully cached call never calls it.
    again = EmbeddingCache.in_cache_dir(tmp_path)
    lazy = Embedder(no_model, identity=tiny_lm.identity, cache=again)
    out = lazy.embed(list(reversed(TEXTS)))
    assert np.array_equal(out, vecs[::-1])
    assert not lazy.is_loaded
    assert lazy.dim == 64  # known from the folder's config.json, still without loading


def test_partial_miss_computes_only_the_missing_texts(tiny_lm: BaseLM, tmp_path: Path) -> None:
    cache = EmbeddingCache.in_cache_dir(tmp_path)
    Embedder(tiny_lm, cache=cache).embed(TEXTS[:3])
    calls: list[int] = []

    def factory() -> BaseLM:
        calls.append(1)
        return tiny_lm

    lazy = Embedder(factory, identity=tiny_lm.identity, cache=cache, batch_size=16)
    out = lazy.embed(TEXTS + [TEXTS[4]])  # a repeated text is computed once
    assert calls == [1]
    assert lazy.n_forward_batches == 1
    np.testing.assert_allclose(out[:-1], Embedder(tiny_lm).embed(TEXTS), atol=1e-5)
    assert np.array_equal(out[-1], out[4])
    assert len(cache) == len(TEXTS)


def test_cache_keys_separate_pooling_and_templates(tiny_lm: BaseLM, tmp_path: Path) -> None:
    cache = EmbeddingCache.in_cache_dir(tmp_path)
    Embedder(tiny_lm, cache=cache).embed(TEXTS[:2])
    other = Embedder(tiny_lm, cache=cache, template_version="gpo-mc-v2")
    other.embed(TEXTS[:2])
    assert other.n_forward_batches == 1  # a new template version is a miss
    assert len(cache) == 4


def test_factory_with_other_weights_is_refused(tiny_lm: BaseLM) -> None:
    lazy = Embedder(lambda: tiny_lm, identity=LMIdentity("someone-else", "r1"))
    with pytest.raises(ValueError, match="wrong weights"):
        lazy.embed(["x"])
    with pytest.raises(ValueError, match="identity"):
        Embedder(lambda: tiny_lm)


def test_embed_with_cache_function(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    seen: list[list[str]] = []

    def compute(texts: list[str], commit) -> None:
        seen.append(texts)
        commit(range(len(texts)), np.array([[len(t), 1.0] for t in texts], dtype=np.float32))

    out = embed_with_cache(["ab", "c", "ab"], "p", cache, compute)
    assert seen == [["ab", "c"]]
    assert out.tolist() == [[2.0, 1.0], [1.0, 1.0], [2.0, 1.0]]
    out = embed_with_cache(["c", "ab"], "p", cache, compute)
    assert seen == [["ab", "c"]]
    assert out.tolist() == [[1.0, 1.0], [2.0, 1.0]]
    embed_with_cache(["c"], "q", cache, compute)  # another prefix, another key
    assert seen[-1] == ["c"]


def test_each_batch_is_in_the_cache_as_soon_as_it_is_committed(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    sizes: list[int] = []

    def compute(texts: list[str], commit) -> None:
        for i in range(len(texts)):  # one text per batch, last first
            j = len(texts) - 1 - i
            commit([j], np.array([[float(len(texts[j]))]], dtype=np.float32))
            sizes.append(len(cache))  # committed before the next batch starts

    out = embed_with_cache(["a", "bb", "ccc"], "p", cache, compute, on_batch=lambda done, n: None)
    assert sizes == [1, 2, 3]
    assert out[:, 0].tolist() == [1.0, 2.0, 3.0]


class Interrupted(KeyboardInterrupt):
    pass


def test_an_interrupted_embedding_keeps_its_batches_and_a_rerun_embeds_only_the_rest(
    tiny_lm_path: Path, tiny_lm: BaseLM, tmp_path: Path
) -> None:
    texts = [f"question {i}: " + "word " * i for i in range(12)]
    settings = Settings(embedder=str(tiny_lm_path), device="cpu", cache_dir=tmp_path, embed_batch_size=3)
    done_at: list[int] = []

    def stop_after_two_batches(done: int, n_missing: int) -> None:
        done_at.append(done)
        if len(done_at) == 2:
            raise Interrupted  # as Ctrl-C between two batches

    first = build_embedder(settings)
    with pytest.raises(Interrupted):
        first.embed(texts, on_batch=stop_after_two_batches)
    assert done_at == [3, 6] and first.n_texts_embedded == 6
    truth = Embedder(tiny_lm, batch_size=3).embed(texts)  # no cache
    cache = EmbeddingCache.in_cache_dir(tmp_path)
    assert len(cache) == 6
    stored = cache.get_many([EmbeddingCache.key(first.key_prefix, t) for t in texts])
    kept = [i for i, v in enumerate(stored) if v is not None]
    assert len(kept) == 6
    np.testing.assert_allclose(np.stack([stored[i] for i in kept]), truth[kept], atol=1e-5)

    again = build_embedder(settings)  # a new run (a new process would see the same file)
    out = again.embed(texts)
    assert again.n_texts_embedded == 6  # only what the first run did not finish
    np.testing.assert_allclose(out, truth, atol=1e-5)
    assert len(cache) == 12
    third = build_embedder(settings)
    third.embed(texts)
    assert third.n_texts_embedded == 0 and not third.is_loaded


def test_cache_get_put_roundtrip(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path) as cache:
        keys = [EmbeddingCache.key("p", t) for t in ("a", "b")]
        assert cache.get_many(keys) == [None, None]
        vecs = np.array([[1.5, -2.0, 3.0], [0.0, 1e-8, 7.0]], dtype=np.float32)
        cache.put_many(keys, vecs)
        got = cache.get_many([keys[1], "missing", keys[0]])
        assert np.array_equal(got[0], vecs[1]) and got[1] is None and np.array_equal(got[2], vecs[0])
        cache.put_many(keys[:1], vecs[1:])  # replace
        assert np.array_equal(cache.get_many(keys[:1])[0], vecs[1])
        assert len(cache) == 2
    assert EmbeddingCache.key("p", "a") != EmbeddingCache.key("pa", "")  # the separator matters


def test_build_embedder_is_lazy(tiny_lm_path: Path, tmp_path: Path) -> None:
    settings = Settings(embedder=str(tiny_lm_path), device="cpu", cache_dir=tmp_path, embed_batch_size=2)
    emb = build_embedder(settings)
    assert not emb.is_loaded
    assert emb.cache is not None and emb.cache.directory == tmp_path / "embeddings"
    out = emb.embed(TEXTS[:3])
    assert emb.is_loaded and out.shape == (3, 64)
    assert np.array_equal(build_embedder(settings).embed(TEXTS[:3]), out)
