"""Individuals as groups of one: GPO on per-person ratings and comparisons, its baselines and evaluation.

A person's context is a few items they rated (a score on the dataset's scale, normalised to [0, 1]); the
targets are other items they rated. Item features are the LLM embedding of "prompt + item" (template
`gpo-resp-v1`) joined with a population prior fitted on the training people's ratings: the item's mean score
and its loadings on the main directions in which people differ (a truncated SVD of the mean-centred rating
matrix, unrated entries 0). People are split into meta-train (with validation people taken out of it) and
meta-test; nothing about a test person is seen before their context.

Kinds (GPOConfig.kind):
- "rating": one token per rated item, y = normalised score; the ridge readout starts at the latent-factor
  estimate mean + loadings @ z (z: ridge fit of the context residuals), the transformer learns corrections.
- "comparison": one token per pair (a, b) the person rated differently, x = x_a - x_b, y = 1 if a was preferred
  (appendix H: binary classification of every target pair).
- "comparison_bt": context tokens are such pairs, target tokens are single items whose output is a scalar score;
  trained with a Bradley-Terry loss on pairs of targets (P(a > b) = sigmoid(s_a - s_b)). Tokens carry one more
  feature: 1 for a pair, 0 for a single item.

Metrics per test person over their target items: RMSE on the original scale, Spearman rank correlation,
pairwise accuracy (pairs with different true scores ordered right; for the comparison kind, its predicted
probability on each pair), exact-level accuracy (the nearest scale level to the predicted score is the rating).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from service.gpo.batch import Episode, collate
from service.gpo.checkpoint import Checkpoint, PriorBank
from service.gpo.features import ContentBasis, FeatureSpec, RewardModel
from service.gpo.losses import bt_loss, rank_loss
from service.gpo.model import GPO, GPOConfig
from service.gpo.prior import PopulationPrior
from service.training.fit import TrainConfig, meta_train_loop
from service.training.metrics import exact_accuracy, pairwise_accuracy, rating_rmse, spearman
from service.training.ratings import RatingsDataset

log = logging.getLogger(__name__)

METHODS = (
    "gpo",
    "gpo_comparison",
    "global_mean",
    "context_mean",
    "knn",
    "reward_model",
    "latent_factor",
    "content_factor",
)


# ---------------------------------------------------------------------------------------------- prior


def fit_content_basis(emb: np.ndarray, rank: int) -> ContentBasis:
    mu, sd = emb.mean(axis=0), emb.std(axis=0) + 1e-6
    _, _, vt = np.linalg.svd((emb - mu) / sd, full_matrices=False)
    return ContentBasis(mu, sd, vt[:rank].T.copy(), int(emb.shape[0]))


def fit_rating_prior(
    y: np.ndarray,
    rank: int,
    reference: np.ndarray | None = None,
    loadings: np.ndarray | None = None,
    mean: np.ndarray | None = None,
) -> tuple[PopulationPrior, np.ndarray]:
    """(prior, known [I]) from normalised ratings y [P, I] (NaN = unrated).

    mean: each item's mean over the people who rated it; loadings: the top `rank` right singular vectors of
    the mean-centred matrix (unrated = 0) times S / sqrt(P), rotated onto `reference` when given (orthogonal
    Procrustes), so leave-one-out priors share one basis. Items nobody rated are not known (flag 0, zeros).
    Given `loadings` [I, rank] (content loadings, see ContentBasis), they are used as they are. Given `mean` [I]
    (a reward model's estimate from the item's embedding, see RewardModel), it replaces the item means and
    every item is known: its mean and content loadings come from its text, as a new item's do when served.
    """
    rated = ~np.isnan(y)
    counts = rated.sum(axis=0)
    known = counts > 0
    if mean is not None:
        assert mean.shape == (y.shape[1],), "mean must be [items]"
        known = np.ones(y.shape[1], dtype=bool)
    else:
        mean = np.where(known, np.nansum(y, axis=0) / np.maximum(counts, 1), 0.0)
    resid = np.where(rated, y - mean[None, :], 0.0)
    if loadings is not None:
        assert loadings.shape == (y.shape[1], rank), f"loadings must be [items, {rank}]"
        load = np.where(known[:, None], loadings, 0.0)
        return PopulationPrior(mean.astype(np.float32), load.astype(np.float32)), known
    loadings = np.zeros((y.shape[1], rank), dtype=np.float64)
    if rank > 0 and y.shape[0] > 1:
        _, s, vt = np.linalg.svd(resid, full_matrices=False)
        k = min(rank, s.shape[0])
        loadings[:, :k] = vt[:k].T * s[:k] / np.sqrt(y.shape[0])
    if reference is not None and rank > 0:
        u, _, wt = np.linalg.svd(loadings.T @ reference)
        loadings = loadings @ (u @ wt)
    loadings[~known] = 0.0
    return PopulationPrior(mean.astype(np.float32), loadings.astype(np.float32)), known


@dataclass
class PersonFeatures:
    """Item features [I, Dx] as one person sees them (their own ratings left out of the prior)."""

    spec: FeatureSpec
    emb: np.ndarray  # [I, D]

    def build(self, prior: PopulationPrior | None, known: np.ndarray) -> torch.Tensor:
        rows = np.arange(self.emb.shape[0])
        return torch.from_numpy(self.spec.build(self.emb, prior, rows, known))


# ---------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class PeopleSplit:
    fit: list[str]  # meta-training episodes
    val: list[str]  # checkpoint selection (part of meta-train: never a test person)
    test: list[str]


def split_people(people: Sequence[str], train_frac: float, seed: int, val_frac: float = 0.15) -> PeopleSplit:
    """Meta-train / meta-test people (a seeded permutation); validation people come out of meta-train."""
    rng = np.random.default_rng(seed)
    order = [people[i] for i in rng.permutation(len(people))]
    n_train = int(round(train_frac * len(people)))
    train, test = order[:n_train], order[n_train:]
    n_val = max(1, int(round(val_frac * len(train))))
    return PeopleSplit(fit=train[n_val:], val=train[:n_val], test=test)


def rated_rows(ds: RatingsDataset, person: str) -> np.ndarray:
    """Item indices (dataset order) of the items the person rated."""
    pos = {it.item_id: i for i, it in enumerate(ds.items)}
    return np.array([pos[i] for i in ds.rated(person)], dtype=np.int64)


def context_draw(ds: RatingsDataset, person: str, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(context item indices, target item indices) of a person: k random rated items, the rest as targets.
    Seeded by (seed, person), so every method sees the same draw."""
    rated = rated_rows(ds, person)
    digest = int.from_bytes(person.encode()[:8].ljust(8, b"\0"), "little")
    rng = np.random.default_rng([seed, digest % (2**32), k])
    perm = rng.permutation(rated)
    k = min(k, len(rated) - 2)
    return np.sort(perm[:k]), np.sort(perm[k:])


# ---------------------------------------------------------------------------------------------- episodes


def rating_episode(x: torch.Tensor, y: np.ndarray, ctx: np.ndarray, tgt: np.ndarray) -> Episode:
    """Context items first, then targets; y: the person's normalised scores [I] (NaN where unrated)."""
    rows = np.concatenate([ctx, tgt])
    yy = torch.from_numpy(np.nan_to_num(y[rows]).astype(np.float32))
    is_ctx = torch.zeros(len(rows), dtype=torch.bool)
    is_ctx[: len(ctx)] = True
    return Episode(x=x[rows], y=yy, is_context=is_ctx, question=torch.arange(len(rows)))


def comparison_pairs(y: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, label) over the pairs of `items` with different scores y; label 1 if a is preferred."""
    a_idx, b_idx = np.triu_indices(len(items), k=1)
    a, b = items[a_idx], items[b_idx]
    keep = y[a] != y[b]
    a, b = a[keep], b[keep]
    return a, b, (y[a] > y[b]).astype(np.float32)


def comparison_episode(
    x: torch.Tensor,
    y: np.ndarray,
    ctx: np.ndarray,
    tgt: np.ndarray,
    rng: np.random.Generator,
    max_ctx_pairs: int | None = None,
    max_tgt_pairs: int | None = None,
) -> tuple[Episode, tuple[np.ndarray, np.ndarray]]:
    """Pair tokens x_a - x_b. Context pairs: among context items; targets: pairs among target items. Each pair
    is presented in a random orientation (so labels are balanced). Returns the episode and the target pairs."""

    def pairs(items: np.ndarray, cap: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b, lab = comparison_pairs(y, items)
        if cap is not None and len(a) > cap:
            pick = rng.choice(len(a), size=cap, replace=False)
            a, b, lab = a[pick], b[pick], lab[pick]
        flip = rng.random(len(a)) < 0.5
        a, b = np.where(flip, b, a), np.where(flip, a, b)
        return a, b, np.where(flip, 1.0 - lab, lab).astype(np.float32)

    ca, cb, cl = pairs(ctx, max_ctx_pairs)
    ta, tb, tl = pairs(tgt, max_tgt_pairs)
    xa = torch.cat([x[ca] - x[cb], x[ta] - x[tb]])
    yy = torch.from_numpy(np.concatenate([cl, tl]))
    is_ctx = torch.zeros(len(yy), dtype=torch.bool)
    is_ctx[: len(cl)] = True
    return Episode(x=xa, y=yy, is_context=is_ctx, question=torch.arange(len(yy))), (ta, tb)


def _oriented_pairs(
    y: np.ndarray, items: np.ndarray, rng: np.random.Generator | None, cap: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of `items` rated differently (at most `cap`), each in a random orientation when `rng` is given."""
    a, b, lab = comparison_pairs(y, items)
    if rng is None:
        return a, b, lab
    if cap is not None and len(a) > cap:
        pick = rng.choice(len(a), size=cap, replace=False)
        a, b, lab = a[pick], b[pick], lab[pick]
    flip = rng.random(len(a)) < 0.5
    return np.where(flip, b, a), np.where(flip, a, b), np.where(flip, 1.0 - lab, lab).astype(np.float32)


def bt_episode(
    x: torch.Tensor,
    y: np.ndarray,
    ctx: np.ndarray,
    tgt: np.ndarray,
    rng: np.random.Generator | None,
    cap: int | None = None,
) -> tuple[Episode, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """comparison_bt: context pair tokens [x_a - x_b, 1], then the target items [x_i, 0]. Returns the episode and
    the target pairs (positions among the targets, labels) the Bradley-Terry loss is taken on."""
    ca, cb, cl = _oriented_pairs(y, ctx, rng, cap)
    one, zero = torch.ones(len(ca), 1), torch.zeros(len(tgt), 1)
    xs = torch.cat([torch.cat([x[ca] - x[cb], one], dim=1), torch.cat([x[tgt], zero], dim=1)])
    yy = torch.from_numpy(np.concatenate([cl, np.zeros(len(tgt), dtype=np.float32)]))
    is_ctx = torch.zeros(len(yy), dtype=torch.bool)
    is_ctx[: len(ca)] = True
    pos = {int(item): i for i, item in enumerate(tgt)}
    ta, tb, tl = _oriented_pairs(y, tgt, rng, cap)
    pairs = (
        np.array([pos[int(i)] for i in ta], dtype=np.int64),
        np.array([pos[int(i)] for i in tb], dtype=np.int64),
        tl,
    )
    return Episode(x=xs, y=yy, is_context=is_ctx, question=torch.arange(len(yy))), pairs


# ---------------------------------------------------------------------------------------------- training


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
    # The prior's mean score of an item: "reward" (a non-personalised reward model's estimate from the item's
    # embedding, ridge `reward_lambda`, fitted on the prior's people) or "items" (the item's mean rating over
    # them). Measured on held-out NYT people (benchmarks/experiments/individual_prior_mean.py): the reward
    # model's estimate makes the personal readout better at every context size.
    prior_mean: str = "reward"
    reward_lambda: float = 1.0  # what cross-validation chose in every seed of `gpo eval-individuals`
    # comparison kind, score head: start every response's score at the closed-form pair readout (the reward
    # model's score plus the taste one Newton step of a ridge logistic fit gives the context pairs; GPOConfig
    # pair_beta_init), with this ridge strength. Measured on held-out NYT people (10 seeds,
    # benchmarks/experiments/comparison_readout.py): ridge 3 is best at 5 and 10 context items.
    pair_readout: bool = True
    pair_ridge: float = 3.0


def prior_loadings(emb: np.ndarray, rank: int, source: str) -> np.ndarray | None:
    """Content loadings of every item ("content"), or None to take them from the ratings' SVD ("ratings")."""
    assert source in ("content", "ratings"), f"loadings come from 'content' or 'ratings', not {source!r}"
    return fit_content_basis(emb, rank).loadings(emb) if source == "content" else None


@dataclass
class IndividualModel:
    model: GPO
    spec: FeatureSpec
    prior: PopulationPrior | None  # from all meta-train people: what test people and serving use
    known: np.ndarray
    reward: RewardModel | None  # the prior's mean for any item (prior_mean "reward"), from all meta-train people
    kind: str
    best_val: float
    best_step: int
    steps_run: int
    wall_s: float
    history: list[dict] = field(default_factory=list)


def _person_priors(
    y: np.ndarray,
    split: PeopleSplit,
    index: dict[str, int],
    rank: int,
    loadings: np.ndarray | None,
    n_folds: int,
    seed: int,
    mean_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[PopulationPrior, np.ndarray, dict[str, tuple[PopulationPrior, np.ndarray]]]:
    """Priors whose people never include the person they describe, and never vary with that person's ratings.

    Leave-one-out would not do: a person's leave-one-out item mean (S_i - y_pi) / (n_i - 1) is their own
    rating shifted by a per-item constant, which a network that sees each item with many people can learn and
    decode (measured: 0.87 validation pairwise accuracy against 0.56 on test people). So the fit people are cut
    into `n_folds` folds and a fit person's prior comes from the other folds (the same features for everyone
    in a fold); a validation person's from all fit people; test people (and serving) get the prior of fit +
    validation people, returned first. Rating-SVD loadings of every prior are rotated onto that one's basis (a
    k x k rotation: the only trace of a person's ratings in their features; content loadings have none).
    `mean_of(rows)`, when given, is the prior's mean of every item from those people's ratings (a reward
    model's estimate); it follows the same folds.
    """
    rows = lambda people: np.array([index[p] for p in people])  # noqa: E731

    def prior_of(people: list[str], reference: np.ndarray | None) -> tuple[PopulationPrior, np.ndarray]:
        mean = mean_of(rows(people)).astype(np.float32) if mean_of is not None else None
        return fit_rating_prior(y[rows(people)], rank, reference=reference, loadings=loadings, mean=mean)

    full, known = prior_of(split.fit + split.val, None)
    rng = np.random.default_rng(seed + 20_000)
    fold_of = {p: int(f) for p, f in zip(split.fit, rng.permutation(len(split.fit)) % n_folds, strict=True)}
    out: dict[str, tuple[PopulationPrior, np.ndarray]] = {}
    for f in range(n_folds):
        others = [p for p in split.fit if fold_of[p] != f]
        prior_f = prior_of(others, full.loadings)
        out.update({p: prior_f for p in split.fit if fold_of[p] == f})
    val_prior = prior_of(list(split.fit), full.loadings)
    out.update({p: val_prior for p in split.val})
    return full, known, out


def train_individual_gpo(
    ds: RatingsDataset,
    emb: np.ndarray,
    split: PeopleSplit,
    spec: FeatureSpec,
    cfg: IndividualTrainConfig | None = None,
    kind: str = "rating",
    model_cfg: dict | None = None,
) -> IndividualModel:
    """Meta-train a rating or comparison GPO on the fit people; the checkpoint kept is the one with the best
    mean pairwise accuracy on the validation people (each of val_sizes context items, the rest as targets)."""
    cfg = cfg or IndividualTrainConfig()
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    y = ds.matrix()  # [P, I] normalised
    index = {p: i for i, p in enumerate(ds.people)}
    source = list(split.fit) + list(split.val)
    feats = PersonFeatures(spec, emb)
    content = prior_loadings(emb, spec.prior_rank, cfg.loadings)
    assert cfg.prior_mean in ("reward", "items"), f"prior_mean is 'reward' or 'items', not {cfg.prior_mean!r}"
    reward = None
    if spec.use_prior:
        mean_of = None
        if cfg.prior_mean == "reward":
            mean_of = lambda rows: fit_reward_model(emb, y, rows, cfg.reward_lambda)  # noqa: E731
            reward = fit_reward_regressor(emb, y, np.array([index[p] for p in source]), cfg.reward_lambda)
        full, known, priors = _person_priors(
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
    best_state, best_val, best_step, step, history = meta_train_loop(
        model, opt, cfg, batch_loss, validate if val_cases else None, last_parts, t_start
    )
    model.load_state_dict(best_state)
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
    return IndividualModel(model, spec, full, known, reward, kind, best_val, best_step, step, wall, history)


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


# ---------------------------------------------------------------------------------------------- baselines


def knn_predict(
    y: np.ndarray,
    neighbours: np.ndarray,
    y_person: np.ndarray,
    ctx: np.ndarray,
    tgt: np.ndarray,
    k: int,
    fallback: np.ndarray,
) -> np.ndarray:
    """Ratings of the k training people who agree most with the person on the context items (1 - mean absolute
    difference on the co-rated context items, at least one co-rated), averaged with those weights over the
    neighbours who rated each target; items no neighbour rated fall back to `fallback` (the item mean)."""
    yn = y[neighbours]  # [N, I]
    co = ~np.isnan(yn[:, ctx])  # [N, C]
    n_co = co.sum(axis=1)
    diff = np.where(co, np.abs(yn[:, ctx] - y_person[ctx][None, :]), 0.0).sum(axis=1)
    agree = np.where(n_co > 0, 1.0 - diff / np.maximum(n_co, 1), -np.inf)
    # more co-rated items breaks ties, so agreement on one item does not outrank agreement on many
    order = np.lexsort((-n_co, -agree))
    top = [i for i in order[:k] if np.isfinite(agree[i])]
    out = fallback[tgt].astype(np.float64).copy()
    if not top:
        return out
    w = np.maximum(agree[top], 1e-3)
    vals = yn[top][:, tgt]  # [k, T]
    has = ~np.isnan(vals)
    num = np.where(has, vals, 0.0).T @ w
    den = has.T.astype(np.float64) @ w
    return np.where(den > 0, num / np.maximum(den, 1e-12), out)


def fit_reward_regressor(emb: np.ndarray, y: np.ndarray, rows: np.ndarray, lam: float) -> RewardModel:
    """Ridge regression of every training rating (people `rows`, normalised scores) on the item's standardised
    embedding (standardised over all items, which uses no rating); the penalty is lam per rating."""
    sub = y[rows]
    pi, ii = np.nonzero(~np.isnan(sub))
    mu, sd = emb.mean(axis=0), emb.std(axis=0) + 1e-6
    z = (emb - mu) / sd
    xt = z[ii]
    t = sub[pi, ii]
    b0 = float(t.mean())
    w = np.linalg.solve(xt.T @ xt + lam * len(t) * np.eye(z.shape[1]), xt.T @ (t - b0))
    return RewardModel(mu, sd, w, b0)


def fit_pair_beta(mean: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    """beta of P(a > b) = sigmoid(beta * (mean_a - mean_b)) fitted by maximum likelihood (Newton, no intercept) on
    every pair the people `rows` rated differently: how many logits one unit of the mean score is worth."""
    diffs, labels = [], []
    for r in rows:
        a, b, lab = comparison_pairs(y[r], np.flatnonzero(~np.isnan(y[r])))
        diffs.append(mean[a] - mean[b])
        labels.append(lab)
    d, lab = np.concatenate(diffs).astype(np.float64), np.concatenate(labels).astype(np.float64)
    beta = 1.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-beta * d))
        step = np.sum((lab - p) * d) / (np.sum(p * (1.0 - p) * d**2) + 1e-12)
        beta += step
        if abs(step) < 1e-8:
            break
    return float(max(beta, 1e-3))


def fit_reward_model(emb: np.ndarray, y: np.ndarray, rows: np.ndarray, lam: float) -> np.ndarray:
    """The reward model's score for every item [I] (see fit_reward_regressor)."""
    return fit_reward_regressor(emb, y, rows, lam).score(emb)


def latent_factor_predict(
    prior: PopulationPrior, y_person: np.ndarray, ctx: np.ndarray, tgt: np.ndarray, lam: float
) -> np.ndarray:
    """mean + loadings @ z, z the ridge fit of the person's context residuals on the loadings."""
    load = prior.loadings.astype(np.float64)
    r = y_person[ctx] - prior.mean[ctx]
    a = load[ctx]
    z = np.linalg.solve(a.T @ a + lam * np.eye(load.shape[1]), a.T @ r)
    return prior.mean[tgt] + load[tgt] @ z


# ---------------------------------------------------------------------------------------------- evaluation


@dataclass
class IndividualEvalConfig:
    train_frac: float = 0.6
    seeds: tuple[int, ...] = (0, 1, 2)
    n_context: tuple[int, ...] = (1, 2, 5, 10, 20)
    main_context: int = 10  # the headline table's context size
    prior_rank: int = 8  # rank of the baselines' latent-factor prior (GPO's comes from its FeatureSpec)
    knn_k: tuple[int, ...] = (5, 10, 20, 40, 80, 160)
    reward_lambda: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    lf_lambda: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    comparison: bool = True  # also meta-train and score the comparison kind
    val_draws: int = 2  # context draws per person and context size when choosing settings by cross-validation
    cv_folds: int = 5


def _choose_baselines(
    ds: RatingsDataset,
    emb: np.ndarray,
    y: np.ndarray,
    split: PeopleSplit,
    cfg: IndividualEvalConfig,
    seed: int,
    content: np.ndarray | None,
    prior_mean: str,
) -> tuple[int, float, float, float]:
    """(kNN k, reward-model ridge, latent-factor ridge, content-factor ridge), chosen by cross-validation over
    the training people (fit + validation; `cv_folds` folds): each candidate is fitted on the other folds and
    scored by mean pairwise accuracy on the fold's people, over every evaluated context size up to main_context
    with `val_draws` context draws each; the best mean over all training people wins (first best on ties).
    The content-factor reference starts from the chosen reward model when prior_mean is "reward"."""
    index = {p: i for i, p in enumerate(ds.people)}
    people = list(split.fit) + list(split.val)
    fold_of = np.random.default_rng(seed + 30_000).permutation(len(people)) % cfg.cv_folds
    sizes = [k for k in cfg.n_context if k <= cfg.main_context] or [cfg.main_context]
    folds = []  # (rows the candidates are fitted on, [(y of the person, context, targets)])
    for f in range(cfg.cv_folds):
        rows = np.array([index[p] for p, g in zip(people, fold_of, strict=True) if g != f])
        draws = [
            (y[index[p]], *context_draw(ds, p, k, seed + 10_000 + d))
            for p, g in zip(people, fold_of, strict=True)
            if g == f
            for k in sizes
            for d in range(cfg.val_draws)
        ]
        folds.append((rows, draws))

    def choose(candidates: Sequence, predict) -> float | int:
        """predict(candidate, rows) -> a function (y_person, ctx, tgt) -> prediction."""
        means = []
        for cand in candidates:
            accs = []
            for rows, draws in folds:
                fn = predict(cand, rows)
                accs += [pairwise_accuracy(fn(yp, c, t), yp[t]) for yp, c, t in draws]
            means.append(float(np.mean([a for a in accs if a is not None])))
        return candidates[int(np.argmax(means))]

    def knn(k: int, rows: np.ndarray):
        mean = fit_rating_prior(y[rows], 0)[0].mean
        return lambda yp, c, t: knn_predict(y, rows, yp, c, t, k, mean)

    def reward(lam: float, rows: np.ndarray):
        r = fit_reward_model(emb, y, rows, lam)
        return lambda yp, c, t: r[t]

    def factor(lam: float, rows: np.ndarray, loadings: np.ndarray | None = None, mean_lam: float | None = None):
        mean = fit_reward_model(emb, y, rows, mean_lam).astype(np.float32) if mean_lam is not None else None
        rank = loadings.shape[1] if loadings is not None else cfg.prior_rank
        prior, _ = fit_rating_prior(y[rows], rank, loadings=loadings, mean=mean)
        return lambda yp, c, t: latent_factor_predict(prior, yp, c, t, lam)

    k = choose(cfg.knn_k, knn)
    lam_rm = choose(cfg.reward_lambda, reward)
    lam_lf = choose(cfg.lf_lambda, factor)
    lam_cf = 1.0
    if content is not None:
        mean_lam = lam_rm if prior_mean == "reward" else None
        lam_cf = choose(cfg.lf_lambda, lambda lam, rows: factor(lam, rows, content, mean_lam))
    return int(k), float(lam_rm), float(lam_lf), float(lam_cf)


def _person_metrics(ds: RatingsDataset, pred_norm: np.ndarray, y_norm: np.ndarray) -> dict[str, float | None]:
    lo, hi = ds.scale
    pred = lo + (hi - lo) * np.clip(pred_norm, 0.0, 1.0)
    true = lo + (hi - lo) * y_norm
    levels = np.arange(lo, hi + 1)
    return {
        "rmse": rating_rmse(pred, true),
        "spearman": spearman(pred, true),
        "pairwise": pairwise_accuracy(pred, true),
        "exact": exact_accuracy(pred, true, levels),
    }


def evaluate_individuals(
    ds: RatingsDataset,
    emb: np.ndarray,
    spec: FeatureSpec,
    cfg: IndividualEvalConfig | None = None,
    train_cfg: IndividualTrainConfig | None = None,
    model_cfg: dict | None = None,
) -> tuple[list[dict], dict]:
    """Every method on identical people splits and context draws. Returns (records, meta): one record per
    (method, seed, n_context) with the mean of each metric over the test people, and per-person pairwise
    accuracies for the confidence intervals."""
    cfg = cfg or IndividualEvalConfig()
    train_cfg = train_cfg or IndividualTrainConfig()
    y = ds.matrix()
    index = {p: i for i, p in enumerate(ds.people)}
    records: list[dict] = []
    meta: dict = {"chosen": {}, "training": {}}
    for seed in cfg.seeds:
        split = split_people(ds.people, cfg.train_frac, seed)
        train_rows = np.array([index[p] for p in split.fit + split.val])
        prior, _ = fit_rating_prior(y[train_rows], cfg.prior_rank)
        content = prior_loadings(emb, spec.prior_rank, train_cfg.loadings)
        k_best, lam_rm, lam_lf, lam_cf = _choose_baselines(ds, emb, y, split, cfg, seed, content, train_cfg.prior_mean)
        reward = fit_reward_model(emb, y, train_rows, float(lam_rm))
        # GPO's prior (and the content-factor reference's) starts from this very reward model: the baseline
        seed_cfg = replace(train_cfg, reward_lambda=float(lam_rm))
        gpo_mean = reward.astype(np.float32) if train_cfg.prior_mean == "reward" else None
        gpo_prior, gpo_known = fit_rating_prior(y[train_rows], spec.prior_rank, loadings=content, mean=gpo_mean)

        meta["chosen"][str(seed)] = {
            "knn_k": k_best,
            "reward_lambda": lam_rm,
            "lf_lambda": lam_lf,
            "content_lambda": lam_cf,
        }
        # the ridge readout starts at the strength the content-factor reference chose on the validation people
        rating_cfg = {"ridge_init": lam_cf, **(model_cfg or {})}
        models = {"gpo": train_individual_gpo(ds, emb, split, spec, seed_cfg, "rating", rating_cfg)}
        if cfg.comparison:
            models["gpo_comparison"] = train_individual_gpo(ds, emb, split, spec, seed_cfg, "comparison", model_cfg)
            models["gpo_comparison_bt"] = train_individual_gpo(
                ds, emb, split, spec, seed_cfg, "comparison_bt", model_cfg
            )
        for name, m in models.items():
            meta["training"][f"{name}/{seed}"] = {
                "steps": m.steps_run,
                "best_step": m.best_step,
                "best_val_pairwise": m.best_val,
                "wall_s": m.wall_s,
            }
        x_test = PersonFeatures(spec, emb).build(gpo_prior, gpo_known)
        rng = np.random.default_rng(seed)
        for k in cfg.n_context:
            per: dict[str, list[dict]] = {}
            for p in split.test:
                yp = y[index[p]]
                ctx, tgt = context_draw(ds, p, k, seed)
                preds = {
                    "gpo": predict_person(models["gpo"].model, "rating", x_test, yp, ctx, tgt, rng),
                    "global_mean": prior.mean[tgt].astype(np.float64),
                    "context_mean": np.full(len(tgt), float(np.mean(yp[ctx]))),
                    "knn": knn_predict(y, train_rows, yp, ctx, tgt, int(k_best), prior.mean),
                    "reward_model": reward[tgt],
                    "latent_factor": latent_factor_predict(prior, yp, ctx, tgt, float(lam_lf)),
                }
                if content is not None:
                    preds["content_factor"] = latent_factor_predict(gpo_prior, yp, ctx, tgt, lam_cf)
                for name, pred in preds.items():
                    per.setdefault(name, []).append({"person": p, **_person_metrics(ds, pred, yp[tgt])})
                for name, kind in (("gpo_comparison", "comparison"), ("gpo_comparison_bt", "comparison_bt")):
                    if name in models:
                        pair_pred = predict_person(models[name].model, kind, x_test, yp, ctx, tgt, rng)
                        acc = pairwise_from(kind, pair_pred, yp, tgt)
                        spear = spearman(pair_pred, yp[tgt]) if kind == "comparison_bt" else None
                        per.setdefault(name, []).append(
                            {"person": p, "rmse": None, "spearman": spear, "pairwise": acc, "exact": None}
                        )
            for name, rows in per.items():
                rec = {"method": name, "seed": seed, "n_context": k, "n_people": len(rows)}
                for metric in ("rmse", "spearman", "pairwise", "exact"):
                    vals = [r[metric] for r in rows if r[metric] is not None]
                    rec[metric] = float(np.mean(vals)) if vals else None
                rec["per_person_pairwise"] = {r["person"]: r["pairwise"] for r in rows}
                records.append(rec)
            log.info(
                "seed %d, %d context items: %s",
                seed,
                k,
                {
                    n: round(np.mean([r["pairwise"] for r in rows if r["pairwise"] is not None]), 4)
                    for n, rows in per.items()
                },
            )
    return records, meta


# ---------------------------------------------------------------------------------------------- checkpoints


def rating_checkpoint(
    result: IndividualModel, ds: RatingsDataset, emb: np.ndarray, embedder_meta: dict, extra_meta: dict | None = None
) -> Checkpoint:
    """A servable rating (or comparison: pair classifier) checkpoint: the model, its feature spec, the prior bank
    of the dataset's items (keyed by prompt + item text, as a served item is), and the content basis that gives
    any other item its loadings, with the reward model's estimate as its mean (or, for a model whose prior mean
    is the item mean, the training people's mean score)."""
    assert result.kind in ("rating", "comparison", "comparison_bt") and result.prior is not None, (
        "a rating or comparison model"
    )
    from service.gpo.prior import question_key

    rows = {question_key(ds.prompt, [it.text]): (i, 1) for i, it in enumerate(ds.items)}
    known = result.known
    basis = fit_content_basis(emb, result.spec.prior_rank)
    extra, basis_meta = basis.to_checkpoint()
    meta = {
        "kind": result.model.cfg.kind,
        "embedder": embedder_meta,
        "features": result.spec.to_dict(),
        "global_mean": float(result.prior.mean[known].mean()) if known.any() else 0.5,
        **basis_meta,
        "scale": list(ds.scale),
        "prompt": ds.prompt,
        **(extra_meta or {}),
    }
    if result.reward is not None:
        extra.update(result.reward.to_checkpoint())
    metrics = {
        "best_val_pairwise": result.best_val,
        "best_step": result.best_step,
        "steps_run": result.steps_run,
        "wall_s": result.wall_s,
        "history": result.history,
    }
    return Checkpoint(result.model, meta, PriorBank(result.prior, rows), metrics, extra=extra)
