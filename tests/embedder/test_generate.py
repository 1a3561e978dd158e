"""Sampling and option-letter probabilities on the tiny LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.embedder.generate import (
    option_letter_probs,
    option_letter_token_ids,
    sample_responses,
    sample_responses_many,
)
from service.embedder.loading import BaseLM
from service.embedder.prompts import format_question_prompt


def test_samples_are_distinct_and_seeded(tiny_lm: BaseLM) -> None:
    state = torch.get_rng_state()
    a = sample_responses(tiny_lm, "Tell me about autumn.", n=4, max_new_tokens=12, temperature=1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    b = sample_responses(tiny_lm, "Tell me about autumn.", n=4, max_new_tokens=12, temperature=1.0, seed=7)
    c = sample_responses(tiny_lm, "Tell me about autumn.", n=4, max_new_tokens=12, temperature=1.0, seed=8)
    assert len(a) == 4 and all(isinstance(s, str) for s in a)
    assert a == b
    assert a != c
    assert len(set(a)) >= 3


def test_greedy_and_plain_prompt(tiny_lm: BaseLM) -> None:
    greedy = sample_responses(tiny_lm, "Hello", n=2, max_new_tokens=5, temperature=0.0, seed=None)
    assert greedy[0] == greedy[1]
    raw = sample_responses(tiny_lm, "Hello", n=1, max_new_tokens=5, temperature=0.0, seed=None, use_chat_template=False)
    assert len(raw) == 1
    with pytest.raises(ValueError):
        sample_responses(tiny_lm, "Hello", n=0, max_new_tokens=5, temperature=1.0, seed=0)


def test_option_letter_probs_sum_to_one_and_ignore_batching(tiny_lm: BaseLM) -> None:
    prompts = [
        format_question_prompt("Is it good?", ["Yes", "No"]),
        format_question_prompt("How likely is a much longer question to be answered?", ["Very", "Some", "Not"]),
        format_question_prompt("Pick one", ["a", "b", "c", "d", "e"]),
    ]
    n_options = [2, 3, 5]
    batched = option_letter_probs(tiny_lm, prompts, n_options, batch_size=3)
    assert [p.shape for p in batched] == [(2,), (3,), (5,)]
    for p in batched:
        assert np.all(p >= 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-9)
    # Left padding with explicit positions: each prompt scores as it would alone.
    alone = [option_letter_probs(tiny_lm, [q], [k])[0] for q, k in zip(prompts, n_options, strict=True)]
    for x, y in zip(batched, alone, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_option_letter_token_ids(tiny_lm: BaseLM) -> None:
    ids = option_letter_token_ids(tiny_lm, 3)
    assert len(ids) == 3
    assert all(len(v) >= 1 for v in ids)
    assert not set(ids[0]) & set(ids[1])
    assert option_letter_probs(tiny_lm, [], []) == []
    with pytest.raises(ValueError):
        option_letter_probs(tiny_lm, ["x"], [2, 3])


def _standalone_pooled(lm: BaseLM, prompt: str, response_ids: list[int], pooling: str) -> np.ndarray:
    """One forward over the chat prompt ids + the response ids the model read, pooled (no padding)."""
    from service.embedder.embed import last_hidden_state
    from service.embedder.generate import chat_prompt_ids
    from service.embedder.pooling import pool

    ids = torch.cat([chat_prompt_ids(lm, prompt, None)[0], torch.tensor(response_ids, dtype=torch.long)])[None]
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        return pool(last_hidden_state(lm, ids, mask).float(), mask, pooling)[0].numpy()


@pytest.mark.parametrize("pooling", ["mean", "last", "mean_last"])
def test_vectors_pooled_in_the_sampling_pass_equal_a_forward_over_what_was_read(tiny_lm: BaseLM, pooling) -> None:
    from service.embedder.generate import chat_prompt_ids, end_token_ids, generate_batch

    prompt = "Tell me about the sea."
    texts, vectors = sample_responses(tiny_lm, prompt, n=3, max_new_tokens=12, temperature=1.0, seed=5, pooling=pooling)
    assert vectors.shape[0] == 3 and texts == sample_responses(tiny_lm, prompt, 3, 12, 1.0, 5)
    # the same draw, with the token ids: each row's vector is the pooled forward over prompt + what was read
    ids_in = chat_prompt_ids(tiny_lm, prompt, None)
    torch.manual_seed(5)
    with torch.inference_mode():
        kwargs = dict(
            max_new_tokens=12,
            pad_token_id=tiny_lm.tokenizer.pad_token_id,
            do_sample=True,
            temperature=1.0,
            num_return_sequences=3,
        )
        _, ids, again = generate_batch(tiny_lm, ids_in, torch.ones_like(ids_in), kwargs, pooling)
    np.testing.assert_allclose(again, vectors, atol=1e-5)
    assert not end_token_ids(tiny_lm) & {t for row in ids for t in row}
    for row, v in zip(ids, vectors, strict=True):
        read = row[: min(len(row), 11)]  # the 12th sampled token is never read
        np.testing.assert_allclose(v, _standalone_pooled(tiny_lm, prompt, read, pooling), atol=2e-4)


def test_batched_prompts_with_vectors(tiny_lm: BaseLM) -> None:
    from service.embedder.generate import sample_responses_many

    out = sample_responses_many(tiny_lm, ["Hi.", "A much longer prompt about rivers."], [2, 3], 8, 0.9, pooling="mean")
    assert [len(t) for t, _ in out] == [2, 3] and [v.shape[0] for _, v in out] == [2, 3]
    assert all(np.isfinite(v).all() for _, v in out)


def test_a_vanishing_temperature_is_greedy(tiny_lm: BaseLM) -> None:
    """1.7e-285 is 0 in float32: dividing the logits by it gave NaN probabilities and a 500 (found by schemathesis)."""
    greedy = sample_responses(tiny_lm, "Hello", n=2, max_new_tokens=5, temperature=0.0, seed=None)
    assert sample_responses(tiny_lm, "Hello", n=2, max_new_tokens=5, temperature=1.7e-285, seed=None) == greedy
    assert sample_responses(tiny_lm, "Hello", n=2, max_new_tokens=5, temperature=5e-5, seed=3) == greedy
    with pytest.raises(ValueError, match="greedy requests run alone"):
        sample_responses_many(tiny_lm, ["Hello"], [2], max_new_tokens=5, temperature=1e-9)
