"""Episodes of meta-training: each group's item features, the episodes drawn from them, and the fixed episodes that
choose the readout before training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from service.gpo.batch import Episode
from service.gpo.features import FeatureSpec
from service.gpo.prior import PopulationPrior
from service.training.datasets import PreferenceDataset
from service.training.items import ItemTable


class GroupFeatures:
    """Per-group feature tensors [I, Dx] and preferences [I] for the groups episodes are drawn from; `known[g]`
    marks the items that have a prior in group g's (leave-one-out) features."""

    def __init__(
        self,
        spec: FeatureSpec,
        table: ItemTable,
        priors: dict[str, PopulationPrior | None],
        ys: dict[str, np.ndarray],
        known: dict[str, np.ndarray],
        text: dict[str, np.ndarray] | None = None,
    ):
        rows = np.arange(table.n_items)
        self.x = {g: torch.from_numpy(spec.build(table.emb, priors[g], rows, known[g])) for g in priors}
        self.y = {g: torch.from_numpy(ys[g]) for g in priors}
        # what a hidden item's prior block shows: its out-of-fold text features, or zeros (no prior)
        width = spec.prior_slice.stop - spec.prior_slice.start
        self.text = {
            g: torch.from_numpy(text[g]) if text is not None else torch.zeros(table.n_items, width) for g in priors
        }
        if text is not None:  # items without a prior of their own (thin questions) show their text estimate
            for g in priors:
                self.x[g][torch.from_numpy(~known[g]), spec.prior_slice] = self.text[g][torch.from_numpy(~known[g])]

    def hidden(self, g: str, hide_q: np.ndarray, table: ItemTable, spec: FeatureSpec) -> torch.Tensor:
        """Group g's features with the prior of questions `hide_q` hidden (replaced by their text block)."""
        x = self.x[g].clone()
        rows = torch.from_numpy(table.rows(hide_q))
        x[rows, spec.prior_slice] = self.text[g][rows]
        return x


def sample_episode(
    rng: np.random.Generator,
    table: ItemTable,
    x: torch.Tensor,
    y: torch.Tensor,
    qpool: np.ndarray,
    n_ctx: int,
    n_tgt: int,
    spec: FeatureSpec,
    prior_dropout: float,
    text: torch.Tensor | None = None,
) -> Episode:
    """Random context and target questions (disjoint) of one group; targets' y are the truth. A `prior_dropout`
    share of the questions is shown without its own prior: with `text` [I, 2 + k] (the group's out-of-fold text
    prior features), with those instead, else with zeros."""
    perm = rng.permutation(qpool)
    n_ctx = min(n_ctx, len(perm) - 1)
    qc, qt = perm[:n_ctx], perm[n_ctx : n_ctx + n_tgt]
    episode = make_eval_episode(table, x, y, qc, qt)
    if spec.use_prior and prior_dropout > 0:
        qs = np.concatenate([qc, qt])
        drop_q = rng.random(len(qs)) < prior_dropout
        drop = torch.from_numpy(np.repeat(drop_q, table.q_len[qs]))
        if text is None:
            episode.x[drop, spec.prior_slice] = 0.0
        else:
            episode.x[drop, spec.prior_slice] = text[torch.from_numpy(table.rows(qs))][drop]
    return episode


def answered_questions(table: ItemTable, dataset: PreferenceDataset, group: str, qidx: np.ndarray) -> np.ndarray:
    """The question indices of `qidx` (in that order) that `group` answered: its pool of episode questions."""
    answered = np.array([dataset.has(group, table.questions[i].qid) for i in qidx], dtype=bool)
    return np.asarray(qidx)[answered] if len(qidx) else np.asarray(qidx)


def make_eval_episode(
    table: ItemTable, x: torch.Tensor, y: torch.Tensor, ctx_q: np.ndarray, tgt_q: np.ndarray
) -> Episode:
    """One group's episode: the given context questions, then the target questions (x[rows] is a copy)."""
    rc, rt = table.rows(ctx_q), table.rows(tgt_q)
    rows = np.concatenate([rc, rt])
    question = np.concatenate([np.zeros(len(rc), dtype=np.int64), np.repeat(np.arange(len(tgt_q)), table.q_len[tgt_q])])
    is_ctx = np.zeros(len(rows), dtype=bool)
    is_ctx[: len(rc)] = True
    return Episode(x=x[rows], y=y[rows], is_context=torch.from_numpy(is_ctx), question=torch.from_numpy(question))


def text_context_episodes(
    table: ItemTable,
    feats: GroupFeatures,
    pools: dict[str, np.ndarray],
    groups: Sequence[str],
    scorable: np.ndarray,
    spec: FeatureSpec,
    n_context: int,
    seed: int,
) -> tuple[list[Episode], list[np.ndarray]]:
    """One episode per group whose `n_context` context questions show their out-of-fold text prior (as a context
    of questions new to the bank would), the other scorable questions it answered as targets with their own prior."""
    rng = np.random.default_rng(seed + 20_000)
    episodes, tqs = [], []
    for g in groups:
        usable = scorable[np.isin(scorable, pools[g])]
        if len(usable) <= n_context:
            continue
        ctx = rng.choice(usable, size=n_context, replace=False)
        tgt = usable[~np.isin(usable, ctx)]
        episodes.append(make_eval_episode(table, feats.hidden(g, ctx, table, spec), feats.y[g], ctx, tgt))
        tqs.append(tgt)
    return episodes, tqs
