"""Cross-validation over training people: the folds the evaluation chooses its settings on, and the prior mean
("auto": "reward" or "shrunk") chosen on the same folds."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.training.individuals.baselines import latent_factor_predict
from service.training.individuals.priors import fit_rating_prior, item_prior_mean
from service.training.individuals.splits import context_draw
from service.training.metrics import pairwise_accuracy
from service.training.ratings import RatingsDataset

log = logging.getLogger(__name__)

AUTO_CANDIDATES = ("reward", "shrunk")  # the first is the default, kept unless the second wins by > one se

Draw = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # (person, their ratings [I], context, targets)
Fold = tuple[np.ndarray, list[Draw]]  # (rows the candidates are fitted on, the fold's people's draws)
Predict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (y_person, ctx, tgt) -> prediction


def people_folds(
    ds: RatingsDataset,
    y: np.ndarray,
    people: Sequence[str],
    n_folds: int,
    sizes: Sequence[int],
    draws: int,
    seed: int,
) -> list[Fold]:
    """`n_folds` folds of `people` (training people only: fit + validation): each fold's rows are the other
    folds' people, its draws `draws` context draws of each of its people at each of `sizes` context items."""
    index = {p: i for i, p in enumerate(ds.people)}
    fold_of = np.random.default_rng(seed + 30_000).permutation(len(people)) % n_folds
    folds = []
    for f in range(n_folds):
        rows = np.array([index[p] for p, g in zip(people, fold_of, strict=True) if g != f])
        fold_draws = [
            (p, y[index[p]], *context_draw(ds, p, k, seed + 10_000 + d))
            for p, g in zip(people, fold_of, strict=True)
            if g == f
            for k in sizes
            for d in range(draws)
        ]
        folds.append((rows, fold_draws))
    return folds


def cv_accuracies(folds: list[Fold], predict_on: Callable[[np.ndarray], Predict]) -> list[tuple[str, float]]:
    """(person, pairwise accuracy) of every draw whose targets are not all tied, each fold's people predicted by
    `predict_on(rows of the other folds)`."""
    out = []
    for rows, draws in folds:
        fn = predict_on(rows)
        for person, yp, c, t in draws:
            acc = pairwise_accuracy(fn(yp, c, t), yp[t])
            if acc is not None:
                out.append((person, acc))
    return out


def choose_best(folds: list[Fold], candidates: Sequence, predict: Callable[[object, np.ndarray], Predict]):
    """The candidate with the best mean pairwise accuracy over all draws (first best on ties)."""
    means = []
    for cand in candidates:
        accs = cv_accuracies(folds, lambda rows, cand=cand: predict(cand, rows))
        means.append(float(np.mean([a for _, a in accs])))
    return candidates[int(np.argmax(means))]


@dataclass(frozen=True)
class PriorChoice:
    chosen: str
    scores: dict[str, float]  # mean over people of each one's mean CV pairwise accuracy
    diff: float  # shrunk - reward, mean of the per-person differences
    se: float  # its standard error over people

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "scores": self.scores, "diff": self.diff, "se": self.se}


def choose_prior_mean(
    folds: list[Fold],
    emb: np.ndarray,
    y: np.ndarray,
    loadings: np.ndarray | None,
    rank: int,
    reward_lambda: float,
    ridge: float,
    item_folds: int,
) -> PriorChoice:
    """prior_mean "auto": "reward" or "shrunk" (priors.item_prior_mean) by cross-validation on `folds` (training
    people only, see people_folds). Each fold's people are scored with the prior fitted on the other folds' people
    (content `loadings`, or a rank-`rank` rating SVD when None) by the readout GPO starts from (mean + loadings @ z,
    ridge `ridge`: latent_factor_predict). "shrunk" is chosen only when its per-person mean pairwise accuracy beats
    "reward" by more than one standard error of the paired per-person difference: with no evidence, the default."""
    per: dict[str, dict[str, list[float]]] = {}
    for how in AUTO_CANDIDATES:
        mean_of = item_prior_mean(how, emb, y, reward_lambda, item_folds)
        assert mean_of is not None

        def predict_on(rows: np.ndarray, mean_of=mean_of) -> Predict:
            prior, _ = fit_rating_prior(y[rows], rank, loadings=loadings, mean=mean_of(rows).astype(np.float32))
            return lambda yp, c, t: latent_factor_predict(prior, yp, c, t, ridge)

        for person, acc in cv_accuracies(folds, predict_on):
            per.setdefault(person, {}).setdefault(how, []).append(acc)
    base, alt = AUTO_CANDIDATES
    people = [p for p, v in per.items() if base in v and alt in v]
    score = {how: np.array([np.mean(per[p][how]) for p in people]) for how in AUTO_CANDIDATES}
    d = score[alt] - score[base]
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    chosen = alt if float(d.mean()) > se else base
    choice = PriorChoice(chosen, {h: float(s.mean()) for h, s in score.items()}, float(d.mean()), se)
    log.info(
        "prior mean auto: %s (CV pairwise over %d training people: reward %.4f, shrunk %.4f; shrunk - reward "
        "%+.4f, se %.4f)",
        chosen,
        len(people),
        choice.scores[base],
        choice.scores[alt],
        choice.diff,
        se,
    )
    return choice
