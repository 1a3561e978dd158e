"""The sentence encoder used to compare embedders (service.embedder.sentence), on a tiny BERT built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.embedder.sentence import SentenceEncoder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    words = "the a is of and to in question answer yes no good bad very not at all".split()
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=5 + len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(path)
    return path


def test_vectors_are_unit_mean_pooled_and_do_not_depend_on_the_batch(tiny_bert: Path):
    enc = SentenceEncoder(tiny_bert, batch_size=2)
    texts = ["the question is good", "no", "very bad answer and not at all good", "yes"]
    v = enc.embed(texts)
    assert v.shape == (4, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # one text alone (no padding) gives the same vector as in a padded batch
    np.testing.assert_allclose(SentenceEncoder(tiny_bert, batch_size=8).embed(texts[2:3])[0], v[2], atol=1e-5)
    with torch.inference_mode():
        batch = enc.tokenizer(texts[:1], return_tensors="pt")
        h = enc.model(**batch).last_hidden_state[0].mean(0)
    np.testing.assert_allclose(v[0], (h / h.norm()).numpy(), atol=1e-5)
    assert not np.allclose(v[0], v[1])
    assert enc.embed([]).shape == (0, 32)


def test_the_cached_encoder_remembers_texts_and_names_only_the_bundled_model(tiny_bert: Path):
    from service.embedder.sentence import MINILM_ID, CachedSentenceEncoder, question_encoder

    enc = SentenceEncoder(tiny_bert)
    cached = CachedSentenceEncoder(enc, max_items=2)
    a = cached("yes no")
    assert a is cached("yes no") and not a.flags.writeable
    np.testing.assert_allclose(a, enc.embed(["yes no"])[0], atol=1e-6)
    with pytest.raises(ValueError, match="not available here"):
        question_encoder("someone/else")
    assert MINILM_ID.endswith("all-MiniLM-L6-v2")


def test_the_cached_encoder_embeds_many_texts_in_one_batch_and_remembers_them(tiny_bert: Path):
    from service.embedder.sentence import CachedSentenceEncoder

    enc = SentenceEncoder(tiny_bert)
    calls = []
    real = enc.embed
    enc.embed = lambda texts: calls.append(list(texts)) or real(texts)
    cached = CachedSentenceEncoder(enc, max_items=2)
    v = cached.many(["yes", "no", "yes"])
    assert calls == [["yes", "no"]] and v.shape[0] == 3  # a copy: the remembered vectors stay read-only
    np.testing.assert_allclose(v[0], v[2])
    np.testing.assert_allclose(v[:2], real(["yes", "no"]), atol=1e-5)
    cached.many(["no", "yes"])
    assert len(calls) == 1  # remembered
    cached.many(["maybe"])  # a third text: the oldest ("yes") is forgotten
    cached.many(["yes"])
    assert calls[1:] == [["maybe"], ["yes"]]
