"""Evaluation protocol: GPO and baselines side by side on identical group splits and context questions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from service.gpo.features import FeatureSpec
from service.gpo.matching import borrowed_features
from service.gpo.prior import PopulationPrior
from service.progress import progress_bar
from service.training.baselines import group_context, predict_many
from service.training.datasets import PreferenceDataset
from service.training.features import known_items
from service.training.fit import (
    TrainConfig,
    TrainResult,
    make_eval_episode,
    predict_episodes,
    split_by_question,
    train_gpo,
)
from service.training.items import ItemTable
from service.training.metrics import group_contrast, question_alignments
from service.training.probe import linear_probe_many
from service.training.reworded import Rewordings
from service.training.splits import (
    Split,
    answered_sets,
    make_split,
    scorable_question_ids,
    validation_groups,
)
from service.training.text_prior import text_features

log = logging.getLogger(__name__)

NONNEURAL = ("uniform", "train_mean", "nearest_group", "mixture", "latent_factor")
SUBSETS = ("all", "contentious")
CURVE_SIZES = (1, 2, 5, 10, 20, 50, 100)


@dataclass
class EvalConfig:
    splits: Sequence[float] = (0.4, 0.6, 0.8)
    seeds: Sequence[int] = (0, 1, 2)
    n_context: int = 20
    baselines: Sequence[str] = NONNEURAL
    curve_split: float | None = 0.6  # the context-size curve is drawn on this split (None: no curve)
    curve_sizes: Sequence[int] = CURVE_SIZES
    curve_baselines: Sequence[str] = ("uniform", "train_mean", "mixture", "latent_factor")
    # LLM baselines (service.training.lm_baselines), scored with every other method on a fixed sample of
    # `lm_questions` target questions (subset "lm_sample"): the LLM is too slow for all 680 x 17 on a CPU.
    lm_methods: Sequence[str] = ()
    lm_questions: int = 50
    new_question_share: float = 0.2  # new-questions protocol: share of questions held out of meta-training
    # reworded-questions protocol: on this split, the test groups' targets that have a rewording are scored as
    # worded in the survey and as reworded (service.training.reworded); None: not run
    reworded: Rewordings | None = None
    reworded_split: float = 0.6
    progress: bool = True  # a bar over the (split, seed) runs (stderr, terminals only: service.progress)


def gpo_predictions(result: TrainResult, table: ItemTable, dataset: PreferenceDataset, split: Split) -> list[dict]:
    """Per test group {qid: predicted distribution} for its targets, from its context answers.

    Items of questions outside the training questions (`TrainResult.known_q`: the new-questions protocol's held-out
    questions), and of training questions that too few training groups answered (`TrainResult.thin_items`), are
    shown as new questions, as at serving: with the model's text prior (`TrainResult.text_prior`), their prior
    features are read from their options' text; without it, known flag 0 and zeros.
    """
    spec = result.spec
    known_q = result.known_q if result.known_q is not None else np.ones(len(table.questions), dtype=bool)
    known = known_items(table, known_q)
    if result.thin_items is not None:
        known = known & ~result.thin_items
    x = torch.from_numpy(spec.build(table.emb, result.prior, np.arange(table.n_items), known))
    if result.text_prior is not None:  # new questions: prior features read from their options' text, as at serving
        rows = np.flatnonzero(~known)
        x[torch.from_numpy(rows), spec.prior_slice] = torch.from_numpy(text_features(result.text_prior, table, rows))
    if result.matcher is not None and table.qvec is not None and result.prior is not None:
        # a new question near enough a known one borrows its prior, as at serving (service.gpo.matching)
        new_q = np.unique(table.item_q[~known])
        index, _ = result.matcher.nearest_many(table.qvec[new_q], table.q_len[new_q])
        for q, j in zip(new_q, index, strict=True):
            rows = table.rows([q])
            options = None if table.ovec is None else table.ovec[rows]
            if j >= 0:
                lent = result.matcher.rows(int(j), options)
                x[torch.from_numpy(rows), spec.prior_slice] = torch.from_numpy(borrowed_features(result.prior, lent))
            elif result.matcher.blend is not None and result.text_prior is not None:
                text = x[torch.from_numpy(rows), spec.prior_slice].numpy()
                blended = result.matcher.blended_features(result.prior, text, table.qvec[q], options)
                x[torch.from_numpy(rows), spec.prior_slice] = torch.from_numpy(blended)
    episodes, targets = [], []
    for g in split.test_groups:
        ctx, tgt = table.qindex(split.context_of(g)), table.qindex(split.targets_of(g))
        y = torch.from_numpy(np.nan_to_num(table.group_y(dataset, g)))
        episodes.append(make_eval_episode(table, x, y, ctx, tgt))
        targets.append(tgt)
    out = []
    for g, tgt, (mean, _) in zip(split.test_groups, targets, predict_episodes(result.model, episodes), strict=True):
        out.append(dict(zip(split.targets_of(g), split_by_question(table, tgt, mean), strict=True)))
    return out


def score(dataset: PreferenceDataset, group: str, preds: dict, qids: Sequence[str]) -> list[float]:
    """Alignment of every scorable question in `qids` that the group answered (questions without a defined
    score are skipped)."""
    out = []
    for qid in qids:
        if not dataset.has(group, qid):
            continue
        s = question_alignments(dataset.question(qid), preds[qid], dataset.dist(group, qid))
        if s is not None:
            out.append(float(s))
    return out


def evaluate_split(
    dataset: PreferenceDataset,
    table: ItemTable,
    split: Split,
    result: TrainResult | None,
    baselines: Sequence[str],
    *,
    lm=None,
    lm_methods: Sequence[str] = (),
    lm_sample: Sequence[str] = (),
    subsets: Sequence[str] = SUBSETS,
    probe_known: Sequence[str] | None = None,
) -> list[dict]:
    """Records {method, subset, alignment, per_group, n_scored, contrast_r, ...} for GPO (if given) and the
    baselines.

    With `lm` and `lm_methods`, the LLM baselines are scored too, on the targets in `lm_sample`
    (subset "lm_sample", where every other method is scored as well, for a like-for-like comparison).
    With `probe_known` (the questions whose train-group answers it may use), the text baseline `linear_probe`
    (service.training.probe) is scored too.
    """
    contexts = [group_context(dataset, g, split.context_of(g)) for g in split.test_groups]
    targets = split.all_targets  # each group is scored on its own targets (`Split.targets_of`)
    methods: dict[str, list[dict]] = {}
    if result is not None:
        methods["gpo"] = gpo_predictions(result, table, dataset, split)
    for name in baselines:
        methods[name] = predict_many(name, dataset, split.train_groups, contexts, targets)
    if probe_known is not None:
        methods["linear_probe"] = linear_probe_many(
            dataset, table, split.train_groups, probe_known, contexts, targets, seed=split.seed
        )
    subset_qids = {
        "all": list(targets),
        "contentious": [q for q in targets if "contentious" in dataset.question(q).tags],
    }
    subset_qids = {k: v for k, v in subset_qids.items() if k in subsets}
    if lm is not None and lm_methods:
        from service.training.lm_baselines import predict_lm_many

        sample = [q for q in targets if q in set(lm_sample)]
        subset_qids["lm_sample"] = sample
        mine = [[q for q in sample if q in set(split.targets_of(g))] for g in split.test_groups]  # ragged: its own
        for name in lm_methods:
            methods[name] = predict_lm_many(
                name, lm, dataset, list(split.test_groups), contexts, sample, targets_of=mine
            )
    own_targets = {g: set(split.targets_of(g)) for g in split.test_groups}
    records = []
    for method, per_group in methods.items():
        for subset, qids in subset_qids.items():
            if method in lm_methods and subset != "lm_sample":
                continue
            pg = {
                g: score(dataset, g, p, [q for q in qids if q in own_targets[g]])
                for g, p in zip(split.test_groups, per_group, strict=True)
            }
            pooled = [s for v in pg.values() for s in v]
            if not pooled:  # e.g. a dataset without contentious tags: no record rather than a NaN score
                continue
            record = {
                "method": method,
                "subset": subset,
                "alignment": float(np.mean(pooled)),
                "n_scored": len(pooled),
                "per_group": {g: float(np.mean(v)) for g, v in pg.items() if v},  # groups with a scored target
            }
            record.update(contrast_fields(dataset, split.test_groups, per_group, qids, own_targets))
            records.append(record)
    return records


def contrast_fields(
    dataset: PreferenceDataset,
    groups: Sequence[str],
    per_group: Sequence[dict],
    qids: Sequence[str],
    own_targets: dict[str, set[str]],
) -> dict:
    """The method's group contrast on `qids` (`metrics.group_contrast`: r between predicted and true differences of
    every pair of test groups that had the question as a target, with both spreads); {} when no question has two
    such groups."""
    items = []
    for q in qids:
        have = [(g, p) for g, p in zip(groups, per_group, strict=True) if q in own_targets[g] and dataset.has(g, q)]
        if len(have) >= 2:
            items.append(
                (dataset.question(q), [np.asarray(p[q]) for _, p in have], [dataset.dist(g, q) for g, _ in have])
            )
    try:
        c = group_contrast(items)
    except ValueError:  # no question with two groups, or no true difference: nothing to report
        return {}
    return {"contrast_r": c.r, "pred_spread": c.pred_spread, "true_spread": c.true_spread, "contrast_pairs": c.n_pairs}


def run_group_protocol(
    dataset: PreferenceDataset,
    table: ItemTable,
    spec: FeatureSpec,
    train_cfg: TrainConfig,
    cfg: EvalConfig,
    model_cfg: dict | None = None,
    lm=None,
    examples: list[dict] | None = None,
    on_run: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Splits x seeds: meta-train on the split's train groups (validation groups taken from them), then
    score every method on the test groups' targets given the same context questions. On `curve_split`
    the same trained model is also scored with 1..100 context questions (the context-size curve).
    `on_run(records)` runs after each (split, seed) with every record so far (to save them as they come)."""
    from service.training.lm_baselines import lm_eval_questions

    qids = scorable_question_ids(dataset)
    answered = answered_sets(dataset)
    train_q = table.qindex(qids)
    lm_sample = lm_eval_questions(dataset, cfg.lm_questions, 0) if lm is not None and cfg.lm_methods else []
    records = []
    bar = progress_bar(len(cfg.splits) * len(cfg.seeds), "groups protocol", unit="run", enabled=cfg.progress)
    for split_frac in cfg.splits:
        for seed in cfg.seeds:
            bar.set_postfix(split=split_frac, seed=seed)
            split = make_split(dataset.groups, qids, split_frac, seed, cfg.n_context, answered)
            fit, val = validation_groups(split.train_groups, seed)
            tcfg = TrainConfig(**{**train_cfg.__dict__, "seed": seed})
            result = train_gpo(table, dataset, fit, val, train_q, spec, tcfg, model_cfg)
            found = evaluate_split(
                dataset, table, split, result, cfg.baselines, lm=lm, lm_methods=cfg.lm_methods, lm_sample=lm_sample
            )
            for r in found:
                r.update(protocol="groups", split=split_frac, seed=seed, n_context=cfg.n_context)
                if split.skipped_groups:  # ragged data: test groups with too few answers are counted
                    r.update(skipped_groups=list(split.skipped_groups))
                if r["method"] == "gpo":
                    r.update(train_wall_s=result.wall_s, best_step=result.best_step, val_alignment=result.best_val)
            records += found
            log.info(
                "split %.1f seed %d (%.0f s training): %s",
                split_frac,
                seed,
                result.wall_s,
                {r["method"]: round(r["alignment"], 4) for r in found if r["subset"] == "all"},
            )
            if cfg.reworded is not None and abs(split_frac - cfg.reworded_split) < 1e-9:
                for r in score_reworded(dataset, cfg.reworded, split, result, qids):
                    r.update(protocol="reworded", split=split_frac, seed=seed, n_context=cfg.n_context)
                    records.append(r)
            if examples is not None and not examples and split_frac == cfg.curve_split:
                examples += example_predictions(dataset, table, split, result)
            if cfg.curve_split is not None and abs(split_frac - cfg.curve_split) < 1e-9:
                for n in cfg.curve_sizes:
                    if n == cfg.n_context:
                        continue  # already scored above
                    try:
                        s_n = make_split(dataset.groups, qids, split_frac, seed, n, answered)
                    except ValueError as e:  # ragged data: no test group answered n + 1 usable questions
                        log.warning("context-size curve: %d context questions skipped: %s", n, e)
                        continue
                    for r in evaluate_split(dataset, table, s_n, result, cfg.curve_baselines, subsets=("all",)):
                        r.update(protocol="groups", split=split_frac, seed=seed, n_context=n)
                        if s_n.skipped_groups:
                            r.update(skipped_groups=list(s_n.skipped_groups))
                        records.append(r)
            bar.update(1)
            if on_run is not None:
                on_run(records)
    bar.close()
    return records


def example_predictions(
    dataset: PreferenceDataset, table: ItemTable, split: Split, result: TrainResult, n_groups: int = 2, n_q: int = 3
) -> list[dict]:
    """A few (group, question) pairs with GPO's, the mixture's and the true distribution (for a figure):
    the first test groups, and the contentious targets on which those groups disagree most."""
    groups = list(split.test_groups[:n_groups])
    gpo = gpo_predictions(result, table, dataset, split)[:n_groups]
    contexts = [group_context(dataset, g, split.context_of(g)) for g in groups]
    shared = [q for q in split.targets_of(groups[0]) if all(q in set(split.targets_of(g)) for g in groups)]
    if not shared:  # ragged data: the groups share no target
        return []
    mix = predict_many("mixture", dataset, split.train_groups, contexts, shared)
    cands = [q for q in shared if "contentious" in dataset.question(q).tags] or shared
    spread = [np.abs(dataset.dist(groups[0], q) - dataset.dist(groups[-1], q)).sum() for q in cands]
    chosen = [cands[i] for i in np.argsort(spread)[::-1][:n_q]]
    out = []
    for g, gp, mp in zip(groups, gpo, mix, strict=True):
        for q in chosen:
            question = dataset.question(q)
            out.append(
                {
                    "group": g,
                    "qid": q,
                    "question": question.text,
                    "options": list(question.options),
                    "true": dataset.dist(g, q).tolist(),
                    "gpo": np.asarray(gp[q]).tolist(),
                    "mixture": np.asarray(mp[q]).tolist(),
                }
            )
    return out


def padded_result(result: TrainResult, n_questions: int, table: ItemTable) -> TrainResult:
    """`result` for a table that appends new questions after a data set's `n_questions` (reworded or free-text
    versions of its questions): the appended questions are unknown to the prior (zeros, never read), so they get
    the features a new question gets at serving."""
    known_q = np.zeros(len(table.questions), dtype=bool)
    known_q[:n_questions] = True if result.known_q is None else result.known_q
    thin = np.zeros(table.n_items, dtype=bool)
    if result.thin_items is not None:
        thin[: len(result.thin_items)] = result.thin_items
    prior = result.prior
    if prior is not None:
        extra = table.n_items - len(prior.mean)
        prior = PopulationPrior(
            np.concatenate([prior.mean, np.zeros(extra, np.float32)]),
            np.concatenate([prior.loadings, np.zeros((extra, prior.rank), np.float32)]),
        )
    return replace(result, known_q=known_q, thin_items=thin, prior=prior)


def score_reworded(
    dataset: PreferenceDataset, rewordings: Rewordings, split: Split, result: TrainResult, known_qids: Sequence[str]
) -> list[dict]:
    """The reworded-questions protocol on one trained split: each test group's targets that have a rewording, scored
    as worded in the survey (subset "original": GPO, uniform, latent_factor, linear_probe) and as reworded
    ("reworded": GPO, uniform, linear_probe; a reworded question is new to all of them), with the same contexts.
    `known_qids`: the questions of meta-training (what linear_probe may read answers of)."""
    test = list(split.test_groups)
    aug = rewordings.dataset(dataset, test)
    table = rewordings.table
    padded = padded_result(result, len(dataset.questions), table)
    reworded_of = {qid: q.qid for qid, q in rewordings.pairs}
    originals = {g: tuple(q for q in split.targets_of(g) if q in reworded_of) for g in test}
    records = []
    for subset, targets, baselines in (
        ("original", originals, ["uniform", "latent_factor"]),
        ("reworded", {g: tuple(reworded_of[q] for q in t) for g, t in originals.items()}, ["uniform"]),
    ):
        scored = tuple(g for g in test if targets[g])
        if not scored:
            return []
        sub = Split(
            split.train_groups,
            scored,
            split.context_qids,
            tuple(dict.fromkeys(q for g in scored for q in targets[g])),
            split.split,
            split.seed,
            {g: split.context_of(g) for g in scored},
            {g: targets[g] for g in scored},
        )
        for r in evaluate_split(aug, table, sub, padded, baselines, subsets=("all",), probe_known=known_qids):
            r["subset"] = subset
            records.append(r)
    return records
