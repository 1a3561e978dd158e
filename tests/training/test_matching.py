"""The matcher's threshold on the training side (service.training.matching) and its use in evaluation."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from service.gpo.features import FeatureSpec
from service.gpo.matching import BlendRule, QuestionMatcher, blend_targets
from service.training.datasets import PreferenceDataset
from service.training.evaluate import score_reworded
from service.training.fit import TrainConfig, train_gpo
from service.training.items import build_item_table
from service.training.matching import (
    choose_banded,
    choose_blend,
    choose_threshold,
    nearest_other,
    validation_rewordings,
    with_question_vectors,
)
from service.training.reworded import SUFFIX, Rewordings
from service.training.splits import make_split, scorable_question_ids, validation_groups

from .test_probe import text_dataset

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}


def unit_rows(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def test_nearest_other_skips_itself_and_other_option_counts():
    v = unit_rows(np.array([[1, 0], [1, 0.1], [0, 1], [1, 0.05]], dtype=float))
    nn, sim = nearest_other(v, np.array([3, 3, 3, 2]))
    assert nn.tolist() == [1, 0, 1, -1] and sim[3] == -np.inf and sim[0] == pytest.approx(sim[1])


def test_choose_threshold_minimises_the_total_error():
    # borrowing pays for the two most similar questions, costs on the third: the threshold is the second's similarity
    sim = np.array([0.5, 0.99, 0.9, 0.95])
    err_text = np.array([1.0, 2.0, 0.0, 2.0])
    err_match = np.array([0.5, 1.0, 3.0, 1.0])  # gains 0.5, 1, -3, 1 -> most similar first: 1, 1, -3, 0.5
    assert choose_threshold(sim, err_match, err_text) == 0.95
    assert choose_threshold(sim, err_match + 10, err_text) == float("inf")  # never pays
    # questions with equal similarity go together: a threshold cannot split them
    assert choose_threshold(np.array([0.9, 0.9, 0.5]), np.array([0.0, 3.0, 0.0]), np.array([2.0, 0.0, 2.0])) == 0.5
    assert choose_threshold(np.zeros(0), np.zeros(0), np.zeros(0)) == float("inf")


def with_twins(ds: PreferenceDataset, table, seed: int = 0):
    """Question vectors where every question has a near twin among the others (its neighbour in order): pairs
    (0, 1), (2, 3), ... embed close together. Twins with the same option count answer alike only when their answers
    were made alike; here they are not, so borrowing should rarely pay."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(len(ds.questions) // 2 + 1, 16))
    q = np.repeat(base, 2, axis=0)[: len(ds.questions)] + rng.normal(size=(len(ds.questions), 16)) * 0.05
    return replace(table, qvec=unit_rows(q))


def train(ds, table, split, seed=0, blend=False):
    fit, val = validation_groups(split.train_groups, seed)
    spec = FeatureSpec(emb_dim=table.emb.shape[1], prior_rank=2)
    cfg = TrainConfig(
        max_steps=0,
        batch_size=4,
        eval_every=3,
        progress=False,
        time_budget_s=None,
        val_draws=1,
        neighbour_blend=blend if isinstance(blend, str) else ("below" if blend else "off"),
    )
    return train_gpo(table, ds, fit, val, table.qindex(split_known(ds, split)), spec, cfg, TINY)


def split_known(ds, split):
    held = set(list(scorable_question_ids(ds))[-10:])  # the last 10 questions: held out of training
    return [q for q in scorable_question_ids(ds) if q not in held]


def test_the_matcher_holds_training_questions_only_and_no_held_out_answer_reaches_it():
    torch.set_num_threads(1)
    ds, table = text_dataset(n_groups=14, n_questions=50)
    table = with_twins(ds, table)
    split = make_split(ds.groups, scorable_question_ids(ds), 0.6, 0, 10)
    result = train(ds, table, split)
    m = result.matcher
    assert m is not None
    known = set(table.qindex(split_known(ds, split)).tolist())
    starts = {int(table.q_start[i]): i for i in range(len(table.questions))}
    assert {starts[int(s)] for s in m.starts} <= known and len(m.starts) == len(known)
    # the test groups' answers and every held-out question's answers changed: the same matcher
    rng = np.random.default_rng(9)
    held = [q for q in scorable_question_ids(ds) if q not in set(split_known(ds, split))]
    dists = {g: dict(d) for g, d in ds.dists.items()}
    for g in ds.groups:
        for q in dists[g]:
            if g in split.test_groups or q in held:
                p = rng.dirichlet(np.ones(len(dists[g][q])))
                dists[g][q] = p
    other = PreferenceDataset(questions=ds.questions, groups=ds.groups, dists=dists)
    again = train(other, table, split).matcher
    assert again is not None and again.threshold == m.threshold
    np.testing.assert_array_equal(again.vectors, m.vectors)


def test_a_rewording_near_its_original_borrows_its_prior_in_evaluation():
    torch.set_num_threads(1)
    ds, table = text_dataset(n_groups=16, n_questions=60)
    rng = np.random.default_rng(4)
    pairs = [(q.qid, replace(q, qid=q.qid + SUFFIX, text="Put another way: " + q.text)) for q in ds.questions[::2]]
    # a rewording's option embeddings drift far (the text prior reads it poorly); its question vector stays close
    emb = np.concatenate([table.emb[table.rows(table.qindex([qid]))] for qid, _ in pairs])
    emb = emb + rng.normal(size=emb.shape).astype(np.float32) * 1.0
    qvec = unit_rows(rng.normal(size=(len(ds.questions), 32)))
    twin = unit_rows(qvec[table.qindex([qid for qid, _ in pairs])] + rng.normal(size=(len(pairs), 32)) * 0.01)
    full = build_item_table([*table.questions, *(q for _, q in pairs)], np.concatenate([table.emb, emb]))
    qids = scorable_question_ids(ds)
    split = make_split(ds.groups, qids, 0.6, 0, 10)
    fit, val = validation_groups(split.train_groups, 0)
    spec = FeatureSpec(emb_dim=table.emb.shape[1], prior_rank=2)
    cfg = TrainConfig(max_steps=0, batch_size=4, eval_every=3, progress=False, time_budget_s=None, val_draws=1)
    out = {}
    for name, vectors in (("exact only", None), ("matcher", qvec)):
        t = replace(table, qvec=vectors)
        result = train_gpo(t, ds, fit, val, t.qindex(qids), spec, cfg, TINY)
        if name == "matcher":
            result = replace(result, matcher=replace(result.matcher, threshold=0.9))  # near twins only
        rw = Rewordings(pairs, replace(full, qvec=None if vectors is None else np.concatenate([qvec, twin])))
        recs = score_reworded(ds, rw, split, result, qids)
        out[name] = {(r["method"], r["subset"]): r["alignment"] for r in recs}
    # with the matcher, a rewording scores as its original does; without it, it is read through drifted text
    assert out["matcher"]["gpo", "reworded"] == pytest.approx(out["matcher"]["gpo", "original"], abs=2e-3)
    assert out["exact only"]["gpo", "reworded"] < out["matcher"]["gpo", "reworded"] - 0.01


def no_options(table, q: np.ndarray) -> np.ndarray:
    """Option vectors for rewordings of questions `q` (unused: a table without option vectors pairs in order)."""
    return np.zeros((int(table.q_len[q].sum()), 4), np.float32)


def test_validation_rewordings_of_bank_questions_lower_the_threshold_and_held_out_ones_are_skipped():
    """Questions far apart, answered independently: borrowing never pays on the survey's own pairs. A validation
    rewording sits near its own original (zero error when borrowed), so counting them lowers the threshold to take
    them. A rewording of a held-out question (not in the bank) changes nothing."""
    torch.set_num_threads(1)
    ds, table = text_dataset(n_groups=14, n_questions=50)
    table = replace(table, qvec=unit_rows(np.random.default_rng(1).normal(size=(len(ds.questions), 64))))
    split = make_split(ds.groups, scorable_question_ids(ds), 0.6, 0, 10)
    alone = train(ds, table, split).matcher.threshold
    known = table.qindex(split_known(ds, split))
    rng = np.random.default_rng(2)
    q = known[::2]  # a rewording of every other bank question, at cosine ~0.7 from its original
    near = unit_rows(table.qvec[q] + rng.normal(size=(len(q), table.qvec.shape[1])) * 0.12)
    cos = (near * table.qvec[q]).sum(1)
    lowered = train(ds, replace(table, qval=(q, near, no_options(table, q))), split).matcher.threshold
    assert lowered < alone and lowered <= np.median(cos)
    held = np.setdiff1d(np.arange(len(ds.questions)), known)
    far = unit_rows(table.qvec[held] + rng.normal(size=(len(held), table.qvec.shape[1])) * 0.12)
    assert train(ds, replace(table, qval=(held, far, no_options(table, held))), split).matcher.threshold == alone


def test_validation_rewordings_are_read_by_qid_and_option_count(tmp_path):
    ds, table = text_dataset(n_groups=4, n_questions=5)
    q = ds.questions[1]
    path = tmp_path / "v.jsonl"
    rows = [
        {"qid": q.qid, "text": "Said otherwise?", "options": [f"o{i}" for i in range(q.n_options)]},
        {"qid": q.qid, "text": "Too few options", "options": ["a"]},
        {"qid": "elsewhere", "text": "?", "options": ["a", "b"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert validation_rewordings(table, path) == [
        (1, " / ".join(["Said otherwise?", *rows[0]["options"]]), rows[0]["options"])
    ]
    assert validation_rewordings(table, tmp_path / "missing.jsonl") == []

    class Encoder:
        def embed(self, texts):
            return unit_rows(np.random.default_rng(len(texts)).normal(size=(len(texts), 8)))

    t = with_question_vectors(table, Encoder(), path)
    assert t.qvec.shape == (len(ds.questions), 8) and t.qval[0].tolist() == [1] and t.qval[1].shape == (1, 8)
    assert t.qval[2].shape == (q.n_options, 8) and t.ovec.shape == (table.n_items, 8)
    assert with_question_vectors(table, Encoder(), None).qval is None


def test_blend_leans_on_near_neighbours_only():
    rule = BlendRule(k=2, beta=10.0, lam=0.8)
    assert rule.share(0.5) == 0.0 and rule.share(0.9) == pytest.approx(0.8) and rule.share(0.7) == pytest.approx(0.4)
    w = rule.weights(np.array([0.9, 0.8]))
    assert w.sum() == pytest.approx(1.0) and w[0] / w[1] == pytest.approx(np.exp(1.0))
    text, a, b = np.zeros((3, 2)), np.ones((3, 2)), -np.ones((3, 2))
    out = blend_targets(text, [a, b], np.array([0.7, 0.7]), rule)  # equal weights cancel; share 0.4
    np.testing.assert_allclose(out, 0.0, atol=1e-12)
    np.testing.assert_allclose(blend_targets(text, [a], np.array([0.9]), rule), 0.8)
    np.testing.assert_allclose(blend_targets(text, [], np.zeros(0), rule), text)


def test_choose_blend_borrows_only_when_neighbours_carry_the_answer():
    rng = np.random.default_rng(0)
    informative, opposite = [], []
    for _ in range(40):
        own = rng.normal(size=(3, 2))
        text = own + 0.3 * rng.normal(size=(3, 2))  # a fair text estimate
        sims = np.sort(rng.uniform(0.85, 0.95, size=10))[::-1]
        informative.append((own, text, sims, own[None] + 0.1 * rng.normal(size=(10, 3, 2))))
        opposite.append((own, text, sims, -own[None] + 0.1 * rng.normal(size=(10, 3, 2))))  # they answer the opposite
    chosen = choose_blend(informative)
    assert chosen is not None and chosen.lam >= 0.7
    assert choose_blend(opposite) is None


def test_split_shares_blend_the_mean_and_the_loadings_apart():
    rule = BlendRule(k=1, beta=10.0, lam=0.0, floor=0.5, span=0.4, lam_loadings=1.0)
    text, near = np.zeros((3, 3)), np.ones((3, 3))
    out = blend_targets(text, [near], np.array([0.9]), rule)  # share 0 for the mean, 1 for the loadings
    np.testing.assert_allclose(out[:, 0], 0.0)
    np.testing.assert_allclose(out[:, 1:], 1.0)
    assert rule.share(0.7) == 0.0 and rule.share(0.7, loadings=True) == pytest.approx(0.5)
    same = BlendRule(k=1, beta=10.0, lam=0.5)
    np.testing.assert_allclose(blend_targets(text, [near], np.array([0.9]), same), 0.5)


def test_choose_blend_split_gives_each_column_its_own_share():
    """Neighbours that carry the mean but answer the loadings the opposite way: "split" borrows the mean and keeps
    the text loadings; one shared share must settle in between."""
    rng = np.random.default_rng(1)
    cases = []
    for _ in range(40):
        own = rng.normal(size=(3, 3))
        text = own + 0.3 * rng.normal(size=(3, 3))
        sims = np.sort(rng.uniform(0.85, 0.95, size=10))[::-1]
        lent = own[None] + 0.05 * rng.normal(size=(10, 3, 3))
        lent[:, :, 1:] *= -1.0
        cases.append((own, text, sims, lent))
    split = choose_blend(cases, split=True)
    assert split is not None and split.lam >= 0.7 and split.lam_loadings == 0.0
    shared = choose_blend(cases)
    assert shared is None or shared.lam_loadings is None


def test_choose_blend_contrast_borrows_loadings_of_the_right_direction_whatever_their_scale():
    """Neighbours whose loadings point the question's way at three times its scale, and a noisy text estimate: the
    squared error borrows little of them (their scale costs), the contrast criterion all it can (r does not see a
    scale); the mean column's share is the squared error's in both."""
    rng = np.random.default_rng(2)
    cases = []
    for _ in range(60):
        own = rng.normal(size=(3, 3))
        text = own + rng.normal(size=(3, 3))
        sims = np.sort(rng.uniform(0.9, 0.95, size=10))[::-1]
        lent = own[None] + 0.05 * rng.normal(size=(10, 3, 3))
        lent[:, :, 1:] *= 3.0
        cases.append((own, text, sims, lent))
    by_error = choose_blend(cases, split=True)
    by_contrast = choose_blend(cases, split=True, contrast=True)
    assert by_error is not None and by_contrast is not None
    share = lambda rule: rule.lam if rule.lam_loadings is None else rule.lam_loadings  # noqa: E731
    assert share(by_error) <= 0.3 and share(by_contrast) >= 0.7
    assert by_contrast.lam >= 0.7  # the mean (its own scale) is borrowed by its squared error


def test_choose_banded_lends_by_band_where_one_ramp_cannot():
    """Neighbours that carry the answer when the nearest is very near (>= 0.9) and mislead at middling similarity
    (0.6-0.7), while far ones (< 0.5) are as good as a noisy text estimate: the banded choice lends all at >= 0.9,
    next to nothing at 0.6-0.7 and about half below 0.5 (two independent noisy estimates averaged), which no rising
    ramp can; the rule round-trips through a checkpoint and blends as its bands say."""
    rng = np.random.default_rng(4)
    cases = []
    for lo, hi, how in ((0.92, 0.97, "right"), (0.6, 0.69, "wrong"), (0.2, 0.45, "noisy")):
        for _ in range(80):
            own = rng.normal(size=(3, 3))
            text = own + rng.normal(size=(3, 3))
            sims = np.sort(rng.uniform(lo, hi, size=10))[::-1]
            noise = {"right": 0.05, "wrong": 0.0, "noisy": 1.0}[how]
            lent = (own if how != "wrong" else -3 * own)[None] + noise * rng.normal(size=(10, 3, 3))
            if how == "noisy":  # every neighbour shares one error: their mean is as noisy as the text estimate
                lent = own[None] + rng.normal(size=(1, 3, 3)).repeat(10, axis=0)
            cases.append((own, text, sims, lent))
    rule = choose_banded(cases)
    assert rule is not None and rule.bands is not None
    assert rule.share(0.95) == 1.0 and rule.share(0.65) <= 0.1 and 0.3 <= rule.share(0.3) <= 0.7
    assert rule.share(0.95, loadings=True) == rule.share(0.95)  # one share for every column
    m = QuestionMatcher(unit_rows(np.eye(2)), np.array([0, 2]), np.array([2, 2]), float("inf"), None, rule)
    assert QuestionMatcher.from_checkpoint(m.to_checkpoint()).blend == rule
    own, text, sims, lent = cases[100]  # a middling case: its text estimate, mixed by its band's share
    near = np.tensordot(rule.weights(sims[: rule.k]), lent[: rule.k], axes=1)
    want = (1 - rule.share(sims[0])) * text + rule.share(sims[0]) * near
    np.testing.assert_allclose(blend_targets(text, list(lent[: rule.k]), sims[: rule.k], rule), want)


def test_choose_banded_borrows_nothing_when_neighbours_never_help():
    rng = np.random.default_rng(5)
    cases = []
    for _ in range(50):
        own = rng.normal(size=(3, 3))
        cases.append((own, own + 0.01 * rng.normal(size=(3, 3)), np.full(10, 0.95), -own[None].repeat(10, axis=0)))
    assert choose_banded(cases) is None


def test_the_blend_rule_is_kept_in_a_checkpoint():
    m = QuestionMatcher(
        unit_rows(np.eye(2)), np.array([0, 2]), np.array([2, 2]), 0.9, None, BlendRule(5, 20.0, 0.5, 0.4, 0.5)
    )
    again = QuestionMatcher.from_checkpoint(m.to_checkpoint())
    assert again is not None and again.blend == m.blend
    split = replace(m, blend=BlendRule(5, 20.0, 0.5, 0.4, 0.5, lam_loadings=0.3))
    assert QuestionMatcher.from_checkpoint(split.to_checkpoint()).blend == split.blend
    five = {**m.to_checkpoint(), "match_blend": np.array([5, 20.0, 0.5, 0.4, 0.5])}  # a checkpoint before the split
    assert QuestionMatcher.from_checkpoint(five).blend == m.blend
    assert QuestionMatcher.from_checkpoint(replace(m, blend=None).to_checkpoint()).blend is None


@pytest.mark.parametrize("mode", ["below", "banded"])
def test_the_blend_rule_is_chosen_without_any_held_out_answer(mode):
    torch.set_num_threads(1)
    ds, table = text_dataset(n_groups=14, n_questions=50)
    table = with_twins(ds, table)
    split = make_split(ds.groups, scorable_question_ids(ds), 0.6, 0, 10)
    first = train(ds, table, split, blend=mode).matcher
    rng = np.random.default_rng(3)
    held = [q for q in scorable_question_ids(ds) if q not in set(split_known(ds, split))]
    dists = {g: dict(d) for g, d in ds.dists.items()}
    for g in ds.groups:
        for q in dists[g]:
            if g in split.test_groups or q in held:
                dists[g][q] = rng.dirichlet(np.ones(len(dists[g][q])))
    again = train(PreferenceDataset(questions=ds.questions, groups=ds.groups, dists=dists), table, split, blend=mode)
    assert first is not None and again.matcher is not None
    assert again.matcher.blend == first.blend and again.matcher.threshold == first.threshold
