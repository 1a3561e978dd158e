"""The protocols on questions held out of meta-training: new questions (the context known, the targets new) and new
context (a group brings its own survey: its context held out, its targets known or new)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from service.gpo.features import FeatureSpec
from service.progress import progress_bar
from service.training.datasets import PreferenceDataset
from service.training.evaluate import EvalConfig, evaluate_split
from service.training.fit import TrainConfig, train_gpo
from service.training.items import ItemTable
from service.training.splits import (
    Split,
    answered_sets,
    draw_group_context,
    make_split,
    scorable_question_ids,
    validation_groups,
)

log = logging.getLogger(__name__)


def new_question_split(
    dataset: PreferenceDataset, split: Split, share: float, seed: int, n_context: int
) -> tuple[list[str], Split]:
    """Questions known to meta-training, and the split scored on the held-out ones.

    `share` of the scorable questions (drawn with the seed) are held out of meta-training entirely; the
    test groups' context is `n_context` known questions and their targets are the held-out questions.
    Ragged data: a test group's context is drawn from the known questions it answered (`draw_group_context`)
    and its targets are the held-out questions it answered; a group with too few of either is skipped.
    """
    qids = list(dict.fromkeys([*split.context_qids, *split.target_qids, *split.all_targets]))
    rng = np.random.default_rng([seed, 0x4E4557])  # "NEW": a stream of its own
    held = set(rng.choice(qids, size=int(round(share * len(qids))), replace=False).tolist())
    known = [q for q in qids if q not in held]
    ctx = tuple(str(q) for q in rng.choice(known, size=n_context, replace=False))
    targets = tuple(q for q in qids if q in held)
    contexts, group_targets, scored, skipped = {}, {}, [], list(split.skipped_groups)
    for i, g in enumerate(split.test_groups):
        pool = [q for q in known if dataset.has(g, q)]
        own_targets = tuple(q for q in targets if dataset.has(g, q))
        if len(pool) < n_context or not own_targets:
            skipped.append(g)
            continue
        scored.append(g)
        own = draw_group_context(ctx, pool, n_context, [seed, 0x4E4557, i])
        if own != ctx or own_targets != targets:
            contexts[g], group_targets[g] = own, own_targets
    if len(skipped) > len(split.skipped_groups):
        log.warning("new questions: test groups with too few known or held-out answers skipped: %s", skipped)
    return known, Split(
        split.train_groups,
        tuple(scored),
        ctx,
        targets,
        split.split,
        split.seed,
        contexts,
        group_targets,
        tuple(skipped),
    )


def run_new_question_protocol(
    dataset: PreferenceDataset,
    table: ItemTable,
    spec: FeatureSpec,
    train_cfg: TrainConfig,
    cfg: EvalConfig,
    model_cfg: dict | None = None,
    lm=None,
    split_frac: float = 0.6,
    on_run: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Protocol 2 (what serving meets): meta-train without `new_question_share` of the questions, then
    score test groups on those questions only. No train group answered them, so the population-prior
    baselines cannot predict them: GPO is compared with uniform and the LLM baselines, and with its own
    score on known questions (how much of its advantage over uniform it keeps), and with `linear_probe`, which reads
    a new question's answers from its options' embeddings (service.training.probe). `on_run(records)`: as in
    `run_group_protocol`, after each seed."""
    from service.training.lm_baselines import lm_eval_questions

    qids = scorable_question_ids(dataset)
    records = []
    bar = progress_bar(len(cfg.seeds), "new-questions protocol", unit="run", enabled=cfg.progress)
    for seed in cfg.seeds:
        bar.set_postfix(seed=seed)
        base = make_split(dataset.groups, qids, split_frac, seed, cfg.n_context, answered_sets(dataset))
        known, split = new_question_split(dataset, base, cfg.new_question_share, seed, cfg.n_context)
        fit, val = validation_groups(split.train_groups, seed)
        tcfg = TrainConfig(**{**train_cfg.__dict__, "seed": seed})
        result = train_gpo(table, dataset, fit, val, table.qindex(known), spec, tcfg, model_cfg)
        lm_sample = lm_eval_questions(dataset, cfg.lm_questions, 0) if lm is not None else []
        lm_sample = [q for q in split.target_qids if q in set(lm_sample)] or list(split.target_qids)[: cfg.lm_questions]
        found = evaluate_split(
            dataset,
            table,
            split,
            result,
            ["uniform"],
            lm=lm,
            lm_methods=cfg.lm_methods,
            lm_sample=lm_sample,
            probe_known=known,
        )
        # the same model on known questions (the context's other known questions it answered as targets)
        known_targets = {
            g: tuple(q for q in known if q not in set(split.context_of(g)) and dataset.has(g, q))
            for g in split.group_contexts
        }
        known_split = Split(
            split.train_groups,
            split.test_groups,
            split.context_qids,
            tuple(q for q in known if q not in set(split.context_qids)),
            split.split,
            seed,
            split.group_contexts,
            known_targets,
        )
        for r in evaluate_split(dataset, table, known_split, result, ["uniform"], subsets=("all",), probe_known=known):
            r["subset"] = "known_questions"
            found.append(r)
        for r in found:
            r.update(protocol="new_questions", split=split_frac, seed=seed, n_context=cfg.n_context)
            if r["method"] == "gpo":
                r.update(train_wall_s=result.wall_s, best_step=result.best_step, val_alignment=result.best_val)
        records += found
        log.info(
            "new questions, seed %d: %s",
            seed,
            {(r["method"], r["subset"]): round(r["alignment"], 4) for r in found},
        )
        bar.update(1)
        if on_run is not None:
            on_run(records)
    bar.close()
    return records


def new_context_splits(
    dataset: PreferenceDataset, split: Split, share: float, seed: int, n_context: int
) -> tuple[list[str], Split, Split]:
    """(known questions, the split with known targets, the split with new targets): a group brings its own survey.

    `share` of the scorable questions (drawn with the seed, a stream of its own) are held out of meta-training;
    each test group's `n_context` context questions are drawn from the held-out questions it answered (a shared
    draw, topped up by its own on ragged data). Its targets are the known questions it answered (first split; on
    ragged data, those some train group answered) and the other held-out questions it answered (second split). A
    group with too few of either is skipped.
    """
    qids = list(dict.fromkeys([*split.context_qids, *split.target_qids, *split.all_targets]))
    rng = np.random.default_rng([seed, 0x435458])  # "CTX"
    held = [str(q) for q in rng.choice(qids, size=int(round(share * len(qids))), replace=False)]
    held_set = set(held)
    known = [q for q in qids if q not in held_set]
    if len(held) <= n_context:
        raise ValueError(f"new context: {len(held)} held-out questions leave no target beside {n_context} context ones")
    shared = tuple(held[:n_context])  # already a random draw
    by_train = {q for q in known if any(dataset.has(t, q) for t in split.train_groups)}  # ragged: known to them
    contexts, known_t, new_t, scored, skipped = {}, {}, {}, [], list(split.skipped_groups)
    for i, g in enumerate(split.test_groups):
        pool = [q for q in held if dataset.has(g, q)]
        if len(pool) <= n_context:
            skipped.append(g)
            continue
        ctx = draw_group_context(shared, pool, n_context, [seed, 0x435458, i])
        mine_known = tuple(q for q in known if dataset.has(g, q) and q in by_train)
        mine_new = tuple(q for q in qids if q in held_set and q not in set(ctx) and dataset.has(g, q))
        if not mine_known:
            skipped.append(g)
            continue
        scored.append(g)
        contexts[g], known_t[g], new_t[g] = ctx, mine_known, mine_new
    if not scored:
        raise ValueError("new context: no test group answered enough held-out and known questions")
    if len(skipped) > len(split.skipped_groups):
        log.warning("new context: test groups with too few held-out or known answers skipped: %s", skipped)

    def of(targets: dict[str, tuple[str, ...]]) -> Split:
        return Split(
            split.train_groups,
            tuple(scored),
            shared,
            tuple(q for q in qids if any(q in targets[g] for g in scored)),
            split.split,
            split.seed,
            contexts,
            targets,
            tuple(skipped),
        )

    return known, of(known_t), of(new_t)


def run_new_context_protocol(
    dataset: PreferenceDataset,
    table: ItemTable,
    spec: FeatureSpec,
    train_cfg: TrainConfig,
    cfg: EvalConfig,
    model_cfg: dict | None = None,
    split_frac: float = 0.6,
    on_run: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Protocol 3 (a group brings its own survey): meta-train without `new_question_share` of the questions; each
    test group's context is drawn from those held-out questions, and it is scored on the known questions
    (subset "known_targets") and on the other held-out ones ("new_targets"). Methods: GPO, uniform, `train_mean`
    (known targets only: it needs the train groups' answers) and `linear_probe`. The baselines that fit a group
    to the train groups' answers on its context questions (mixture, latent_factor, nearest_group) would read
    the held-out questions' answers, so they are not scored here."""
    qids = scorable_question_ids(dataset)
    records = []
    bar = progress_bar(len(cfg.seeds), "new-context protocol", unit="run", enabled=cfg.progress)
    for seed in cfg.seeds:
        bar.set_postfix(seed=seed)
        base = make_split(dataset.groups, qids, split_frac, seed, cfg.n_context, answered_sets(dataset))
        known, known_split, new_split = new_context_splits(dataset, base, cfg.new_question_share, seed, cfg.n_context)
        fit, val = validation_groups(known_split.train_groups, seed)
        tcfg = TrainConfig(**{**train_cfg.__dict__, "seed": seed})
        result = train_gpo(table, dataset, fit, val, table.qindex(known), spec, tcfg, model_cfg)
        found = []
        for subset, split, baselines in (
            ("known_targets", known_split, ["uniform", "train_mean"]),
            ("new_targets", new_split, ["uniform"]),
        ):
            for r in evaluate_split(dataset, table, split, result, baselines, subsets=("all",), probe_known=known):
                r["subset"] = subset
                found.append(r)
        for r in found:
            r.update(protocol="new_context", split=split_frac, seed=seed, n_context=cfg.n_context)
            if r["method"] == "gpo":
                r.update(train_wall_s=result.wall_s, best_step=result.best_step, val_alignment=result.best_val)
        records += found
        log.info(
            "new context, seed %d: %s",
            seed,
            {(r["method"], r["subset"]): (round(r["alignment"], 4), round(r.get("contrast_r", 0.0), 2)) for r in found},
        )
        bar.update(1)
        if on_run is not None:
            on_run(records)
    bar.close()
    return records
