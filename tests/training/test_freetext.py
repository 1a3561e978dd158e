"""The free-text protocol of /generate (service.training.freetext)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.embedder.generate import chat_prompt_ids
from service.embedder.loading import BaseLM
from service.training.datasets import PreferenceDataset, Question
from service.training.freetext import (
    SHIPPED_FIRST_PERSON,
    SUFFIX,
    generate_vectors,
    load_first_person,
    pick_summary,
    population_top,
    top_picks,
)


def small_dataset() -> PreferenceDataset:
    qs = [Question("a", "Is A good?", ("Yes", "No", "Unsure"), (1, 2, 3)), Question("b", "B?", ("x", "y"), (1, 2))]
    dists = {
        "p1": {"a": np.array([0.6, 0.3, 0.1]), "b": np.array([0.7, 0.3])},
        "p2": {"a": np.array([0.5, 0.4, 0.1]), "b": np.array([0.6, 0.4])},
        "g1": {"a": np.array([0.2, 0.7, 0.1]), "b": np.array([0.5, 0.5])},  # disagrees on a; ties on b
        "g2": {"a": np.array([0.7, 0.2, 0.1])},  # agrees on a
        "g3": {"a": np.array([0.1, 0.3, 0.6])},
    }
    return PreferenceDataset(questions=qs, groups=list(dists), dists=dists)


def test_load_first_person_keeps_the_question_and_refuses_another_count(tmp_path: Path):
    ds = small_dataset()
    path = tmp_path / "f.jsonl"
    rows = [
        {"qid": "a", "text": "Is A good?", "responses": ["I think A is good.", "I think A is bad.", "I'm not sure."]}
    ]
    rows.append({"qid": "elsewhere", "text": "?", "responses": ["I do."]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ((qid, q),) = load_first_person(path, ds)
    assert qid == "a" and q.qid == "a" + SUFFIX and q.text == "Is A good?" and q.options[1] == "I think A is bad."
    assert q.ordinals == (1, 2, 3)
    rows[0]["responses"] = ["Only one."]
    path.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="3 options, 1 responses"):
        load_first_person(path, ds)


def test_the_shipped_first_person_responses_fit_the_shipped_opinionqa(opinionqa):
    pairs = load_first_person(SHIPPED_FIRST_PERSON, opinionqa)
    assert len(pairs) >= 300 and len({qid for qid, _ in pairs}) == len(pairs)
    for qid, q in pairs:
        assert len(set(q.options)) == q.n_options  # distinct sentences
        assert not set(q.options) & set(opinionqa.question(qid).options)  # rewritten, not copied


def test_top_picks_count_only_disagreements_and_name_the_outcome():
    ds = small_dataset()
    assert population_top(ds, ["p1", "p2"], "a") == 0 and population_top(ds, ["g1"], "a") == 1
    assert population_top(ds, ["g2"], "b") is None
    preds = {
        "g1": {"a": np.array([0.1, 0.8, 0.1]), "b": np.array([0.9, 0.1])},  # a: the group's answer; b: a tie, skipped
        "g2": {"a": np.array([0.1, 0.8, 0.1])},  # agrees with the population: not counted
        "g3": {"a": np.array([0.8, 0.1, 0.1])},  # the population's answer
    }
    rows = top_picks(ds, ["p1", "p2"], preds, {"a": "a", "b": "b"})
    assert [(r["group"], r["outcome"]) for r in rows] == [("g1", "group"), ("g3", "population")]
    preds["g3"]["a"] = np.array([0.1, 0.8, 0.1])
    assert top_picks(ds, ["p1", "p2"], preds, {"a": "a", "b": "b"})[1]["outcome"] == "other"


def test_pick_summary_shares_and_an_interval_over_questions():
    rows = [{"qid": f"q{i}", "outcome": "group"} for i in range(30)] + [{"qid": "q0", "outcome": "population"}]
    s = pick_summary(rows, n_boot=500)
    assert s["n"] == 31 and s["n_questions"] == 30 and s["share_group"] == round(30 / 31, 4)
    assert 0.6 < s["ci95"][0] <= s["group_minus_population"] <= s["ci95"][1] <= 1.0, s
    even = [{"qid": f"q{i}", "outcome": "group" if i % 2 else "population"} for i in range(40)]
    lo, hi = pick_summary(even, n_boot=500)["ci95"]
    assert lo < 0 < hi
    assert pick_summary([]) == {"n": 0}


def test_generate_vectors_are_the_vectors_pooled_while_sampling(tiny_lm: BaseLM):
    """A response as /generate read it while sampling, scored offline from its text, gets the vector the sampling
    pass pooled (where the text re-tokenises to the same ids)."""
    from service.embedder.generate import generate_batch

    prompt = "Tell me about the sea."
    ids_in = chat_prompt_ids(tiny_lm, prompt, None)
    torch.manual_seed(5)
    kwargs = dict(
        max_new_tokens=12,
        pad_token_id=tiny_lm.tokenizer.pad_token_id,
        do_sample=True,
        temperature=1.0,
        num_return_sequences=4,
    )
    with torch.inference_mode():
        _, ids, vectors = generate_batch(tiny_lm, ids_in, torch.ones_like(ids_in), kwargs, "mean")
    tok = tiny_lm.tokenizer
    compared = 0
    for row, v in zip(ids, vectors, strict=True):
        read = row[: min(len(row), 11)]  # the 12th sampled token is never read
        text = tok.decode(read, skip_special_tokens=True)
        if tok(text.strip(), add_special_tokens=False)["input_ids"] != read:
            continue
        np.testing.assert_allclose(generate_vectors(tiny_lm, prompt, [text])[0], v, atol=2e-4)
        compared += 1
    assert compared >= 1
