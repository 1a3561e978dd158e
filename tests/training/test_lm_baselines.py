"""LLM baselines: prompts, shared-prefix scoring, batching, the disk cache, and the evaluation subset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from service.embedder.generate import option_letter_probs, option_letter_token_ids
from service.embedder.loading import BaseLM
from service.training import lm_baselines
from service.training.datasets import PreferenceDataset, Question
from service.training.lm_baselines import (
    LM_METHODS,
    LMPredictionCache,
    group_prefix,
    lm_eval_questions,
    lm_prompt,
    predict_lm_many,
    shared_prefix_letter_probs,
    steering_text,
)
from service.training.splits import scorable_question_ids

GROUPS = ["Democrat", "Liberal", "Martians"]


@pytest.fixture(scope="module")
def small() -> PreferenceDataset:
    """Five short ordinal questions (2 to 4 options), three groups; "Martians" has no attribute."""
    texts = ["Is X good?", "How much?", "Crime here?", "Taxes?", "Same?"]
    n_opts = [2, 3, 4, 3, 2]
    questions = [
        Question(
            qid=f"q{i}",
            text=t,
            options=tuple(["Yes", "Some", "No", "Never"][:k]),
            ordinals=tuple(float(j) for j in range(k)) if i < 4 else (1.0, 1.0),  # q4: no ordinal spread
        )
        for i, (t, k) in enumerate(zip(texts, n_opts, strict=True))
    ]
    rng = np.random.default_rng(0)
    dists = {g: {q.qid: rng.dirichlet(np.ones(q.n_options)) for q in questions} for g in GROUPS}
    return PreferenceDataset(
        questions=questions,
        groups=list(GROUPS),
        dists=dists,
        group_attributes={"Democrat": "POLPARTY", "Liberal": "POLIDEOLOGY"},
    )


def _contexts(ds: PreferenceDataset, qids: list[str]) -> list[dict[str, np.ndarray]]:
    return [{q: ds.dist(g, q) for q in qids} for g in GROUPS]


def _plain_letter_probs(lm: BaseLM, prompt: str, k: int) -> np.ndarray:
    """Reference: one unbatched, uncached forward of the whole prompt."""
    ids = lm.tokenizer(prompt, add_special_tokens=True, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = lm.model(input_ids=ids, use_cache=False).logits[0, -1]
    probs = torch.softmax(logits.float(), dim=-1)
    p = np.array([float(probs[li].sum()) for li in option_letter_token_ids(lm, k)])
    return p / p.sum()


# ------------------------------------------------------------------------------------------ prompts


def test_steered_prompts_name_the_group_and_differ_per_style(small: PreferenceDataset) -> None:
    texts = {m: group_prefix(m, small, "Democrat") for m in ("lm_qa", "lm_bio", "lm_portray")}
    assert len(set(texts.values())) == 3
    for text in texts.values():
        assert "Democrat" in text
    assert texts["lm_qa"] == (
        "Question: In politics today, do you consider yourself a Democrat, Republican, Independent or "
        "something else?\nAnswer: Democrat"
    )
    assert texts["lm_bio"].endswith("\nDescription: In politics today, I consider myself a Democrat.")
    assert "short description of your political affiliation" in texts["lm_bio"]
    assert texts["lm_portray"] == (
        "Answer the following question as if in politics today, you considered yourself a Democrat."
    )
    # common nouns are lowered inside sentences, kept as the survey lists them in the QA answer
    assert steering_text("qa", "Liberal", "POLIDEOLOGY").endswith("\nAnswer: Liberal")
    assert "political views as liberal." in steering_text("bio", "Liberal", "POLIDEOLOGY")
    q = small.question("q1")
    full = lm_prompt(texts["lm_qa"], q)
    assert full.startswith(texts["lm_qa"] + "\n\nAnswer the following question") and full.endswith("Answer:")
    assert lm_prompt(group_prefix("lm_base", small, "Democrat"), q) == lm_prompt("", q)


def test_unknown_attribute_gets_the_generic_phrasing(small: PreferenceDataset) -> None:
    assert group_prefix("lm_portray", small, "Martians") == (
        "Answer the following question as if you belong to the group 'Martians'."
    )
    assert group_prefix("lm_bio", small, "Martians").endswith("Description: I belong to the group 'Martians'.")
    assert group_prefix("lm_qa", small, "Martians") == "Question: Which group do you belong to?\nAnswer: Martians"
    assert steering_text("portray", "x", "NOT_AN_ATTRIBUTE") == steering_text("portray", "x", None)


def test_few_shot_block_writes_the_context_distributions(small: PreferenceDataset) -> None:
    context = {"q0": np.array([0.454, 0.546]), "q2": np.array([0.1, 0.2, 0.3, 0.4])}
    block = group_prefix("few_shot", small, "Martians", context)
    assert "Question: Is X good?\nA. Yes\nB. Some\nAnswer distribution: A: 45%, B: 55%" in block
    assert "Answer distribution: A: 10%, B: 20%, C: 30%, D: 40%" in block
    assert block.index("Is X good?") < block.index("Crime here?")  # the context's order
    with pytest.raises(ValueError, match="context"):
        group_prefix("few_shot", small, "Martians", None)
    with pytest.raises(ValueError, match="shape"):
        group_prefix("few_shot", small, "Martians", {"q0": [0.2, 0.3, 0.5]})


def test_unknown_method_raises(tiny_lm: BaseLM, small: PreferenceDataset) -> None:
    with pytest.raises(ValueError, match="unknown LLM baseline 'lm_magic'; known: lm_base"):
        predict_lm_many("lm_magic", tiny_lm, small, GROUPS, None, ["q0"])
    with pytest.raises(ValueError, match="few_shot needs"):
        predict_lm_many("few_shot", tiny_lm, small, GROUPS, None, ["q0"])
    with pytest.raises(ValueError, match="2 contexts for 3 groups"):
        predict_lm_many("lm_qa", tiny_lm, small, GROUPS, [{}, {}], ["q0"])


# ------------------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize("method", LM_METHODS)
def test_distributions_sum_to_one_with_the_right_lengths(
    tiny_lm: BaseLM, small: PreferenceDataset, method: str
) -> None:
    targets = ["q1", "q2", "q3", "q4"]
    preds = predict_lm_many(method, tiny_lm, small, GROUPS, _contexts(small, ["q0"]), targets, batch_size=3)
    assert len(preds) == len(GROUPS)
    for pred in preds:
        assert list(pred) == targets
        for qid, p in pred.items():
            assert p.dtype == np.float64 and p.shape == (small.question(qid).n_options,)
            assert np.all(p >= 0) and p.sum() == pytest.approx(1.0, abs=1e-12)
    same = all(np.array_equal(preds[0][q], pr[q]) for pr in preds[1:] for q in targets)
    assert same == (method == "lm_base")  # only lm_base ignores the group


def test_lm_base_matches_option_letter_probs(tiny_lm: BaseLM, small: PreferenceDataset) -> None:
    qids = [q.qid for q in small.questions]
    pred = predict_lm_many("lm_base", tiny_lm, small, ["Democrat"], None, qids)[0]
    prompts = [lm_prompt("", small.question(q)) for q in qids]
    ref = option_letter_probs(tiny_lm, prompts, [small.question(q).n_options for q in qids])
    for q, r in zip(qids, ref, strict=True):
        np.testing.assert_allclose(pred[q], r, atol=1e-4)


@pytest.mark.parametrize("method", ["lm_base", "lm_bio", "few_shot"])
def test_batched_equals_unbatched(tiny_lm: BaseLM, small: PreferenceDataset, method: str) -> None:
    contexts = _contexts(small, ["q0", "q3"])
    targets = ["q1", "q2", "q4"]
    batched = predict_lm_many(method, tiny_lm, small, GROUPS, contexts, targets, batch_size=8)
    for gi, g in enumerate(GROUPS):
        for q in targets:
            alone = predict_lm_many(method, tiny_lm, small, [g], [contexts[gi]], [q], batch_size=1)[0][q]
            np.testing.assert_allclose(batched[gi][q], alone, atol=1e-4)


def test_few_shot_kv_prefix_equals_full_forward(tiny_lm: BaseLM, small: PreferenceDataset) -> None:
    context = {q: small.dist("Liberal", q) for q in ["q0", "q3"]}
    prefix = group_prefix("few_shot", small, "Liberal", context)
    questions = [small.question(q) for q in ["q1", "q2", "q4"]]
    prompts = [lm_prompt(prefix, q) for q in questions]
    n_opts = [q.n_options for q in questions]
    ids = tiny_lm.tokenizer(prompts)["input_ids"]
    n_prefix = len(tiny_lm.tokenizer(prefix)["input_ids"])
    assert lm_baselines._common_prefix_len(ids) >= n_prefix - 1  # the whole context block is shared
    ref = [_plain_letter_probs(tiny_lm, p, k) for p, k in zip(prompts, n_opts, strict=True)]
    for max_bytes in (lm_baselines.DEFAULT_MAX_CACHE_BYTES, 1):  # 1 byte: one row per batch
        got = shared_prefix_letter_probs(tiny_lm, prompts, n_opts, batch_size=4, max_cache_bytes=max_bytes)
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r, atol=1e-4)


def test_shared_prefix_argument_checks(tiny_lm: BaseLM) -> None:
    assert shared_prefix_letter_probs(tiny_lm, [], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1"):
        shared_prefix_letter_probs(tiny_lm, ["a", "b"], [2])


# ------------------------------------------------------------------------------------------ disk cache


def test_disk_cache_hits_and_is_keyed_by_identity(
    tiny_lm: BaseLM, small: PreferenceDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = lm_baselines.shared_prefix_letter_probs

    def counting(lm, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return real(lm, prompts, *args, **kwargs)

    monkeypatch.setattr(lm_baselines, "shared_prefix_letter_probs", counting)
    targets = ["q0", "q1", "q2"]
    with LMPredictionCache.in_cache_dir(tmp_path) as cache:
        first = predict_lm_many("lm_portray", tiny_lm, small, GROUPS, None, targets, cache=cache)
        assert sum(calls) == len(GROUPS) * len(targets) and len(cache) == len(GROUPS) * len(targets)
        assert (tmp_path / "lm_baselines" / LMPredictionCache.FILENAME).is_file()

        calls.clear()
        second = predict_lm_many("lm_portray", tiny_lm, small, GROUPS, None, targets, cache=cache)
        assert calls == []
        for a, b in zip(first, second, strict=True):
            for q in targets:
                np.testing.assert_array_equal(a[q], b[q])

        other = dataclasses.replace(tiny_lm, revision="another-revision")
        predict_lm_many("lm_portray", other, small, GROUPS, None, targets, cache=cache)
        assert sum(calls) == len(GROUPS) * len(targets)  # every prompt missed
    # the file outlives the connection: a new cache object answers without a model
    calls.clear()
    with LMPredictionCache.in_cache_dir(tmp_path) as reopened:
        again = predict_lm_many("lm_portray", tiny_lm, small, GROUPS, None, targets, cache=reopened)
    assert calls == []
    for a, b in zip(first, again, strict=True):
        for q in targets:
            np.testing.assert_array_equal(a[q], b[q])


def test_lm_base_is_scored_once_for_all_groups(
    tiny_lm: BaseLM, small: PreferenceDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = lm_baselines.shared_prefix_letter_probs
    monkeypatch.setattr(
        lm_baselines, "shared_prefix_letter_probs", lambda lm, p, *a, **k: calls.append(len(p)) or real(lm, p, *a, **k)
    )
    predict_lm_many("lm_base", tiny_lm, small, GROUPS, None, ["q0", "q1"])
    assert calls == [2]


def test_cache_keys() -> None:
    ident = lm_baselines.LMIdentity("m", "r1")
    prefix = LMPredictionCache.key_prefix(ident, torch.float32)
    assert prefix.startswith("m@r1|float32|lm-baselines-v")
    assert LMPredictionCache.key_prefix(ident, torch.bfloat16) != prefix
    assert LMPredictionCache.key(prefix, "a") != LMPredictionCache.key(prefix, "b")


# ------------------------------------------------------------------------------------------ subset


def test_lm_eval_questions_is_a_fixed_subset(opinionqa: PreferenceDataset) -> None:
    scorable = scorable_question_ids(opinionqa)
    a = lm_eval_questions(opinionqa, 150, 0)
    assert a == lm_eval_questions(opinionqa, 150, 0)
    assert len(a) == 150 and len(set(a)) == 150 and set(a) <= set(scorable)
    assert a == [q for q in scorable if q in set(a)]  # dataset order
    assert a != lm_eval_questions(opinionqa, 150, 1)
    assert lm_eval_questions(opinionqa, 10_000, 0) == scorable
    with pytest.raises(ValueError):
        lm_eval_questions(opinionqa, 0, 0)


def test_on_ragged_data_the_sample_is_the_most_answered_questions() -> None:
    questions = [Question(f"q{i}", f"Question {i}?", ("a", "b")) for i in range(10)]
    groups = [f"g{j}" for j in range(5)]
    # question i is answered by the first 1 + i // 2 groups: q8, q9 by all five, q6, q7 by four, ...
    dists = {
        g: {q.qid: np.array([0.5, 0.5]) for i, q in enumerate(questions) if j <= i // 2} for j, g in enumerate(groups)
    }
    ds = PreferenceDataset(questions, groups, dists)
    assert lm_eval_questions(ds, 2, 0) == ["q8", "q9"]
    three = lm_eval_questions(ds, 3, 0)
    assert three[-2:] == ["q8", "q9"] and three[0] in ("q6", "q7")  # the tie is drawn, seeded
    assert {tuple(lm_eval_questions(ds, 3, s)) for s in range(20)} == {("q6", "q8", "q9"), ("q7", "q8", "q9")}


def test_each_group_is_asked_only_its_own_targets(tiny_lm: BaseLM, small: PreferenceDataset) -> None:
    qids = [q.qid for q in small.questions]
    groups = list(small.groups[:2])
    out = predict_lm_many("lm_qa", tiny_lm, small, groups, None, qids, targets_of=[qids[:1], qids[1:]])
    assert list(out[0]) == qids[:1] and list(out[1]) == qids[1:]
    full = predict_lm_many("lm_qa", tiny_lm, small, groups, None, qids)
    for got, ref in zip(out, full, strict=True):
        for q, p in got.items():
            np.testing.assert_allclose(p, ref[q], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ real model


@pytest.mark.slow
def test_smollm2_lm_base_and_steered(tmp_path: Path, opinionqa: PreferenceDataset) -> None:
    """The bundled SmolLM2: the shared-prefix path agrees with a plain forward on real prompts."""
    from service.config import Settings

    lm = lm_baselines.load_lm_for_baselines(Settings(device="cpu"))
    qids = lm_eval_questions(opinionqa, 4, 0)
    preds = predict_lm_many("lm_qa", lm, opinionqa, ["Republican"], None, qids, batch_size=4)[0]
    prefix = group_prefix("lm_qa", opinionqa, "Republican")
    for q in qids:
        question = opinionqa.question(q)
        ref = _plain_letter_probs(lm, lm_prompt(prefix, question), question.n_options)
        np.testing.assert_allclose(preds[q], ref, atol=1e-4)
