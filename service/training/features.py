"""Item features for GPO: the LLM embedding, optionally joined with population-prior features."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.gpo.prior import PopulationPrior, fit_prior
from service.training.datasets import PreferenceDataset
from service.training.items import ItemTable


def answers_matrix(table: ItemTable, dataset: PreferenceDataset, groups: Sequence[str]) -> np.ndarray:
    """[I, G] the groups' preferences for every item (NaN where unanswered)."""
    return np.stack([table.group_y(dataset, g) for g in groups], axis=1)


def fit_group_priors(
    table: ItemTable, dataset: PreferenceDataset, source_groups: Sequence[str], known_q: np.ndarray, rank: int
) -> tuple[PopulationPrior, dict[str, PopulationPrior]]:
    """The prior from all `source_groups` and, for each of them, a leave-one-out prior without it.

    A group never sees its own answers in its features, during training as at test time; every
    leave-one-out basis is rotated onto the full one. Items of questions outside `known_q` get zeros.
    """
    rows = table.rows(np.flatnonzero(known_q))
    y = answers_matrix(table, dataset, source_groups)[rows]  # [I_known, G]

    def expand(p: PopulationPrior) -> PopulationPrior:
        mean = np.zeros(table.n_items, dtype=np.float32)
        load = np.zeros((table.n_items, rank), dtype=np.float32)
        mean[rows], load[rows] = p.mean, p.loadings
        return PopulationPrior(mean, load)

    full = fit_prior(y, rank)
    loo = {}
    for j, g in enumerate(source_groups):
        others = np.delete(y, j, axis=1)
        loo[g] = expand(fit_prior(others, rank, reference=full.loadings))
    return expand(full), loo


def known_items(table: ItemTable, known_q: np.ndarray) -> np.ndarray:
    """[I] bool: the item's question is known to the prior."""
    return known_q[table.item_q]
