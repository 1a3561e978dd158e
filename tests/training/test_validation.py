"""Checkpoint choice: validation questions never reach a training episode, the known-question floor, and
evaluation's flags for questions outside the training questions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import service.training.evaluate as evaluate_module
import service.training.fit as fit_module
from service.gpo.features import TEXT_FLAG, FeatureSpec
from service.training.evaluate import gpo_predictions
from service.training.fit import TrainConfig, train_gpo
from service.training.items import build_item_table
from service.training.splits import make_split, scorable_question_ids, validation_groups
from service.training.text_prior import text_features
from service.training.validation import (
    INELIGIBLE_PENALTY,
    MIN_VALIDATION_QUESTIONS,
    CheckpointScore,
    choose_readout_ridge,
    hold_out_questions,
)
from tests.training.test_fit import synthetic_dataset

SMALL = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}


def _cfg(**more) -> TrainConfig:
    base = dict(
        max_steps=20, batch_size=4, n_targets=8, min_context=3, max_context=12, eval_every=10, patience=10,
        progress=False, time_budget_s=None,
    )  # fmt: skip
    return TrainConfig(**{**base, **more})


def test_hold_out_questions_is_a_seeded_share_of_the_scorable_ones():
    scorable = np.arange(100, 200)
    a = hold_out_questions(scorable, 0.15, seed=3)
    assert len(a) == 15 and set(a) <= set(scorable) and np.all(np.diff(a) > 0)
    assert np.array_equal(a, hold_out_questions(scorable, 0.15, seed=3))
    assert not np.array_equal(a, hold_out_questions(scorable, 0.15, seed=4))
    too_few = np.arange(MIN_VALIDATION_QUESTIONS * 2)
    assert len(hold_out_questions(too_few, 0.3, seed=0)) == 0  # 3 < MIN_VALIDATION_QUESTIONS: no new validation


def test_validation_questions_are_in_no_training_episode(monkeypatch):
    """Every training episode's questions (context and targets) avoid the validation questions, which are scored
    as new questions (their prior features zeroed) on the validation groups."""
    torch.set_num_threads(1)
    ds = synthetic_dataset(n_groups=10, n_questions=60)
    n_items = sum(q.n_options for q in ds.questions)
    table = build_item_table(ds.questions, np.random.default_rng(0).normal(size=(n_items, 4)).astype(np.float32))
    qids = scorable_question_ids(ds)
    seen: list[np.ndarray] = []
    real = fit_module.sample_episode

    def spy(rng, table_, x, y, qpool, *rest):
        seen.append(np.asarray(qpool).copy())
        return real(rng, table_, x, y, qpool, *rest)

    monkeypatch.setattr(fit_module, "sample_episode", spy)
    spec = FeatureSpec(emb_dim=4, prior_rank=2)
    result = train_gpo(table, ds, ds.groups[:7], ds.groups[7:], table.qindex(qids), spec, _cfg(), SMALL)
    held = result.held_out_q
    assert held is not None and len(held) == round(0.15 * len(qids))
    assert seen and all(not np.isin(pool, held).any() for pool in seen)
    assert all("val_new" in h and "val_known" in h for h in result.history)


def test_no_new_question_validation_without_the_prior():
    ds = synthetic_dataset(n_groups=8, n_questions=30)
    n_items = sum(q.n_options for q in ds.questions)
    table = build_item_table(ds.questions, np.zeros((n_items, 4), np.float32))
    qids = scorable_question_ids(ds)
    spec = FeatureSpec(emb_dim=4, use_prior=False, prior_rank=0)
    result = train_gpo(table, ds, ds.groups[:6], ds.groups[6:], table.qindex(qids), spec, _cfg(max_steps=5), SMALL)
    assert len(result.held_out_q) == 0
    assert all("val_new" not in h for h in result.history)


def test_checkpoint_score_blends_and_enforces_the_known_floor():
    score = CheckpointScore(new_weight=0.5, tolerance_se=1.0)
    known0 = [0.9, 0.92, 0.94, 0.96]  # mean 0.93, se = std / 2
    s0 = score(known0, [0.8, 0.8])
    assert s0 == pytest.approx(0.5 * 0.93 + 0.5 * 0.8)
    se = np.std(known0) / 2
    assert score.floor == pytest.approx(0.93 - se)
    # better on new questions, known within the tolerance: eligible, blended
    within = [k - 0.5 * se for k in known0]
    assert score(within, [0.9, 0.9]) == pytest.approx(0.5 * (0.93 - 0.5 * se) + 0.45)
    assert score.parts["val_eligible"] == 1.0
    # much better on new questions but known fell past the floor: below any eligible score
    worse = [k - 2 * se for k in known0]
    s = score(worse, [1.0, 1.0])
    assert score.parts["val_eligible"] == 0.0
    assert s == pytest.approx(0.5 * (0.93 - 2 * se) + 0.5 - INELIGIBLE_PENALTY) and s < s0
    # known only (no new episodes): the known mean
    only = CheckpointScore(new_weight=0.5)
    assert only([0.5, 0.7], []) == pytest.approx(0.6) and "val_new" not in only.parts


@pytest.mark.parametrize("text_prior", [False, True])
def test_questions_outside_training_reach_the_model_as_new(monkeypatch, text_prior):
    """gpo_predictions encodes items of questions outside `known_q` as training and serving encode a new question:
    flag 0 and zeros, or, with a text prior, flag TEXT_FLAG and the text prior's features; never 'known with a
    zero prior'."""
    torch.set_num_threads(1)
    ds = synthetic_dataset(n_groups=10, n_questions=40)
    n_items = sum(q.n_options for q in ds.questions)
    table = build_item_table(ds.questions, np.random.default_rng(2).normal(size=(n_items, 4)).astype(np.float32))
    qids = scorable_question_ids(ds)
    train_qids, new_qids = qids[:30], qids[30:]
    split = make_split(ds.groups, qids, 0.6, 0, 5)
    fit, val = validation_groups(split.train_groups, 0)
    spec = FeatureSpec(emb_dim=4, prior_rank=2)
    cfg = _cfg(max_steps=2, text_prior=text_prior)
    result = train_gpo(table, ds, fit, val, table.qindex(train_qids), spec, cfg, SMALL)
    assert result.known_q is not None and result.known_q.sum() == 30
    assert (result.text_prior is not None) == text_prior
    captured = []
    real = evaluate_module.make_eval_episode

    def spy(table_, x, y, ctx_q, tgt_q):
        captured.append(x)
        return real(table_, x, y, ctx_q, tgt_q)

    monkeypatch.setattr(evaluate_module, "make_eval_episode", spy)
    gpo_predictions(result, table, ds, split)
    flag = spec.prior_slice.start
    x = captured[0]
    new_rows = table.rows(table.qindex(new_qids))
    train_rows = table.rows(table.qindex(train_qids))
    assert torch.all(x[train_rows, flag] == 1)
    if not text_prior:
        assert torch.all(x[new_rows, flag] == 0) and torch.all(x[new_rows, spec.prior_slice] == 0)
    else:
        expected = text_features(result.text_prior, table, new_rows)
        assert torch.all(x[new_rows, flag] == TEXT_FLAG)
        np.testing.assert_allclose(x[new_rows, spec.prior_slice].numpy(), expected, rtol=1e-6)


def test_the_readout_ridge_is_the_grid_value_the_validation_scores_best():
    model = torch.nn.Module()
    model.log_ridge = torch.nn.Parameter(torch.tensor(0.0))
    grid = (1e-3, 1e-2, 1e-1, 1.0)
    # a validation score peaking at ridge 0.1
    best = choose_readout_ridge(model, lambda: -abs(float(model.log_ridge) - np.log(0.1)), grid)
    assert best == 0.1 and float(model.log_ridge.exp()) == pytest.approx(0.1)


def test_training_starts_from_the_chosen_ridge(monkeypatch):
    """train_gpo sets the readout's strength before the first validation (the floor is that readout's score)."""
    torch.set_num_threads(1)
    ds = synthetic_dataset(n_groups=10, n_questions=40)
    n_items = sum(q.n_options for q in ds.questions)
    table = build_item_table(ds.questions, np.random.default_rng(0).normal(size=(n_items, 4)).astype(np.float32))
    qids = scorable_question_ids(ds)
    spec = FeatureSpec(emb_dim=4, prior_rank=2)
    calls = []
    monkeypatch.setattr(fit_module, "choose_readout_ridge", lambda model, score: calls.append(score()) or 0.3)
    train_gpo(table, ds, ds.groups[:7], ds.groups[7:], table.qindex(qids), spec, _cfg(max_steps=0), SMALL)
    assert len(calls) == 1
    calls.clear()
    train_gpo(
        table, ds, ds.groups[:7], ds.groups[7:], table.qindex(qids), spec, _cfg(max_steps=0, choose_ridge=False), SMALL
    )
    assert calls == []


def test_a_test_group_without_targets_gets_no_predictions():
    """Ragged data: a test group whose answered questions are all in its context has no target (found on
    GlobalOpinionQA's new-questions protocol, where it crashed the run)."""
    from service.training.fit import split_by_question
    from service.training.splits import Split

    torch.set_num_threads(1)
    ds = synthetic_dataset(n_groups=8, n_questions=20)
    n_items = sum(q.n_options for q in ds.questions)
    table = build_item_table(ds.questions, np.zeros((n_items, 4), np.float32))
    assert split_by_question(table, np.zeros(0, dtype=np.int64), np.zeros(0)) == []
    qids = scorable_question_ids(ds)
    spec = FeatureSpec(emb_dim=4, prior_rank=2)
    result = train_gpo(table, ds, ds.groups[:4], ds.groups[4:6], table.qindex(qids), spec, _cfg(max_steps=0), SMALL)
    ctx = tuple(qids[:5])
    split = Split(
        tuple(ds.groups[:6]), tuple(ds.groups[6:]), ctx, tuple(qids[5:]), 0.6, 0,
        {g: ctx for g in ds.groups[6:]}, {ds.groups[6]: tuple(qids[5:]), ds.groups[7]: ()},
    )  # fmt: skip
    preds = gpo_predictions(result, table, ds, split)
    assert set(preds[0]) == set(qids[5:]) and preds[1] == {}


def test_the_text_weight_is_the_grid_value_the_text_context_episodes_score_best():
    from types import SimpleNamespace

    from service.training.validation import TEXT_WEIGHT_GRID, choose_text_weight

    model = torch.nn.Module()
    model.cfg = SimpleNamespace(text_weight=0.5)
    seen = []

    def score() -> float:
        seen.append(model.cfg.text_weight)
        return -abs(np.log(model.cfg.text_weight / 0.1))

    assert choose_text_weight(model, score) == 0.1 and model.cfg.text_weight == 0.1
    assert seen == list(TEXT_WEIGHT_GRID)
