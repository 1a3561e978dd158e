"""The reworded-questions protocol (service.training.reworded, evaluate.score_reworded)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from service.gpo.features import FeatureSpec
from service.training.evaluate import score_reworded
from service.training.fit import TrainConfig, train_gpo
from service.training.items import build_item_table
from service.training.matching import VALIDATION_REWORDINGS
from service.training.reworded import SHIPPED_REWORDINGS, SUFFIX, Rewordings, load_rewordings
from service.training.splits import make_split, scorable_question_ids, validation_groups

from .test_probe import text_dataset


def test_load_rewordings_keeps_the_originals_scale_and_refuses_another_option_count(tmp_path: Path):
    ds, _ = text_dataset(n_groups=4, n_questions=5)
    q = ds.questions[0]
    path = tmp_path / "r.jsonl"
    lines = [
        {"qid": q.qid, "text": "In other words?", "options": [f"x{i}" for i in range(q.n_options)]},
        {"qid": "not-here", "text": "?", "options": ["a"]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ((qid, new),) = load_rewordings(path, ds)
    assert qid == q.qid and new.qid == q.qid + SUFFIX and new.ordinals == q.ordinals and new.text == "In other words?"
    lines[0]["options"] = ["only one"]
    path.write_text(json.dumps(lines[0]) + "\n")
    with pytest.raises(ValueError, match="options, its rewording 1"):
        load_rewordings(path, ds)


def test_the_shipped_rewordings_fit_the_shipped_opinionqa(opinionqa):
    pairs = load_rewordings(SHIPPED_REWORDINGS, opinionqa)
    assert len(pairs) >= 150 and len({qid for qid, _ in pairs}) == len(pairs)
    for qid, q in pairs:
        original = opinionqa.question(qid)
        assert " ".join(q.text.lower().split()) != " ".join(original.text.lower().split())


def test_the_validation_rewordings_are_disjoint_from_the_reported_ones_and_fit_opinionqa(opinionqa):
    """The matcher's threshold is chosen on VALIDATION_REWORDINGS: none of their questions may be one the reworded
    protocol reports, or the protocol would score a threshold fitted on its own questions."""
    validation = load_rewordings(VALIDATION_REWORDINGS, opinionqa)
    reported = {qid for qid, _ in load_rewordings(SHIPPED_REWORDINGS, opinionqa)}
    assert len(validation) >= 150 and len({qid for qid, _ in validation}) == len(validation)
    assert not {qid for qid, _ in validation} & reported


@pytest.fixture(scope="module")
def run():
    torch.set_num_threads(1)
    ds, table = text_dataset(n_groups=16, n_questions=60)
    rng = np.random.default_rng(4)
    pairs = [(q.qid, replace(q, qid=q.qid + SUFFIX, text="Put another way: " + q.text)) for q in ds.questions[::2]]
    # a paraphrase embeds near its original: the original's option embeddings plus a little noise
    emb = np.concatenate([table.emb[table.rows(table.qindex([qid]))] for qid, _ in pairs])
    emb = emb + rng.normal(size=emb.shape).astype(np.float32) * 0.05
    rewordings = Rewordings(
        pairs, build_item_table([*table.questions, *(q for _, q in pairs)], np.concatenate([table.emb, emb]))
    )
    qids = scorable_question_ids(ds)
    split = make_split(ds.groups, qids, 0.6, 0, 10)
    fit, val = validation_groups(split.train_groups, 0)
    spec = FeatureSpec(emb_dim=table.emb.shape[1], prior_rank=2)
    cfg = TrainConfig(max_steps=3, batch_size=4, eval_every=3, progress=False, time_budget_s=None, val_draws=1)
    tiny = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16}
    result = train_gpo(table, ds, fit, val, table.qindex(qids), spec, cfg, tiny)
    return ds, rewordings, split, result, qids


def test_reworded_protocol_scores_the_same_pairs_as_worded_and_as_reworded(run):
    ds, rewordings, split, result, qids = run
    records = score_reworded(ds, rewordings, split, result, qids)
    by = {(r["method"], r["subset"]): r for r in records}
    assert set(by) == {
        ("gpo", "original"), ("uniform", "original"), ("latent_factor", "original"), ("linear_probe", "original"),
        ("gpo", "reworded"), ("uniform", "reworded"), ("linear_probe", "reworded"),
    }  # fmt: skip
    assert by["gpo", "original"]["n_scored"] == by["gpo", "reworded"]["n_scored"] > 0
    assert by["uniform", "original"]["alignment"] == pytest.approx(by["uniform", "reworded"]["alignment"])
    # GPO reads a reworded question through its text prior: better than uniform, and group-specific
    assert by["gpo", "reworded"]["alignment"] > by["uniform", "reworded"]["alignment"]
    assert by["gpo", "reworded"]["contrast_r"] > 0.3
    # the known question with its own prior stays better than its rewording
    assert by["gpo", "original"]["alignment"] > by["gpo", "reworded"]["alignment"]


def test_no_training_group_answered_a_reworded_question(run):
    ds, rewordings, split, _, _ = run
    aug = rewordings.dataset(ds, list(split.test_groups))
    for _, q in rewordings.pairs:
        assert not any(aug.has(g, q.qid) for g in split.train_groups)
        assert all(aug.has(g, q.qid) for g in split.test_groups)


def test_the_results_page_says_how_much_of_the_edge_survives(run):
    from service.training.report import reworded_table

    ds, rewordings, split, result, qids = run
    records = [dict(r, protocol="reworded") for r in score_reworded(ds, rewordings, split, result, qids)]
    text = reworded_table(records)
    assert "| gpo | reworded |" in text and "of its known-question edge over uniform on the reworded" in text
