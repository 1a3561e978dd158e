"""Meta-training a rating or comparison GPO on people, and its predictions for one person."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from service.gpo.batch import Episode, collate
from service.gpo.features import FeatureSpec, RewardModel
from service.gpo.losses import bt_loss, rank_loss
from service.gpo.model import GPO, GPOConfig
from service.gpo.prior import PopulationPrior
from service.training.budget import Budget, TrainingStop
from service.training.fit import TrainConfig, meta_train_loop
from service.training.individuals.baselines import fit_pair_beta, fit_reward_regressor
from service.training.individuals.cv import AUTO_CANDIDATES, choose_prior_mean, people_folds
from service.training.individuals.episodes import bt_episode, comparison_episode, comparison_pairs, rating_episode
from service.training.individuals.priors import PersonFeatures, fit_person_priors, item_prior_mean, prior_loadings
from service.training.individuals.splits import PeopleSplit, context_draw, rated_rows
from service.training.metrics import pairwise_accuracy
from service.training.ratings import RatingsDataset

log = logging.getLogger(__name__)


@dataclass
class IndividualTrainConfig(TrainConfig):
    """Meta-training on people: context size uniform in [min_context, max_context] items (capped at what a
    person rated, keeping at least `min_targets` targets)."""

    max_steps: int = 1500
    batch_size: int = 16
    min_context: int = 2
    max_context: int = 30
    min_targets: int = 5
    n_targets: int = 40
    prior_dropout: float = 0.0
    # validation: every context size of the evaluation, `val_draws` draws each (the rest of a person's items are
    # the targets), so the checkpoint kept is the best over the sizes it will be used at
    val_sizes: tuple[int, ...] = (1, 2, 5, 10, 20)
    # rating kind: the trained checkpoint replaces the untrained one (its ridge readout exactly) only when it is
    # better on validation by more than this many standard errors of the per-person difference
    min_gain_se: float = 1.0
    # rating kind: weight of a pairwise ranking loss on the targets (logistic on the difference of predicted
    # scores over `rank_temperature`, for every pair the person rated differently), added to the Gaussian NLL
    rank_weight: float = 0.0
    rank_temperature: float = 0.05
    time_budget_s: float | None = 300.0
    max_pairs: int = 300  # comparison kind: pairs per episode side at most
    # Where the prior's loadings come from: "content" (principal directions of the item embeddings: a person's
    # taste as a direction in content space) or "ratings" (SVD of the training people's rating matrix).
    loadings: str = "content"
    val_draws: int = 4  # context draws per validation person
    prior_folds: int = 5  # a fit person's prior comes from the fit people of the other folds
    # The prior's mean score of an item (priors.item_prior_mean), from the prior's people only: "reward" (a
    # non-personalised reward model's estimate from the item's embedding, ridge `reward_lambda`), "items" (the
    # item's mean rating over them) or "shrunk" (that mean shrunk towards the reward model's out-of-item estimate,
    # `prior_item_folds` folds of items, by empirical Bayes; unrated items: the reward model's estimate).
    # Measured on held-out NYT people (benchmarks/experiments/individual_prior_mean.py): the reward model's
    # estimate makes the personal readout better than the raw item mean at every context size; and GPO with
    # "shrunk" is 0.0020 lower at 10 context items (95% t over 10 seeds [-0.0036, -0.0004]), level at 1-5 and 20
    # (benchmarks/experiments/known_item_prior.py, results/known_item_prior.txt); on other data the item's own
    # mean wins. So the default, "auto", chooses "reward" or "shrunk" per data set by cross-validation over the
    # meta-train people (cv.choose_prior_mean: the readout alone at val_sizes, val_draws draws, `prior_folds`
    # folds; "shrunk" only when it beats "reward" by more than one standard error of the paired difference).
    prior_mean: str = "auto"
    prior_item_folds: int = 10
    reward_lambda: float = 1.0  # what cross-validation chose in every seed of `gpo eval-individuals`
    # comparison kind, score head: start every response's score at the closed-form pair readout (the reward
    # model's score plus the taste one Newton step of a ridge logistic fit gives the context pairs; GPOConfig
    # pair_beta_init), with this ridge strength. Measured on held-out NYT people (10 seeds,
    # benchmarks/experiments/comparison_readout.py): ridge 3 is best at 5 and 10 context items.
    pair_readout: bool = True
    pair_ridge: float = 3.0


@dataclass
class IndividualModel:
    model: GPO
    spec: FeatureSpec
    prior: PopulationPrior | None  # from all meta-train people: what test people and serving use
    known: np.ndarray
    reward: RewardModel | None  # a new item's prior mean (prior_mean "reward" or "shrunk"), from all meta-train people
    kind: str
    best_val: float
    best_step: int
    steps_run: int
    wall_s: float
    history: list[dict] = field(default_factory=list)
    stop: TrainingStop | None = None
    shortfall: str | None = None  # why the run is too short to trust (TrainingStop.shortfall), None when it is not
    prior_mean: str = "reward"  # the prior mean used (what "auto" chose)
    prior_choice: dict | None = None  # with "auto": the choice and its cross-validation scores (PriorChoice)


def train_individual_gpo(
    ds: RatingsDataset,
    emb: np.ndarray,
    split: PeopleSplit,
    spec: FeatureSpec,
    cfg: IndividualTrainConfig | None = None,
    kind: str = "rating",
    model_cfg: dict | None = None,
    budget: Budget | None = None,
) -> IndividualModel:
    """Meta-train a rating or comparison GPO on the fit people; the checkpoint kept is the one with the best
    mean pairwise accuracy on the validation people (each of val_sizes context items, the rest as targets).
    `budget`: the wall-clock budget to end within (default: `cfg.time_budget_s` from now)."""
    cfg = cfg or IndividualTrainConfig()
    t_start = time.perf_counter()
    budget = budget or Budget(cfg.time_budget_s, t_start)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    y = ds.matrix()  # [P, I] normalised
    index = {p: i for i, p in enumerate(ds.people)}
    source = list(split.fit) + list(split.val)
    feats = PersonFeatures(spec, emb)
    content = prior_loadings(emb, spec.prior_rank, cfg.loadings)
    prior_mean, choice = cfg.prior_mean, None
    if prior_mean == "auto":
        prior_mean = AUTO_CANDIDATES[0]
        if spec.use_prior:
            folds = people_folds(ds, y, source, cfg.prior_folds, cfg.val_sizes, cfg.val_draws, cfg.seed)
            ridge = float((model_cfg or {}).get("ridge_init", GPOConfig.ridge_init))
            args = (emb, y, content, spec.prior_rank, cfg.reward_lambda, ridge, cfg.prior_item_folds)
            choice = choose_prior_mean(folds, *args)
            prior_mean = choice.chosen
    mean_of = item_prior_mean(prior_mean, emb, y, cfg.reward_lambda, cfg.prior_item_folds)
    reward = None
    if spec.use_prior:
        if mean_of is not None:  # a new item's prior mean, when served
            reward = fit_reward_regressor(emb, y, np.array([index[p] for p in source]), cfg.reward_lambda)
        full, known, priors = fit_person_priors(
            y, split, index, spec.prior_rank, content, cfg.prior_folds, cfg.seed, mean_of
        )
        x_of = {p: feats.build(*priors[p]) for p in source}
    else:
        full, known = None, np.ones(len(ds.items), dtype=bool)
        x_of = {p: feats.build(None, known) for p in source}

    assert kind in ("rating", "comparison", "comparison_bt"), f"unknown kind {kind!r}"
    model_cfg = dict(model_cfg or {})
    model_cfg["kind"] = "comparison" if kind == "comparison_bt" else kind
    if kind == "comparison_bt":
        model_cfg["comparison_head"] = "score"
    if kind != "rating":
        model_cfg.pop("ridge_init", None)  # the rating readout's strength (a comparison readout has its own)
    if kind == "rating" and spec.use_prior and cfg.prior_readout != "none":
        model_cfg.setdefault("prior_feature", spec.prior_slice.start)
        model_cfg.setdefault("prior_rank", spec.prior_rank)
        model_cfg.setdefault("prior_readout", cfg.prior_readout)
    if kind == "comparison_bt" and spec.use_prior and cfg.prior_readout == "ridge" and cfg.pair_readout:
        # the score head's readout: the reward model's score, scaled to logits by beta, plus the pairs' taste
        assert full is not None
        model_cfg.setdefault("prior_feature", spec.prior_slice.start)
        model_cfg.setdefault("prior_rank", spec.prior_rank)
        model_cfg.setdefault("prior_readout", "ridge")
        model_cfg.setdefault("ridge_init", cfg.pair_ridge)
        beta = fit_pair_beta(full.mean, y, np.array([index[p] for p in source]))
        model_cfg.setdefault("pair_beta_init", beta)
        log.info("comparison readout: beta %.2f (reward-model difference to logit), ridge %g", beta, cfg.pair_ridge)
    dim_x = spec.dim_x + (1 if kind == "comparison_bt" else 0)
    model = GPO(GPOConfig(dim_x=dim_x, **model_cfg))
    all_x = torch.cat([x_of[p][torch.from_numpy(rated_rows(ds, p))] for p in split.fit])
    if kind == "comparison":  # pair tokens are differences: centre at 0, scale by the spread of differences
        mean, std = torch.zeros(spec.dim_x), all_x.std(dim=0) * np.sqrt(2.0)
    elif kind == "comparison_bt":  # single items as they are; the pair/single flag column stays 0/1
        mean = torch.cat([all_x.mean(dim=0), torch.zeros(1)])
        std = torch.cat([all_x.std(dim=0), torch.ones(1)])
    else:
        mean, std = all_x.mean(dim=0), all_x.std(dim=0)
        if spec.use_prior:
            flag = spec.prior_slice.start
            mean[flag], std[flag] = 0.0, 1.0
    model.set_feature_stats(mean, std)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    val_rng = np.random.default_rng(cfg.seed + 10_000)
    val_cases = []
    for p in split.val:
        for k in cfg.val_sizes:
            for d in range(cfg.val_draws):
                ctx, tgt = context_draw(ds, p, k, cfg.seed + 10_000 + d)
                val_cases.append((p, ctx, tgt))
    last_parts: dict[str, float] = {}

    def per_person() -> dict[str, float]:
        """Mean validation pairwise accuracy of each validation person (over sizes and draws)."""
        scores: dict[str, list[float]] = {}
        for p, ctx, tgt in val_cases:
            yp = y[index[p]]
            pred = predict_person(model, kind, x_of[p], yp, ctx, tgt, val_rng)
            acc = pairwise_from(kind, pred, yp, tgt)
            if acc is not None:
                scores.setdefault(p, []).append(acc)
        return {p: float(np.mean(v)) for p, v in scores.items()}

    def validate() -> float:
        score = float(np.mean(list(per_person().values())))
        last_parts["val_pairwise"] = score
        return score

    fit_rated = {p: rated_rows(ds, p) for p in split.fit}
    fit_list = list(split.fit)

    def batch_loss() -> torch.Tensor:
        episodes, pairs = [], []
        while len(episodes) < cfg.batch_size:
            p = fit_list[int(rng.integers(len(fit_list)))]
            rated = rng.permutation(fit_rated[p])
            hi = max(cfg.min_context, min(cfg.max_context, len(rated) - cfg.min_targets))
            n_ctx = int(rng.integers(cfg.min_context, hi + 1))
            ctx, tgt = rated[:n_ctx], rated[n_ctx : n_ctx + cfg.n_targets]
            if kind == "comparison":
                ep, _ = comparison_episode(x_of[p], y[index[p]], ctx, tgt, rng, cfg.max_pairs, cfg.max_pairs)
                if not bool(ep.is_context.any()) or bool(ep.is_context.all()):
                    continue  # all context (or all target) ratings equal: no pair to learn from
            elif kind == "comparison_bt":
                ep, tp = bt_episode(x_of[p], y[index[p]], ctx, tgt, rng, cfg.max_pairs)
                if not bool(ep.is_context.any()) or len(tp[0]) == 0:
                    continue
                pairs.append(tp)
            else:
                ep = rating_episode(x_of[p], y[index[p]], ctx, tgt)
            episodes.append(ep)
        if kind == "comparison_bt":
            return bt_loss(model, episodes, pairs)
        batch = collate(episodes)
        if kind == "rating" and cfg.rank_weight > 0:
            pred = model(batch)
            return model.loss(batch, pred) + cfg.rank_weight * rank_loss(batch, pred.mean, cfg.rank_temperature)
        return model.loss(batch)

    readout_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    readout = per_person() if val_cases and model.cfg.prior_readout == "ridge" else None
    loop = meta_train_loop(model, opt, cfg, batch_loss, validate if val_cases else None, last_parts, budget)
    best_val, best_step, step = loop.best_val, loop.best_step, loop.steps_run
    model.load_state_dict(loop.best_state)
    model.eval()
    if readout is not None and best_step > 0:
        # The untrained model is the ridge readout exactly. Validation picks the best of many checkpoints, so a
        # small edge over the readout is mostly luck: keep the transformer's corrections only when they beat the
        # readout by more than `min_gain_se` standard errors of the paired per-person difference.
        trained = per_person()
        diff = np.array([trained[p] - readout[p] for p in readout if p in trained])
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
        if float(diff.mean()) <= cfg.min_gain_se * se:
            log.info(
                "%s GPO: the trained checkpoint beats its readout by %+.4f on validation (se %.4f): readout kept",
                kind,
                float(diff.mean()),
                se,
            )
            model.load_state_dict(readout_state)
            best_val, best_step = float(np.mean(list(readout.values()))), 0
            model.eval()
    if kind == "rating" and best_step == 0 and val_cases:
        # the readout's std is the random head's: set it to the readout's residual spread on validation
        res = np.concatenate(
            [predict_person(model, kind, x_of[p], y[index[p]], c, t, val_rng) - y[index[p]][t] for p, c, t in val_cases]
        )
        model.set_constant_std(max(float(np.sqrt(np.mean(res**2))), 2 * model.cfg.min_std))
    wall = time.perf_counter() - t_start
    log.info("%s GPO: %d steps in %.1f s; best validation pairwise %.4f at %d", kind, step, wall, best_val, best_step)
    stop = replace(loop.stop, best_step=best_step)  # the readout rule may have gone back to step 0
    shortfall = stop.shortfall(cfg.min_steps)
    if shortfall is not None:
        log.warning("%s GPO: %s", kind, shortfall)
    return IndividualModel(
        model,
        spec,
        full,
        known,
        reward,
        kind,
        best_val,
        best_step,
        step,
        wall,
        loop.history,
        stop,
        shortfall,
        prior_mean,
        choice.to_dict() if choice is not None else None,
    )


@torch.no_grad()
def predict_person(
    model: GPO,
    kind: str,
    x: torch.Tensor,
    y: np.ndarray,
    ctx: np.ndarray,
    tgt: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Rating kind: normalised scores [len(tgt)]. Comparison kind: P(a preferred) over every pair of `tgt`
    (in np.triu_indices order), a matrix-free vector [T(T-1)/2]."""
    model.eval()
    if kind == "rating":
        pred = model(collate([rating_episode(x, y, ctx, tgt)]))
        return pred.mean[0, len(ctx) :].numpy().astype(np.float64)
    if kind == "comparison_bt":  # scalar scores of the target items
        ep, _ = bt_episode(x, y, ctx, tgt, None)
        n_ctx = int(ep.is_context.sum())
        if n_ctx == 0:  # no pair rated differently: the population's order when the model has one, else none
            if model.cfg.prior_readout == "ridge":
                return model.prior_logits(collate([ep]))[0].numpy().astype(np.float64)
            return np.zeros(len(tgt))
        return model(collate([ep])).logits[0, n_ctx:].numpy().astype(np.float64)
    a_idx, b_idx = np.triu_indices(len(tgt), k=1)
    ca, cb, cl = comparison_pairs(y, ctx)
    if len(ca) == 0:  # a context of equal ratings says nothing about order: no preference
        return np.full(len(a_idx), 0.5)
    xa = torch.cat([x[ca] - x[cb], x[tgt[a_idx]] - x[tgt[b_idx]]])
    yy = torch.from_numpy(np.concatenate([cl, np.zeros(len(a_idx), dtype=np.float32)]))
    is_ctx = torch.zeros(len(yy), dtype=torch.bool)
    is_ctx[: len(ca)] = True
    pred = model(collate([Episode(x=xa, y=yy, is_context=is_ctx, question=torch.arange(len(yy)))]))
    return pred.mean[0, len(ca) :].numpy().astype(np.float64)


def pairwise_from(kind: str, pred: np.ndarray, y: np.ndarray, tgt: np.ndarray) -> float | None:
    """Pairwise accuracy of a person's predictions over their target items."""
    true = y[tgt]
    if kind in ("rating", "comparison_bt"):  # one score per item
        return pairwise_accuracy(pred, true)
    a_idx, b_idx = np.triu_indices(len(tgt), k=1)
    diff = np.sign(true[a_idx] - true[b_idx])
    keep = diff != 0
    if not keep.any():
        return None
    said = np.sign(pred[keep] - 0.5)
    return float(np.mean((said == diff[keep]) + 0.5 * (said == 0)))
