"""Linear probe: a new question's answers read from its options' embeddings (a text baseline for new questions).

The train groups' answers to the known questions give each known item (question, option) a mean and loadings
on the groups' principal directions (`baselines.factorise`, as `latent_factor`). A ridge map from the item's
embedding, standardised and centred within its question, predicts the mean's deviation from uniform and the
loadings; a new question's items get theirs from it. A test group's factors z are the ridge fit of its context
residuals (each context question, known or new, with its own or its text-read estimates), and a target's
prediction is 1/n_options + deviation + loadings @ z, clipped at 1e-4 and renormalised. Centring within the
question makes every prediction's deviations sum to 0 over the question's options, as the training targets do.

Both ridge strengths (the text map's and the factors') are chosen on the train side only: a share of the known
questions is held out as validation questions, the probe is fitted on the rest, and each train group, with its
answers to the context questions as context, is scored on the validation questions it answered. The test groups'
answers reach nothing but their own factors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from service.gpo.features import TextPrior
from service.training.baselines import factorise, normalise_blocks
from service.training.datasets import PreferenceDataset
from service.training.items import ItemTable
from service.training.metrics import question_alignments

PROBE_RANK = 3  # principal directions the text predicts (the probe of issue 16's report used 3)
TEXT_ALPHAS = (1.0, 10.0, 100.0, 1e3, 1e4)  # ridge of the text map, on standardised embeddings
FACTOR_RIDGES = (1e-3, 1e-2, 1e-1, 1.0)  # ridge of a group's factors on its context
VAL_SHARE = 0.2  # share of the known questions held out to choose both ridges


def factors(loadings: np.ndarray, residual: np.ndarray, ridge: float) -> np.ndarray:
    """z [k]: the ridge solution of loadings [n, k] @ z = residual [n]."""
    k = loadings.shape[1]
    return np.linalg.solve(loadings.T @ loadings + ridge * np.eye(k), loadings.T @ residual)


class _Known:
    """The train groups' answers to the known questions, laid out by item."""

    def __init__(self, dataset: PreferenceDataset, table: ItemTable, train: Sequence[str], qids: Sequence[str]):
        self.qids = list(qids)
        self.qidx = table.qindex(self.qids)
        self.rows = table.rows(self.qidx)  # table rows of the known items, in qids order
        self.item_q = table.item_q[self.rows]
        self.y = np.stack([table.group_y(dataset, g)[self.rows] for g in train], axis=1).astype(np.float64)
        n_opt = table.q_len[self.item_q].astype(np.float64)
        self.uniform = 1.0 / n_opt
        start = np.concatenate([[0], np.cumsum(table.q_len[self.qidx])])
        self.where = {q: (int(start[i]), int(start[i + 1])) for i, q in enumerate(self.qids)}

    def fit(self, table: ItemTable, rank: int, alpha: float, keep: np.ndarray | None = None):
        """(mean, loadings) of the known items and the text map fitted on them (rows `keep`, default all)."""
        keep = np.arange(len(self.rows)) if keep is None else keep
        mean, load = factorise(self.y[keep], rank)
        load = np.pad(load, ((0, 0), (0, rank - load.shape[1])))
        targets = np.column_stack([mean - self.uniform[keep], load])
        text = TextPrior.fit(table.emb[self.rows[keep]], self.item_q[keep], targets, alpha)
        return mean, load, text


def _choose(
    dataset: PreferenceDataset,
    table: ItemTable,
    train: Sequence[str],
    known: _Known,
    ctx_qids: Sequence[str],
    rank: int,
    seed: int,
) -> tuple[float, float]:
    """(text alpha, factor ridge) with the best mean alignment of the train groups on held-out known questions."""
    rng = np.random.default_rng([seed, 0x50524F])  # "PRO"
    ctx = [q for q in ctx_qids if q in known.where]
    pool = [q for q in known.qids if q not in set(ctx)]
    n_val = int(round(VAL_SHARE * len(pool)))
    if n_val == 0 or len(train) < 2:
        return TEXT_ALPHAS[len(TEXT_ALPHAS) // 2], FACTOR_RIDGES[len(FACTOR_RIDGES) // 2]
    val = set(rng.choice(pool, size=n_val, replace=False).tolist())
    fit_q = [q for q in known.qids if q not in val]
    keep = np.concatenate([np.arange(*known.where[q]) for q in fit_q])
    val_q = [q for q in known.qids if q in val]
    val_rows = np.concatenate([np.arange(*known.where[q]) for q in val_q])
    fit_pos = {q: i for i, q in enumerate(fit_q)}
    fit_start = np.concatenate([[0], np.cumsum([known.where[q][1] - known.where[q][0] for q in fit_q])])
    scores = np.zeros((len(TEXT_ALPHAS), len(FACTOR_RIDGES)))
    counts = np.zeros_like(scores)
    for a, alpha in enumerate(TEXT_ALPHAS):
        mean, load, text = known.fit(table, rank, alpha, keep=keep)
        est = text.estimate(table.emb[known.rows[val_rows]], known.item_q[val_rows])
        dev, vload = est[:, 0], est[:, 1:]
        base = known.uniform[val_rows] + dev
        vstart = np.concatenate([[0], np.cumsum([known.where[q][1] - known.where[q][0] for q in val_q])])
        bounds = [(int(vstart[i]), int(vstart[i + 1])) for i in range(len(val_q))]
        for j, g in enumerate(train):
            crow = [np.arange(fit_start[fit_pos[q]], fit_start[fit_pos[q] + 1]) for q in ctx if dataset.has(g, q)]
            scored = [i for i, q in enumerate(val_q) if dataset.has(g, q)]
            if not crow or not scored:
                continue
            crow = np.concatenate(crow)
            resid = known.y[keep][crow, j] - mean[crow]
            for b, lam in enumerate(FACTOR_RIDGES):
                pred = normalise_blocks(base + vload @ factors(load[crow], resid, lam), bounds)
                for i in scored:
                    s = question_alignments(dataset.question(val_q[i]), pred[i], dataset.dist(g, val_q[i]))
                    if s is not None:
                        scores[a, b] += float(s)
                        counts[a, b] += 1
    if not counts.any():
        return TEXT_ALPHAS[len(TEXT_ALPHAS) // 2], FACTOR_RIDGES[len(FACTOR_RIDGES) // 2]
    a, b = np.unravel_index(np.argmax(scores / np.maximum(counts, 1)), scores.shape)
    return float(TEXT_ALPHAS[a]), float(FACTOR_RIDGES[b])


def linear_probe_many(
    dataset: PreferenceDataset,
    table: ItemTable,
    train_groups: Sequence[str],
    known_qids: Sequence[str],
    contexts: Sequence[Mapping[str, ArrayLike]],
    targets: Sequence[str],
    rank: int = PROBE_RANK,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Predictions {qid: distribution} of every target for each context (see the module doc).

    `known_qids`: the questions whose train-group answers the probe may use (in the new-questions protocol, the
    questions of meta-training); a known question no train group answered is dropped from them. Targets may be
    known (their own mean and loadings, as `latent_factor`) or new (read from their embeddings), and so may the
    context's questions (a group that brings its own survey): the group's factors are fitted on every context
    question, each with its own or its text-read mean and loadings. With no context, the factors are 0.
    """
    train = list(train_groups)
    usable = [q for q in dict.fromkeys(known_qids) if any(dataset.has(g, q) for g in train)]
    if not usable:
        raise ValueError("linear_probe: no known question answered by a train group")
    known = _Known(dataset, table, train, usable)
    ctx_qids = list(contexts[0]) if contexts else []
    alpha, lam = _choose(dataset, table, train, known, ctx_qids, rank, seed)
    mean, load, text = known.fit(table, rank, alpha)

    def estimates(qids: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """(base [n], loadings [n, k], each question's rows) of the items of `qids`: a known question's own,
        a new one's read from its embeddings."""
        qidx = table.qindex(list(qids))
        rows = table.rows(qidx)
        est = text.estimate(table.emb[rows], table.item_q[rows])
        dev, lo = est[:, 0], est[:, 1:]
        base = 1.0 / table.q_len[table.item_q[rows]] + dev
        start = np.concatenate([[0], np.cumsum(table.q_len[qidx])])
        bounds = [(int(start[i]), int(start[i + 1])) for i in range(len(qidx))]
        for (a, b), q in zip(bounds, qids, strict=True):
            if q in known.where:
                ka, kb = known.where[q]
                base[a:b], lo[a:b] = mean[ka:kb], load[ka:kb]
        return base, lo, bounds

    tbase, tload, bounds = estimates(list(targets))
    out = []
    for context in contexts:
        cq = [q for q in context if q in table.index]
        if cq:
            cbase, cload, _ = estimates(cq)
            ctrue = np.concatenate([np.asarray(context[q], dtype=np.float64) for q in cq])
            z = factors(cload, ctrue - cbase, lam)
        else:
            z = np.zeros(rank)
        pred = normalise_blocks(tbase + tload @ z, bounds)
        out.append(dict(zip(targets, pred, strict=True)))
    return out
