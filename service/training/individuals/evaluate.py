"""Evaluation of individuals: every method on identical people splits and context draws, baselines chosen by CV."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from service.gpo.features import FeatureSpec
from service.progress import progress_bar
from service.training.individuals.baselines import fit_reward_model, knn_predict, latent_factor_predict
from service.training.individuals.cv import AUTO_CANDIDATES, PriorChoice, choose_best, choose_prior_mean, people_folds
from service.training.individuals.priors import PersonFeatures, fit_rating_prior, item_prior_mean, prior_loadings
from service.training.individuals.splits import PeopleSplit, context_draw, split_people
from service.training.individuals.train import (
    IndividualTrainConfig,
    pairwise_from,
    predict_person,
    train_individual_gpo,
)
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
    progress: bool = True  # a bar over each seed's steps: choosing baselines, training each model, scoring


def _choose_baselines(
    ds: RatingsDataset,
    emb: np.ndarray,
    y: np.ndarray,
    split: PeopleSplit,
    cfg: IndividualEvalConfig,
    seed: int,
    content: np.ndarray | None,
    train_cfg: IndividualTrainConfig,
) -> tuple[int, float, float, float, str, PriorChoice | None]:
    """(kNN k, reward-model ridge, latent-factor ridge, content-factor ridge, prior mean, its choice when "auto"),
    chosen by cross-validation over the training people (fit + validation; `cv_folds` folds): each candidate is
    fitted on the other folds and scored by mean pairwise accuracy on the fold's people, over every evaluated
    context size up to main_context with `val_draws` context draws each; the best mean over all training people
    wins (first best on ties). The content-factor reference's prior mean is GPO's (train_cfg.prior_mean), with the
    chosen reward model's ridge. prior_mean "auto" (cv.choose_prior_mean) is chosen on the same folds of people at
    the training validation's context sizes and draws (train_cfg.val_sizes, val_draws), with the content-factor
    ridge chosen under "reward"; that ridge is chosen again when "shrunk" wins."""
    people = list(split.fit) + list(split.val)
    sizes = [k for k in cfg.n_context if k <= cfg.main_context] or [cfg.main_context]
    folds = people_folds(ds, y, people, cfg.cv_folds, sizes, cfg.val_draws, seed)

    def choose(candidates: Sequence, predict) -> float | int:
        """predict(candidate, rows) -> a function (y_person, ctx, tgt) -> prediction."""
        return choose_best(folds, candidates, predict)

    def knn(k: int, rows: np.ndarray):
        mean = fit_rating_prior(y[rows], 0)[0].mean
        return lambda yp, c, t: knn_predict(y, rows, yp, c, t, k, mean)

    def reward(lam: float, rows: np.ndarray):
        r = fit_reward_model(emb, y, rows, lam)
        return lambda yp, c, t: r[t]

    means: dict[tuple, np.ndarray] = {}  # a fold's prior mean, the same for every candidate ridge

    def factor(lam: float, rows: np.ndarray, loadings: np.ndarray | None = None, mean_lam: float | None = None, how=""):
        mean = None
        if mean_lam is not None:
            key = (how, mean_lam, rows.tobytes())
            if key not in means:
                mean_of = item_prior_mean(how, emb, y, mean_lam, train_cfg.prior_item_folds)
                assert mean_of is not None
                means[key] = mean_of(rows).astype(np.float32)
            mean = means[key]
        rank = loadings.shape[1] if loadings is not None else cfg.prior_rank
        prior, _ = fit_rating_prior(y[rows], rank, loadings=loadings, mean=mean)
        return lambda yp, c, t: latent_factor_predict(prior, yp, c, t, lam)

    k = choose(cfg.knn_k, knn)
    lam_rm = choose(cfg.reward_lambda, reward)
    lam_lf = choose(cfg.lf_lambda, factor)
    prior_mean, choice = train_cfg.prior_mean, None

    def choose_cf() -> float:
        mean_lam = lam_rm if prior_mean != "items" else None
        return choose(cfg.lf_lambda, lambda lam, rows: factor(lam, rows, content, mean_lam, prior_mean))

    lam_cf = 1.0
    if prior_mean == "auto":
        prior_mean = AUTO_CANDIDATES[0]
        lam_cf = choose_cf() if content is not None else 1.0
        rank = content.shape[1] if content is not None else cfg.prior_rank
        prior_folds = people_folds(ds, y, people, cfg.cv_folds, train_cfg.val_sizes, train_cfg.val_draws, seed)
        choice = choose_prior_mean(prior_folds, emb, y, content, rank, lam_rm, lam_cf, train_cfg.prior_item_folds)
        prior_mean = choice.chosen
        if prior_mean != AUTO_CANDIDATES[0] and content is not None:
            lam_cf = choose_cf()
    elif content is not None:
        lam_cf = choose_cf()
    return int(k), float(lam_rm), float(lam_lf), float(lam_cf), prior_mean, choice


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
    on_seed: Callable[[list[dict], dict], None] | None = None,
) -> tuple[list[dict], dict]:
    """Every method on identical people splits and context draws. Returns (records, meta): one record per
    (method, seed, n_context) with the mean of each metric over the test people, and per-person pairwise
    accuracies for the confidence intervals. `on_seed(records, meta)` runs after each seed with everything so far
    (to save it: an interrupted run then keeps its finished seeds)."""
    cfg = cfg or IndividualEvalConfig()
    train_cfg = train_cfg or IndividualTrainConfig()
    y = ds.matrix()
    index = {p: i for i, p in enumerate(ds.people)}
    records: list[dict] = []
    meta: dict = {"chosen": {}, "training": {}}
    n_models = 3 if cfg.comparison else 1
    bar = progress_bar(len(cfg.seeds) * (n_models + 2), "individuals", unit="stage", enabled=cfg.progress)
    for seed in cfg.seeds:
        bar.set_postfix(seed=seed, stage="baselines")
        split = split_people(ds.people, cfg.train_frac, seed)
        train_rows = np.array([index[p] for p in split.fit + split.val])
        prior, _ = fit_rating_prior(y[train_rows], cfg.prior_rank)
        content = prior_loadings(emb, spec.prior_rank, train_cfg.loadings)
        k_best, lam_rm, lam_lf, lam_cf, prior_mean, choice = _choose_baselines(
            ds, emb, y, split, cfg, seed, content, train_cfg
        )
        bar.update(1)
        reward = fit_reward_model(emb, y, train_rows, float(lam_rm))
        # GPO's prior (and the content-factor reference's) uses this very reward model: the baseline; and the
        # same prior mean ("auto" resolved once per seed, for both)
        seed_cfg = replace(train_cfg, reward_lambda=float(lam_rm), prior_mean=prior_mean)
        mean_of = item_prior_mean(prior_mean, emb, y, float(lam_rm), train_cfg.prior_item_folds)
        gpo_mean = mean_of(train_rows).astype(np.float32) if mean_of is not None else None
        gpo_prior, gpo_known = fit_rating_prior(y[train_rows], spec.prior_rank, loadings=content, mean=gpo_mean)

        meta["chosen"][str(seed)] = {
            "knn_k": k_best,
            "reward_lambda": lam_rm,
            "lf_lambda": lam_lf,
            "content_lambda": lam_cf,
            "prior_mean": prior_mean,
            **({"prior_cv": choice.to_dict()} if choice is not None else {}),
        }
        # the ridge readout starts at the strength the content-factor reference chose on the validation people
        rating_cfg = {"ridge_init": lam_cf, **(model_cfg or {})}
        kinds = {"gpo": ("rating", rating_cfg)}
        if cfg.comparison:
            kinds |= {"gpo_comparison": ("comparison", model_cfg), "gpo_comparison_bt": ("comparison_bt", model_cfg)}
        models = {}
        for name, (kind, kind_cfg) in kinds.items():
            bar.set_postfix(seed=seed, stage=f"training {name}")
            models[name] = train_individual_gpo(ds, emb, split, spec, seed_cfg, kind, kind_cfg)
            bar.update(1)
        bar.set_postfix(seed=seed, stage="scoring")
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
        bar.update(1)
        if on_seed is not None:
            on_seed(records, meta)
    bar.close()
    return records, meta
