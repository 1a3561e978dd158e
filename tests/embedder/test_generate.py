"""Sampling and option-letter probabilities on the tiny LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.embedder.generate import option_letter_probs, option_letter_token_ids, sample_responses
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
    raw = sample_responses(
        tiny_lm, "Hello", n=1, max_new_tokens=5, temperature=0.0, seed=None, use_chat_template=False
    )
    assert len(raw) == 1
    with pytest.raises(ValueError):
        sample_responses(tiny_lm, "Hello", n=0, max_new_tokens=5, temperature=1.0, seed=0)


def test_option_letter_probs_sum_to_one_and_ignore_batching(tiny_lm: BaseLM) -> None:
    prompts = [
        format_question_prompt("Is it good?", ["Yes", "No"]),
        format_question_prompt(
            "How likely is a much longer question to be answered?", ["Very", "Some", "Not"]
        ),
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
