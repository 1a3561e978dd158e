"""Evaluation protocols (groups with a context-size curve, new questions), the latent-factor reference and
the results page, on the small synthetic low-rank dataset of test_fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from service.gpo.features import FeatureSpec
from service.training.baselines import RIDGE_GRID, UnknownQuestionError, group_context, latent_factor_many, predict_many
from service.training.evaluate import EvalConfig, run_group_protocol, score
from service.training.fit import TrainConfig
from service.training.held_out import (
    new_context_splits,
    new_question_split,
    run_new_context_protocol,
    run_new_question_protocol,
)
from service.training.items import build_item_table
from service.training.report import write_report
from service.training.splits import make_split, scorable_question_ids

from .test_fit import synthetic_dataset

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    ds = synthetic_dataset(n_groups=12, n_questions=40)
    n_items = sum(q.n_options for q in ds.questions)
    table = build_item_table(ds.questions, np.random.default_rng(1).normal(size=(n_items, 4)).astype(np.float32))
    spec = FeatureSpec(emb_dim=4, prior_rank=2)
    tcfg = TrainConfig(
        max_steps=10,
        batch_size=4,
        n_targets=5,
        min_context=3,
        max_context=10,
        eval_every=5,
        progress=False,
        time_budget_s=None,
    )
    return ds, table, spec, tcfg


def test_group_protocol_records_curve_and_examples(setup):
    ds, table, spec, tcfg = setup
    cfg = EvalConfig(
        splits=[0.6],
        seeds=[0],
        n_context=5,
        baselines=["uniform", "mixture", "latent_factor"],
        curve_split=0.6,
        curve_sizes=(1, 5, 10),
        curve_baselines=("uniform",),
    )
    examples: list[dict] = []
    records = run_group_protocol(ds, table, spec, tcfg, cfg, TINY, examples=examples)
    main = [r for r in records if r["n_context"] == 5]
    assert {r["method"] for r in main} == {"gpo", "uniform", "mixture", "latent_factor"}
    curve = {(r["method"], r["n_context"]) for r in records if r["n_context"] != 5}
    assert curve == {("gpo", 1), ("gpo", 10), ("uniform", 1), ("uniform", 10)}
    assert all(math.isfinite(r["alignment"]) and 0 < r["alignment"] <= 1 for r in records)
    assert all(r["protocol"] == "groups" and r["split"] == 0.6 and r["seed"] == 0 for r in records)
    gpo = next(r for r in main if r["method"] == "gpo")
    assert {"train_wall_s", "best_step", "val_alignment"} <= set(gpo)
    assert examples and all(len(e["true"]) == len(e["gpo"]) == len(e["options"]) for e in examples)
    # group contrast: uniform answers every group alike (r 0, no spread); the low-rank baseline follows the groups
    by = {r["method"]: r for r in main if r["subset"] == "all"}
    assert by["uniform"]["contrast_r"] == 0.0 and by["uniform"]["pred_spread"] == 0.0
    assert by["latent_factor"]["contrast_r"] > 0.5 and by["latent_factor"]["pred_spread"] > 0
    assert all(r["true_spread"] == by["uniform"]["true_spread"] for r in by.values())
    assert all(-1 <= r["contrast_r"] <= 1 and r["contrast_pairs"] > 0 for r in by.values())


def test_new_question_split_holds_questions_out():
    ds = synthetic_dataset(n_groups=8, n_questions=50)
    qids = scorable_question_ids(ds)
    base = make_split(ds.groups, qids, 0.6, 3, 5)
    known, split = new_question_split(ds, base, 0.2, 3, 5)
    assert len(split.target_qids) == 10 and len(known) == 40
    assert set(split.target_qids).isdisjoint(known)
    assert set(split.context_qids) <= set(known) and len(split.context_qids) == 5
    assert split.train_groups == base.train_groups and split.test_groups == base.test_groups


def test_new_question_protocol_scores_held_out_and_known_questions(setup):
    ds, table, spec, tcfg = setup
    cfg = EvalConfig(seeds=[0], n_context=5, new_question_share=0.25)
    records = run_new_question_protocol(ds, table, spec, tcfg, cfg, TINY)
    subsets = {(r["method"], r["subset"]) for r in records}
    assert subsets == {(m, s) for m in ("gpo", "uniform", "linear_probe") for s in ("all", "known_questions")}
    assert all(r["protocol"] == "new_questions" for r in records)
    assert all({"contrast_r", "pred_spread", "true_spread"} <= set(r) for r in records)
    # the page's new-questions table carries the contrast; records from before it have none and keep the old table
    from service.training.report import new_question_table

    assert "| group contrast r |" in new_question_table(records)
    plain = new_question_table([{k: v for k, v in r.items() if k != "contrast_r"} for r in records])
    assert "contrast" not in plain and "| gpo | all |" in plain


def test_new_context_splits_draw_the_context_from_held_out_questions():
    ds = synthetic_dataset(n_groups=8, n_questions=50)
    qids = scorable_question_ids(ds)
    base = make_split(ds.groups, qids, 0.6, 3, 5)
    known, known_split, new_split = new_context_splits(ds, base, 0.3, 3, 5)
    held = set(qids) - set(known)
    assert len(held) == 15 and len(known) == 35
    for g in known_split.test_groups:
        ctx = set(known_split.context_of(g))
        assert ctx == set(new_split.context_of(g)) and len(ctx) == 5 and ctx <= held
        assert set(known_split.targets_of(g)) == set(known)
        assert set(new_split.targets_of(g)) == held - ctx


def test_new_context_protocol_reads_no_held_out_answer_of_the_train_groups(setup):
    """Every record of the new-context protocol is unchanged when the train groups' answers to the held-out
    questions (the test groups' own survey) are replaced: they are new to the model and to every baseline."""
    ds, table, spec, tcfg = setup
    cfg = EvalConfig(seeds=[0], n_context=5, new_question_share=0.3, progress=False)
    records = run_new_context_protocol(ds, table, spec, tcfg, cfg, TINY)
    assert {(r["method"], r["subset"]) for r in records} == {
        ("gpo", "known_targets"), ("uniform", "known_targets"), ("train_mean", "known_targets"),
        ("linear_probe", "known_targets"), ("gpo", "new_targets"), ("uniform", "new_targets"),
        ("linear_probe", "new_targets"),
    }  # fmt: skip
    assert all(r["protocol"] == "new_context" and "contrast_r" in r for r in records if r["method"] != "uniform")
    base = make_split(ds.groups, scorable_question_ids(ds), 0.6, 0, 5)
    known, _, _ = new_context_splits(ds, base, 0.3, 0, 5)
    rng = np.random.default_rng(9)
    dists = {g: dict(d) for g, d in ds.dists.items()}
    for g in base.train_groups:
        for q in set(scorable_question_ids(ds)) - set(known):
            dists[g][q] = rng.dirichlet(np.ones(ds.question(q).n_options))
    changed = type(ds)(questions=ds.questions, groups=ds.groups, dists=dists)
    again = run_new_context_protocol(changed, table, spec, tcfg, cfg, TINY)
    for a, b in zip(records, again, strict=True):
        assert (a["method"], a["subset"]) == (b["method"], b["subset"])
        assert a["alignment"] == pytest.approx(b["alignment"], abs=1e-6), (a["method"], a["subset"])


def test_latent_factor_is_the_ridge_estimate_and_chooses_its_ridge_on_train_groups():
    ds = synthetic_dataset(n_groups=12, n_questions=40)
    qids = scorable_question_ids(ds)
    split = make_split(ds.groups, qids, 0.6, 0, 10)
    ctx = [group_context(ds, g, split.context_qids) for g in split.test_groups]
    lf = latent_factor_many(ds, split.train_groups, ctx, split.target_qids, rank=2, ridge=0.01)
    # by hand: factorise the train groups' answers, ridge-fit the first test group's factors
    all_q = list(split.context_qids) + [q for q in split.target_qids]
    y = np.concatenate([np.stack([ds.dist(g, q) for g in split.train_groups], axis=1) for q in all_q])
    mean = y.mean(axis=1)
    u, s, _ = np.linalg.svd(y - mean[:, None], full_matrices=False)
    load = u[:, :2] * s[:2] / np.sqrt(y.shape[1])
    n_ctx = sum(ds.question(q).n_options for q in split.context_qids)
    true = np.concatenate([ds.dist(split.test_groups[0], q) for q in split.context_qids])
    z = np.linalg.solve(load[:n_ctx].T @ load[:n_ctx] + 0.01 * np.eye(2), load[:n_ctx].T @ (true - mean[:n_ctx]))
    first = split.target_qids[0]
    k = ds.question(first).n_options
    p = np.clip(mean[n_ctx : n_ctx + k] + load[n_ctx : n_ctx + k] @ z, 1e-4, None)
    np.testing.assert_allclose(lf[0][first], p / p.sum(), atol=1e-10)
    # on rank-2 data it beats the mean of the train groups; with the ridge left to choose, it still does
    chosen = predict_many("latent_factor", ds, split.train_groups, ctx, split.target_qids)
    mean_pred = predict_many("train_mean", ds, split.train_groups, ctx, split.target_qids)

    def pooled(preds):
        pairs = zip(split.test_groups, preds, strict=True)
        return np.mean([s for g, pr in pairs for s in score(ds, g, pr, split.target_qids)])

    for preds in (lf, chosen):
        assert pooled(preds) > pooled(mean_pred) + 0.01
    assert 0.01 in RIDGE_GRID


def test_latent_factor_refuses_unknown_questions():
    ds = synthetic_dataset(n_groups=6, n_questions=20)
    from service.training.datasets import Question

    new = Question("new", "A new question?", ("a", "b"), (1.0, 2.0))
    with pytest.raises(UnknownQuestionError):
        latent_factor_many(ds, ds.groups[:4], [group_context(ds, ds.groups[5], ["q000"])], [new])


def test_report_writes_tables_and_plots(setup, tmp_path):
    ds, table, spec, tcfg = setup
    cfg = EvalConfig(
        splits=[0.6],
        seeds=[0, 1],
        n_context=5,
        baselines=["uniform", "mixture"],
        curve_split=0.6,
        curve_sizes=(1, 5, 10, 20),
        curve_baselines=("uniform",),
    )
    examples: list[dict] = []
    records = run_group_protocol(ds, table, spec, tcfg, cfg, TINY, examples=examples)
    for r in records:  # the page reports the protocol's 20-question tables; relabel this tiny run's 5
        r["n_context"] = {5: 20, 20: 5}.get(r["n_context"], r["n_context"])
    out = write_report(records, examples, {"command": "test", "date": "today"}, tmp_path / "RESULTS.md")
    text = out.read_text()
    assert "| gpo |" in text and "| mixture |" in text and "Acceptance check" in text
    for png in ("alignment_bars.png", "context_curve.png", "examples.png"):
        assert (tmp_path / "results" / png).stat().st_size > 1000


def test_new_context_known_targets_on_ragged_data_are_questions_a_train_group_answered():
    from service.training.ragged import drop_answers
    from service.training.splits import answered_sets

    ds = drop_answers(synthetic_dataset(n_groups=10, n_questions=200), 0.75, 0)
    qids = scorable_question_ids(ds)
    base = make_split(ds.groups, qids, 0.6, 0, 5, answered_sets(ds))
    _, known_split, new_split = new_context_splits(ds, base, 0.3, 0, 5)
    for g in known_split.test_groups:
        assert all(any(ds.has(t, q) for t in base.train_groups) for q in known_split.targets_of(g))
    # the methods of the known targets run on them (train_mean raised on a question no train group answered)
    contexts = [group_context(ds, g, known_split.context_of(g)) for g in known_split.test_groups]
    predict_many("train_mean", ds, base.train_groups, contexts, known_split.all_targets)
