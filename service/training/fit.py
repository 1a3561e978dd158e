"""Meta-training of GPO on group episodes, with checkpoint selection on validation groups."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from service.gpo.batch import Episode, collate_buckets
from service.gpo.features import FeatureSpec, TextPrior
from service.gpo.matching import QuestionMatcher
from service.gpo.model import GPO, GPOConfig
from service.gpo.prior import PopulationPrior
from service.progress import progress_bar
from service.training.budget import Budget, TrainingStop
from service.training.datasets import PreferenceDataset
from service.training.episodes import (
    GroupFeatures,
    answered_questions,
    make_eval_episode,
    sample_episode,
    text_context_episodes,
)
from service.training.features import fit_group_priors, known_items
from service.training.items import ItemTable
from service.training.matching import fit_matcher
from service.training.metrics import question_alignments
from service.training.text_prior import fit_text_priors
from service.training.validation import (
    CheckpointScore,
    build_validation_episodes,
    choose_readout_ridge,
    choose_text_weight,
    hold_out_questions,
)

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Meta-training hyper-parameters (defaults: what RESULTS.md reports)."""

    max_steps: int = 1200
    batch_size: int = 8  # episodes per step
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_context: int = 10  # context questions per episode, uniform in [min_context, max_context]
    max_context: int = 100
    n_targets: int = 30  # target questions per episode
    prior_dropout: float = 0.3  # share of an episode's questions shown without prior features (new questions)
    # Items without an own prior (new, hidden, validation questions) show prior features read from their options'
    # text (out of fold in training; service.training.text_prior). Choice items, with the embedding and prior only.
    text_prior: bool = True
    # the text map's ridge: one strength for all its columns ("shared"), or one per column ("column": the mean's
    # deviation and each loading chosen apart by the same question folds)
    text_alpha: str = "shared"
    # soft borrowing (service.gpo.matching.BlendRule): a new question the matcher does not match leans on its nearest
    # known questions' priors beside its text estimate, by a rule chosen on training questions
    # ("off", "below": for questions the threshold leaves new, "all": in place of the threshold, "split": as "all" with
    # the mean's and the loadings' shares chosen apart, "contrast", "banded": service.gpo.matching.BLEND_MODES)
    neighbour_blend: str = "off"
    # Weight of new questions (targets without prior features) in the validation score that picks the
    # checkpoint; the rest is known questions. Serving meets both: OpinionQA questions and users' own.
    val_new_question_weight: float = 0.5
    # Share of the training questions kept out of every training episode as validation questions: the new-question
    # part of the validation score is measured on them (service.training.validation).
    val_question_share: float = 0.15
    # A checkpoint whose known-question validation falls this many standard errors below the untrained model's
    # (the closed-form prior readout) is not kept (service.training.validation.CheckpointScore).
    val_known_tolerance_se: float = 1.0
    # Start the ridge readout at the strength (of validation.RIDGE_GRID) its untrained model scores best with on the
    # validation groups' known questions (instead of GPOConfig.ridge_init).
    choose_ridge: bool = True
    eval_every: int = 100
    patience: int = 5  # evaluations without improvement before stopping
    val_context: int = 20  # context questions of a validation episode (as the test protocol)
    val_draws: int = 3  # context draws per validation group
    time_budget_s: float | None = 600.0
    # A run the time budget stops before this many steps (or min(this, max_steps)), or whose kept checkpoint is the
    # untrained one, is too short to trust: a WARNING, and an error with `--strict` (TrainingStop.shortfall).
    min_steps: int = 100
    prior_readout: str = "ridge"  # "none" | "mean" | "ridge": where option scores start (GPOConfig.prior_readout)
    seed: int = 0
    progress: bool = True


@dataclass
class TrainResult:
    model: GPO
    spec: FeatureSpec
    prior: PopulationPrior | None  # from all training groups: what test groups and serving use
    best_step: int
    best_val: float
    steps_run: int
    wall_s: float
    history: list[dict] = field(default_factory=list)
    stop: TrainingStop | None = None
    shortfall: str | None = None  # why the run is too short to trust (TrainingStop.shortfall), None when it is not
    # [I] bool: items of training questions that too few training groups answered for a prior (ragged data;
    # all False on complete data): test groups and serving see them as new questions (known flag 0)
    thin_items: np.ndarray | None = None
    # [Q] bool: the training questions (a prior may exist); None: every question. Other questions are new (flag 0).
    known_q: np.ndarray | None = None
    held_out_q: np.ndarray | None = None  # the validation questions kept out of training episodes (indices)
    text_prior: TextPrior | None = None  # prior features of new questions from their text (test groups, serving)
    # a question outside the bank borrows its nearest known question's prior (tables with question vectors)
    matcher: QuestionMatcher | None = None


def episodes_loss(model: GPO, episodes: Sequence[Episode]) -> torch.Tensor:
    """`model.loss(collate(episodes))` computed on groups of similar length (`collate_buckets`).

    The loss is a sum over each episode's targets averaged over episodes, so the groups' losses weighted by
    their sizes add up to the padded batch's loss (equal up to float rounding, gradients too; tested), at a
    fraction of the cost when episode lengths vary.
    """
    total = None
    for idx, batch in collate_buckets(episodes):
        part = model.loss(batch) * len(idx)
        total = part if total is None else total + part
    assert total is not None, "no episodes"
    return total / len(episodes)


@torch.no_grad()
def predict_episodes(model: GPO, episodes: Sequence[Episode], chunk: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mean, std) over each episode's target tokens, in token order; episodes of similar length run
    together, at most `chunk` at a time."""
    model.eval()
    out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(episodes)  # type: ignore[list-item]
    for idx, batch in collate_buckets(episodes, max_rows=chunk):
        pred = model(batch)
        for b, i in enumerate(idx):
            e = episodes[i]
            n = e.y.shape[0]
            tgt = ~e.is_context
            out[i] = (pred.mean[b, :n][tgt].numpy(), pred.std[b, :n][tgt].numpy())
    return out


def split_by_question(table: ItemTable, tgt_q: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    """Cut a flat per-target-item vector into one array per target question (none for no target question)."""
    if len(tgt_q) == 0:
        return []
    return np.split(values, np.cumsum(table.q_len[tgt_q])[:-1])


def episode_alignments(table: ItemTable, tgt_q: np.ndarray, pred: np.ndarray, true: np.ndarray) -> list[float]:
    """Alignment of each scorable target question (undefined ones skipped)."""
    scores = []
    for qi, p, t in zip(
        tgt_q, split_by_question(table, tgt_q, pred), split_by_question(table, tgt_q, true), strict=True
    ):
        s = question_alignments(table.questions[qi], p, t)
        if s is not None:
            scores.append(float(s))
    return scores


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% over max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@dataclass
class LoopResult:
    """What `meta_train_loop` returns: the best state (a copy), its validation score and step, and how it ended."""

    best_state: dict[str, torch.Tensor]
    best_val: float
    best_step: int
    steps_run: int
    history: list[dict]
    stop: TrainingStop


def meta_train_loop(
    model: GPO,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    batch_loss: Callable[[], torch.Tensor],
    validate: Callable[[], float] | None,
    last_parts: dict[str, float],
    budget: Budget,
) -> LoopResult:
    """The meta-training loop shared by every kind: AdamW steps on the loss of a freshly sampled batch
    (`batch_loss()`; warm-up + cosine learning rate, gradient clipping), validation every `cfg.eval_every` steps,
    early stopping on `cfg.patience`, and a wall-clock `budget` (which may have started before this call, e.g. at
    the command's start). The untrained model is a candidate too. Without `validate`, the negative training loss
    stands in for it.

    The budget ends the run early enough for one last step and validation to fit in it (their last measured
    durations), so the steps since the last validation are scored; when set-up already spent it, no step runs.
    A run the budget cut short is said in a WARNING line with the steps run of those planned.
    """
    best_val, best_step, bad = -float("inf"), 0, 0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history: list[dict] = []
    step, val_s, step_s, reason = 0, 0.0, 0.0, "max_steps"
    if validate is not None:
        t_val = time.perf_counter()
        best_val = validate()
        val_s = time.perf_counter() - t_val
        history.append(
            {"step": 0, "loss": float("nan"), "val_alignment": best_val, "elapsed_s": budget.elapsed(), **last_parts}
        )
    setup_s = budget.elapsed()
    if budget.exceeded(reserve_s=val_s):
        reason = "time_budget"
    bar = progress_bar(cfg.max_steps, "meta-training", unit="step", enabled=cfg.progress, leave=False)
    while step < cfg.max_steps and reason != "time_budget":
        t_step = time.perf_counter()
        model.train()
        for group_ in opt.param_groups:
            group_["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss = batch_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        step_s = time.perf_counter() - t_step
        out_of_time = budget.exceeded(reserve_s=step_s + val_s)  # another step and the last validation would not fit
        if step % cfg.eval_every == 0 or step == cfg.max_steps or out_of_time:
            t_val = time.perf_counter()
            val = validate() if validate is not None else -float(loss.item())
            val_s = time.perf_counter() - t_val
            history.append(
                {
                    "step": step,
                    "loss": float(loss.item()),
                    "val_alignment": val,
                    "elapsed_s": budget.elapsed(),
                    **last_parts,
                }
            )
            bar.set_postfix(loss=f"{loss.item():.3f}", val=f"{val:.4f}")
            if val > best_val:
                best_val, best_step, bad = val, step, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # a copy, not live refs
            else:
                bad += 1
            if bad >= cfg.patience and step < cfg.max_steps:
                reason = "patience"
                break
            # a scheduled validation spent time too: stop now if the next step and its validation would not fit
            if (out_of_time or budget.exceeded(reserve_s=step_s + val_s)) and step < cfg.max_steps:
                reason = "time_budget"
    bar.close()
    stop = TrainingStop(step, cfg.max_steps, reason, best_step, setup_s, budget.seconds)
    cut = stop.cut_message()
    if cut is not None:
        log.warning("%s", cut)
    return LoopResult(best_state, best_val, best_step, step, history, stop)


def train_gpo(
    table: ItemTable,
    dataset: PreferenceDataset,
    fit_groups: Sequence[str],
    val_groups: Sequence[str],
    train_q: np.ndarray,
    spec: FeatureSpec,
    cfg: TrainConfig | None = None,
    model_cfg: dict | None = None,
    budget: Budget | None = None,
) -> TrainResult:
    """Meta-train GPO on episodes of `fit_groups` over questions `train_q` (indices into `table`).

    The population prior is fitted on fit + validation groups' answers to `train_q` (each group's
    own features leave it out). Ragged data: a group's episodes (context and targets) are drawn from the
    questions of `train_q` it answered; a fit group with fewer than 2 of them is left out, a validation group
    with fewer than `val_context + 1` usable scorable ones too (both logged). `cfg.val_question_share` of the
    scorable training questions are validation questions, in no training episode. The checkpoint kept has the
    best `CheckpointScore` on the validation groups (20 fixed context questions; targets: the other training
    questions they answered, and the validation questions as new ones; service.training.validation); test groups
    are never seen here. `budget`: the wall-clock budget to
    end within (default: `cfg.time_budget_s` from now); a command passes the one it started with, so its set-up
    counts.
    """
    cfg = cfg or TrainConfig()
    t_start = time.perf_counter()
    budget = budget or Budget(cfg.time_budget_s, t_start)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    source = list(fit_groups) + list(val_groups)
    known_q = np.zeros(len(table.questions), dtype=bool)
    known_q[train_q] = True
    if spec.use_prior:
        priors = fit_group_priors(table, dataset, source, known_q, spec.prior_rank)
        full_prior, loo, known = priors.full, dict(priors.loo), priors.loo_known
        thin = known_items(table, known_q) & ~priors.known
        if thin.any():
            log.warning(
                "%d training questions answered by too few training groups have no prior (new questions)",
                len(np.unique(table.item_q[thin])),
            )
    else:
        full_prior, loo = None, {g: None for g in source}
        known = {g: known_items(table, known_q) for g in source}
        thin = np.zeros(table.n_items, dtype=bool)
    texts = None
    if spec.use_prior and spec.use_embedding and cfg.text_prior and model_kind(model_cfg) == "choice":
        texts = fit_text_priors(table, priors, source, known_q, cfg.seed, per_column=cfg.text_alpha == "column")
    matcher = None
    if texts is not None and table.qvec is not None and texts.oof_full is not None:
        matcher = fit_matcher(table, table.qvec, priors.full, priors.known, texts.oof_full, blend=cfg.neighbour_blend)
    ys = {g: np.nan_to_num(table.group_y(dataset, g)) for g in source}
    feats = GroupFeatures(spec, table, loo, ys, known, texts.oof if texts is not None else None)
    text_blocks = feats.text if texts is not None else None
    pools = {g: answered_questions(table, dataset, g, train_q) for g in source}
    # validation questions: kept out of every training episode (fit groups' pools), scored as new questions
    scorable = np.array(
        [i for i in train_q if table.questions[i].has_ordinal_spread or not table.questions[i].is_ordinal],
        dtype=np.int64,
    )
    new_weight = cfg.val_new_question_weight if spec.use_prior else 0.0
    held_out = hold_out_questions(scorable, cfg.val_question_share, cfg.seed) if new_weight > 0 else scorable[:0]
    train_pools = {g: pools[g][~np.isin(pools[g], held_out)] for g in fit_groups}

    model_cfg = dict(model_cfg or {})
    if spec.use_prior and cfg.prior_readout != "none":
        model_cfg.setdefault("prior_feature", spec.prior_slice.start)
        model_cfg.setdefault("prior_rank", spec.prior_rank)
        model_cfg.setdefault("prior_readout", cfg.prior_readout)
    model = GPO(GPOConfig(dim_x=spec.dim_x, **model_cfg))
    fit_list = [g for g in fit_groups if len(train_pools[g]) >= 2]
    if len(fit_list) < len(fit_groups):
        log.warning(
            "fit groups with fewer than 2 answered training questions left out: %s",
            sorted(set(fit_groups) - set(fit_list)),
        )
    if not fit_list:
        raise ValueError("no fit group answered at least 2 of the training questions")
    all_x = torch.cat([feats.x[g][torch.from_numpy(table.rows(train_q))] for g in fit_groups])
    std = all_x.std(dim=0)
    mean = all_x.mean(dim=0)
    if spec.use_prior:  # the flag column is all ones among known items: keep it a plain 0/1 input
        flag = spec.prior_slice.start
        mean[flag], std[flag] = 0.0, 1.0
    model.set_feature_stats(mean, std)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    # validation: fixed episodes of the validation groups; the validation questions are kept out of training
    val = build_validation_episodes(
        table, feats.x, feats.y, pools, val_groups, scorable, held_out, spec,
        cfg.val_context, cfg.val_draws, cfg.seed, make_eval_episode, text_blocks,
    )  # fmt: skip
    for g, n in val.left_out:
        log.warning("validation group %r answered %d usable scorable training questions: left out", g, n)
    checkpoint_score = CheckpointScore(new_weight, cfg.val_known_tolerance_se)

    def alignments(episodes: list[Episode], tqs: list[np.ndarray]) -> list[float]:
        preds = predict_episodes(model, episodes)
        return [
            s
            for e, tq, (m, _) in zip(episodes, tqs, preds, strict=True)
            for s in episode_alignments(table, tq, m, e.y[~e.is_context].numpy())
        ]

    last_parts = checkpoint_score.parts

    def validate() -> float:
        """Validation score (CheckpointScore): known questions, blended with the held-out validation questions."""
        return checkpoint_score(alignments(val.known, val.known_tq), alignments(val.new, val.new_tq))

    def sample_batch() -> list[Episode]:
        episodes = []
        for _ in range(cfg.batch_size):
            g = fit_list[int(rng.integers(len(fit_list)))]
            n_ctx = int(rng.integers(cfg.min_context, cfg.max_context + 1))
            episodes.append(
                sample_episode(
                    rng,
                    table,
                    feats.x[g],
                    feats.y[g],
                    train_pools[g],
                    n_ctx,
                    cfg.n_targets,
                    spec,
                    cfg.prior_dropout,
                    None if text_blocks is None else text_blocks[g],
                )  # fmt: skip
            )
        return episodes

    def batch_loss() -> torch.Tensor:
        return episodes_loss(model, sample_batch())

    if cfg.choose_ridge and val.known and hasattr(model, "log_ridge") and model.cfg.kind == "choice":
        # every training group (fit groups with their leave-one-out priors) scores the untrained readout: more
        # groups than the validation ones alone, as latent_factor chooses its ridge over all training groups
        ridge_eps = build_validation_episodes(
            table, feats.x, feats.y, pools, source, scorable, scorable[:0], spec,
            cfg.val_context, 1, cfg.seed + 1, make_eval_episode,
        )  # fmt: skip
        ridge = choose_readout_ridge(model, lambda: float(np.mean(alignments(ridge_eps.known, ridge_eps.known_tq))))
        log.info("ridge readout strength %.3g (chosen on the training groups' known questions)", ridge)
    if text_blocks is not None and hasattr(model, "log_ridge"):
        # a context of questions new to the bank (their text prior): how much its items weigh in the ridge fit
        text_eps, text_tq = text_context_episodes(
            table, feats, pools, source, scorable, spec, cfg.val_context, cfg.seed
        )
        if text_eps:
            w = choose_text_weight(model, lambda: float(np.mean(alignments(text_eps, text_tq))))
            log.info("text-read context items weigh %.3g in the readout (chosen on the training groups)", w)
    loop = meta_train_loop(model, opt, cfg, batch_loss, validate if val.known else None, last_parts, budget)
    model.load_state_dict(loop.best_state)
    model.eval()
    wall = time.perf_counter() - t_start
    log.info(
        "trained %d steps in %.1f s; best validation alignment %.4f at step %d",
        loop.steps_run,
        wall,
        loop.best_val,
        loop.best_step,
    )
    shortfall = loop.stop.shortfall(cfg.min_steps)
    if shortfall is not None:
        log.warning("%s", shortfall)
    return TrainResult(
        model=model,
        spec=spec,
        prior=full_prior,
        best_step=loop.best_step,
        best_val=loop.best_val,
        steps_run=loop.steps_run,
        wall_s=wall,
        history=loop.history,
        stop=loop.stop,
        shortfall=shortfall,
        thin_items=thin,
        known_q=known_q,
        held_out_q=held_out,
        text_prior=texts.full if texts is not None else None,
        matcher=matcher,
    )


def model_kind(model_cfg: dict | None) -> str:
    """The item kind a model config trains (GPOConfig.kind; "choice" unless it says otherwise)."""
    return (model_cfg or {}).get("kind", "choice")


def config_dict(cfg: TrainConfig) -> dict:
    return asdict(cfg)
