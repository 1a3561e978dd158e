"""Item features for GPO: the LLM embedding, optionally joined with population-prior features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.gpo.prior import PopulationPrior, fit_prior
from service.training.datasets import PreferenceDataset
from service.training.items import ItemTable

# A question answered by fewer training groups than this has no prior: it is treated as new (known flag 0,
# zero prior features), as a question no training group answered is at serving. 1: every answer is used (a thin
# question's own answers beat no prior: on ragged OpinionQA the readout alone went 0.9612 -> 0.9622 from a
# threshold of 3 to 1, mean of 3 seeds). On complete data this never applies.
MIN_PRIOR_GROUPS = 1


@dataclass
class GroupPriors:
    """The prior of all source groups, a leave-one-out prior per source group, and which items each covers.

    `known` [I] bool: items whose question enough source groups answered (the full prior's items);
    `loo_known[g]` [I] bool: the same counted without group g (what g's own features may use).
    """

    full: PopulationPrior
    loo: dict[str, PopulationPrior]
    known: np.ndarray
    loo_known: dict[str, np.ndarray]


def answers_matrix(table: ItemTable, dataset: PreferenceDataset, groups: Sequence[str]) -> np.ndarray:
    """[I, G] the groups' preferences for every item (NaN where unanswered)."""
    return np.stack([table.group_y(dataset, g) for g in groups], axis=1)


def fit_group_priors(
    table: ItemTable,
    dataset: PreferenceDataset,
    source_groups: Sequence[str],
    known_q: np.ndarray,
    rank: int,
    min_groups: int = MIN_PRIOR_GROUPS,
) -> GroupPriors:
    """The prior from all `source_groups` and, for each of them, a leave-one-out prior without it.

    A group never sees its own answers in its features, during training as at test time: its leave-one-out
    prior is fitted without its column, and which of its items have a prior depends only on how many *other*
    groups answered them. A question of `known_q` answered by fewer than `min_groups` of the groups a prior is
    fitted on (fewer than all of them, when they are fewer) is left out of that prior (zeros, known False).
    Every leave-one-out basis is rotated onto the full one (on the items both cover). Items of questions
    outside `known_q` get zeros.
    """
    y_all = answers_matrix(table, dataset, source_groups)  # [I, G], NaN where unanswered
    answered = np.isfinite(y_all)  # [I, G]
    counts = answered.sum(axis=1)
    in_q = known_q[table.item_q]

    def fit_on(rows: np.ndarray, y: np.ndarray, reference: np.ndarray | None) -> PopulationPrior:
        mean = np.zeros(table.n_items, dtype=np.float32)
        load = np.zeros((table.n_items, rank), dtype=np.float32)
        if rows.size:
            p = fit_prior(y[rows], rank, reference=None if reference is None else reference[rows])
            mean[rows], load[rows] = p.mean, p.loadings
        return PopulationPrior(mean, load)

    n = len(source_groups)
    known = in_q & (counts >= max(1, min(min_groups, n)))  # a question every group answered is always known
    full = fit_on(np.flatnonzero(known), y_all, None)
    loo, loo_known = {}, {}
    for j, g in enumerate(source_groups):
        known_g = in_q & (counts - answered[:, j] >= max(1, min(min_groups, n - 1)))
        loo[g] = fit_on(np.flatnonzero(known_g), np.delete(y_all, j, axis=1), full.loadings)
        loo_known[g] = known_g
    return GroupPriors(full, loo, known, loo_known)


def known_items(table: ItemTable, known_q: np.ndarray) -> np.ndarray:
    """[I] bool: the item's question is known to the prior."""
    return known_q[table.item_q]
