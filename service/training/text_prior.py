"""Text priors in meta-training: prior features for the options of questions no training group answered.

`service.gpo.features.TextPrior` maps a choice option's embedding to its prior features (mean and loadings on the
training groups' principal directions). Meta-training needs it twice:

- for the test groups and serving, one map fitted on the full prior's items (`TextPriors.full`);
- for the training and validation groups, the features GPO is shown when an item's own prior is hidden (prior
  dropout, validation questions, thin questions): an *out-of-fold* estimate, from a map fitted on the group's
  leave-one-out prior (never its own answers) and on the other folds' questions (never the item itself), so a
  hidden item looks as a new question will at serving, not better.

The ridge strength is chosen by the same folds on the full prior's items (squared error of the estimates), from the
training groups' answers only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.gpo.features import TEXT_FLAG, TextPrior, centred_features
from service.gpo.prior import PopulationPrior
from service.training.features import GroupPriors
from service.training.items import ItemTable

log = logging.getLogger(__name__)

TEXT_ALPHAS = (1.0, 3.0, 10.0, 30.0, 100.0, 1e3, 1e4, 1e5)  # ridge of the text map (standardised embeddings), by folds
TEXT_FOLDS = 5


def prior_targets(table: ItemTable, prior: PopulationPrior, rows: np.ndarray) -> np.ndarray:
    """[n, 1 + k] what the text map predicts for item `rows`: the mean's deviation from uniform, the loadings."""
    uniform = 1.0 / table.q_len[table.item_q[rows]]
    return np.column_stack([prior.mean[rows] - uniform, prior.loadings[rows]]).astype(np.float64)


def question_folds(n_questions: int, folds: int, seed: int) -> np.ndarray:
    """[Q] the fold of every question (a random balanced assignment, its own stream)."""
    rng = np.random.default_rng([seed, 0x545854])  # "TXT"
    return rng.permutation(np.arange(n_questions) % folds)


@dataclass
class TextPriors:
    """The text map for test groups and serving, and every training group's out-of-fold text features."""

    full: TextPrior
    oof: dict[str, np.ndarray]  # group -> [I, 2 + k] text prior features of every item (out of fold, leave-one-out)
    alpha: float | np.ndarray  # one ridge strength, or one per target column (deviation, loadings)
    fit_items: int  # items the maps were fitted on
    # [I, 1 + k] out-of-fold estimates of the full prior's targets (deviation from uniform, loadings) of its items
    # (NaN elsewhere): how well the text prior stands in for a known question's own prior (service.training.matching)
    oof_full: np.ndarray | None = None


class _Fold:
    """One fold's design: the standardised, question-centred embeddings of the training items outside the fold
    (standardised over those items, whoever answered them) and of the items the fold estimates. `base` marks the
    training items the ridge is usually fitted on (the full prior's); a fit on a subset of them reuses the inverse
    of the base Gram matrix (Woodbury), so the leave-one-out maps of ~70 groups cost little more than one."""

    def __init__(self, table: ItemTable, train_rows: np.ndarray, est_rows: np.ndarray, base: np.ndarray):
        emb = table.emb[train_rows].astype(np.float64)
        mu, sd = emb.mean(axis=0), np.maximum(emb.std(axis=0), 1e-6)
        self.rows, self.est_rows = train_rows, est_rows
        self.x = centred_features(table.emb[train_rows], table.item_q[train_rows], mu, sd)
        self.x_est = centred_features(table.emb[est_rows], table.item_q[est_rows], mu, sd)
        self.base = base[train_rows]  # [n_train] bool
        self.base_gram = self.x[self.base].T @ self.x[self.base]
        self._inverse: dict[float, np.ndarray] = {}

    def solve(self, mask: np.ndarray, targets: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
        """Ridge weights [D, m] fitted on the training items where `mask` [n_train] holds, with targets
        [mask.sum(), m]; `alpha` one strength or one per target column [m]."""
        if np.ndim(alpha) == 0:
            return self._solve(mask, targets, float(alpha))
        alpha = np.asarray(alpha, dtype=np.float64)
        out = np.zeros((self.x.shape[1], targets.shape[1]))
        for a in np.unique(alpha):
            out[:, alpha == a] = self._solve(mask, targets[:, alpha == a], float(a))
        return out

    def _solve(self, mask: np.ndarray, targets: np.ndarray, alpha: float) -> np.ndarray:
        x = self.x[mask]
        b = x.T @ targets
        if (mask & ~self.base).any():  # not a subset of the base items: solve directly
            return np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), b)
        if alpha not in self._inverse:
            self._inverse[alpha] = np.linalg.inv(self.base_gram + alpha * np.eye(self.x.shape[1]))
        a_inv = self._inverse[alpha]
        u = self.x[self.base & ~mask]  # the base items left out: (A - U^T U)^-1 by Woodbury
        if len(u) == 0:
            return a_inv @ b
        au = a_inv @ u.T  # [D, r]
        s = np.eye(len(u)) - u @ au
        return a_inv @ b + au @ np.linalg.solve(s, au.T @ b)


def choose_text_alpha(
    folds: Sequence[_Fold],
    covered: np.ndarray,
    targets_of: Callable[[np.ndarray], np.ndarray],
    grid: Sequence[float],
    per_column: bool = False,
) -> float | np.ndarray:
    """The grid value with the least out-of-fold squared error of the estimates on the `covered` items [I] bool
    (`targets_of(rows)`: the targets of table rows); with `per_column`, one per target column [m] (each column's
    error is its own: a loading the text reads poorly is shrunk more than one it reads well)."""
    errors = None
    for f in folds:
        mask = covered[f.rows]
        keep = covered[f.est_rows]
        if not mask.any() or not keep.any():
            continue
        y_fit, y_est = targets_of(f.rows[mask]), targets_of(f.est_rows[keep])
        if errors is None:
            errors = np.zeros((len(grid), y_fit.shape[1]))
        for i, alpha in enumerate(grid):
            errors[i] += ((f.x_est[keep] @ f.solve(mask, y_fit, alpha) - y_est) ** 2).sum(axis=0)
    if errors is None:
        errors = np.zeros((len(grid), 1))
    if per_column:
        return np.asarray(grid, dtype=np.float64)[np.argmin(errors, axis=0)]
    return float(grid[int(np.argmin(errors.sum(axis=1)))])


def full_oof_estimates(
    folds: Sequence[_Fold],
    covered: np.ndarray,
    targets_of: Callable[[np.ndarray], np.ndarray],
    alpha: float | np.ndarray,
) -> np.ndarray:
    """[I, m] the out-of-fold estimates of the `covered` items' targets (NaN for the other items)."""
    n_items = len(covered)
    est: np.ndarray | None = None
    for f in folds:
        mask, keep = covered[f.rows], covered[f.est_rows]
        if not mask.any() or not keep.any():
            continue
        e = f.x_est[keep] @ f.solve(mask, targets_of(f.rows[mask]), alpha)
        if est is None:
            est = np.full((n_items, e.shape[1]), np.nan)
        est[f.est_rows[keep]] = e
    return est if est is not None else np.full((n_items, 1), np.nan)


def fit_text_priors(
    table: ItemTable,
    priors: GroupPriors,
    groups: Sequence[str],
    known_q: np.ndarray,
    seed: int,
    folds: int = TEXT_FOLDS,
    grid: Sequence[float] = TEXT_ALPHAS,
    per_column: bool = False,
) -> TextPriors:
    """Text maps from the training groups' priors (see the module doc).

    Every question of the table gets a fold. A group's out-of-fold features of the items of fold f come from a
    map fitted on the items outside f that its leave-one-out prior covers, with that prior's targets: neither its
    answers nor (ragged data) which questions it answered reach them. The embeddings are standardised over the
    training questions' items (`known_q`) outside the fold, whoever answered them. The full map (test groups,
    serving) is fitted on every item of the full prior.
    """
    in_q = known_q[table.item_q]
    if not priors.known.any():
        raise ValueError("text prior: no training item has a prior")
    fold_of_item = question_folds(len(table.questions), folds, seed)[table.item_q]
    design = [
        _Fold(table, np.flatnonzero(in_q & (fold_of_item != f)), np.flatnonzero(fold_of_item == f), priors.known)
        for f in range(folds)
    ]

    def full_targets(rows: np.ndarray) -> np.ndarray:
        return prior_targets(table, priors.full, rows)

    alpha = choose_text_alpha(design, priors.known, full_targets, grid, per_column)

    k = priors.full.rank
    uniform = 1.0 / table.q_len[table.item_q]
    oof = {g: np.zeros((table.n_items, 2 + k), dtype=np.float32) for g in groups}
    for d in design:
        if d.est_rows.size == 0:
            continue
        # groups whose leave-one-out priors cover the same items share one solve (complete data: all of them)
        by_rows: dict[bytes, list[str]] = {}
        for g in groups:
            by_rows.setdefault(np.packbits(priors.loo_known[g][d.rows]).tobytes(), []).append(g)
        for members in by_rows.values():
            mask = priors.loo_known[members[0]][d.rows]
            if not mask.any():
                continue
            rows = d.rows[mask]
            targets = np.concatenate([prior_targets(table, priors.loo[g], rows) for g in members], axis=1)
            a = alpha if np.ndim(alpha) == 0 else np.tile(alpha, len(members))
            est = d.x_est @ d.solve(mask, targets, a)  # [n_est, len(members) * (1 + k)]
            for j, g in enumerate(members):
                e = est[:, j * (1 + k) : (j + 1) * (1 + k)]
                oof[g][d.est_rows] = np.column_stack(
                    [np.full(len(e), TEXT_FLAG), uniform[d.est_rows] + e[:, 0], e[:, 1:]]
                ).astype(np.float32)
    fit_rows = np.flatnonzero(priors.known)
    full = TextPrior.fit(
        table.emb[fit_rows], table.item_q[fit_rows], prior_targets(table, priors.full, fit_rows), alpha
    )
    log.info("text prior: ridge %s chosen by %d question folds on %d items", alpha, folds, fit_rows.size)
    oof_full = full_oof_estimates(design, priors.known, full_targets, alpha)
    return TextPriors(full, oof, alpha, int(fit_rows.size), oof_full)


def text_features(text: TextPrior, table: ItemTable, rows: np.ndarray) -> np.ndarray:
    """[n, 2 + k] the text prior features of item `rows` (whole questions)."""
    return text.features(table.emb[rows], table.item_q[rows], table.q_len[table.item_q[rows]])
