"""Evaluation protocol: GPO and baselines side by side on identical group splits and context questions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from service.training.baselines import group_context, predict_many
from service.training.datasets import PreferenceDataset
from service.training.features import FeatureSpec, known_items
from service.training.fit import (
    TrainConfig,
    TrainResult,
    make_eval_episode,
    predict_episodes,
    split_by_question,
    train_gpo,
)
from service.training.items import ItemTable
from service.training.metrics import question_alignments
from service.training.splits import Split, make_split, scorable_question_ids, validation_groups

log = logging.getLogger(__name__)

NONNEURAL = ("uniform", "train_mean", "nearest_group", "mixture")
SUBSETS = ("all", "contentious")


@dataclass
class EvalConfig:
    splits: Sequence[float] = (0.4, 0.6, 0.8)
    seeds: Sequence[int] = (0, 1, 2)
    n_context: int = 20
    baselines: Sequence[str] = NONNEURAL


def gpo_predictions(result: TrainResult, table: ItemTable, dataset: PreferenceDataset, split: Split) -> list[dict]:
    """Per test group {qid: predicted distribution} for the split's targets, from its context answers."""
    spec = result.spec
    known = known_items(table, np.ones(len(table.questions), dtype=bool))
    x = torch.from_numpy(spec.build(table.emb, result.prior, np.arange(table.n_items), known))
    ctx, tgt = table.qindex(split.context_qids), table.qindex(split.target_qids)
    episodes = [
        make_eval_episode(table, x, torch.from_numpy(np.nan_to_num(table.group_y(dataset, g))), ctx, tgt)
        for g in split.test_groups
    ]
    out = []
    for mean, _ in predict_episodes(result.model, episodes):
        out.append(dict(zip(split.target_qids, split_by_question(table, tgt, mean), strict=True)))
    return out


def score(dataset: PreferenceDataset, group: str, preds: dict, qids: Sequence[str]) -> list[float]:
    """Alignment of every scorable question in `qids` (questions without a defined score are skipped)."""
    out = []
    for qid in qids:
        s = question_alignments(dataset.question(qid), preds[qid], dataset.dist(group, qid))
        if s is not None:
            out.append(float(s))
    return out


def evaluate_split(
    dataset: PreferenceDataset, table: ItemTable, split: Split, result: TrainResult | None, baselines: Sequence[str]
) -> list[dict]:
    """Records {method, subset, alignment, per_group, n_scored} for GPO (if given) and the baselines."""
    contexts = [group_context(dataset, g, split.context_qids) for g in split.test_groups]
    methods: dict[str, list[dict]] = {}
    if result is not None:
        methods["gpo"] = gpo_predictions(result, table, dataset, split)
    for name in baselines:
        methods[name] = predict_many(name, dataset, split.train_groups, contexts, split.target_qids)
    subsets = {
        "all": list(split.target_qids),
        "contentious": [q for q in split.target_qids if "contentious" in dataset.question(q).tags],
    }
    records = []
    for method, per_group in methods.items():
        for subset, qids in subsets.items():
            pg = {g: score(dataset, g, p, qids) for g, p in zip(split.test_groups, per_group, strict=True)}
            pooled = [s for v in pg.values() for s in v]
            if not pooled:  # e.g. a dataset without contentious tags: no record rather than a NaN score
                continue
            records.append(
                {
                    "method": method,
                    "subset": subset,
                    "alignment": float(np.mean(pooled)),
                    "n_scored": len(pooled),
                    "per_group": {g: float(np.mean(v)) for g, v in pg.items()},
                }
            )
    return records


def run_group_protocol(
    dataset: PreferenceDataset,
    table: ItemTable,
    spec: FeatureSpec,
    train_cfg: TrainConfig,
    cfg: EvalConfig,
    model_cfg: dict | None = None,
) -> list[dict]:
    """Splits x seeds: meta-train on the split's train groups (validation groups taken from them), then
    score every method on the test groups' targets given the same 20 context questions."""
    qids = scorable_question_ids(dataset)
    train_q = table.qindex(qids)
    records = []
    for split_frac in cfg.splits:
        for seed in cfg.seeds:
            split = make_split(dataset.groups, qids, split_frac, seed, cfg.n_context)
            fit, val = validation_groups(split.train_groups, seed)
            tcfg = TrainConfig(**{**train_cfg.__dict__, "seed": seed})
            result = train_gpo(table, dataset, fit, val, train_q, spec, tcfg, model_cfg)
            for r in evaluate_split(dataset, table, split, result, cfg.baselines):
                r.update(protocol="groups", split=split_frac, seed=seed, n_context=cfg.n_context)
                if r["method"] == "gpo":
                    r.update(train_wall_s=result.wall_s, best_step=result.best_step, val_alignment=result.best_val)
                records.append(r)
            log.info(
                "split %.1f seed %d: %s",
                split_frac,
                seed,
                {
                    r["method"]: round(r["alignment"], 4)
                    for r in records[-len(cfg.baselines) * 2 - 2 :]
                    if r["subset"] == "all"
                },
            )
    return records


def markdown_table(records: Sequence[dict], subset: str = "all") -> str:
    """Mean alignment over seeds: one row per method, one column per split."""
    rows = [r for r in records if r["subset"] == subset and r.get("protocol", "groups") == "groups"]
    splits = sorted({r["split"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| method | " + " | ".join(f"{s:.0%}" for s in splits) + " |", "|---|" + "---|" * len(splits)]
    for m in methods:
        cells = []
        for s in splits:
            v = [r["alignment"] for r in rows if r["method"] == m and r["split"] == s]
            cells.append(f"{np.mean(v):.4f} ± {np.std(v):.4f}" if v else "–")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
