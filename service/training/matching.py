"""The matcher's threshold, chosen on the training side (service.gpo.matching).

For every training question with a prior, its nearest *other* training question with as many options (by the
matcher's sentence vectors) is a candidate match. Borrowing that question's prior features costs their squared
error against the question's own (deviation from uniform and loadings, per option in order); not borrowing costs the
error of the question's out-of-fold text estimate. The threshold is the similarity above which borrowing costs less
in total: only the training groups' answers (their full prior) and the training questions' texts decide it. Pairs
of near-duplicate survey questions (one question in several waves, one template on several topics) are what the
survey offers: a rewording of a known question is not used to choose it.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from service.gpo.matching import QuestionMatcher, match_text
from service.gpo.prior import PopulationPrior
from service.training.items import ItemTable
from service.training.text_prior import prior_targets

log = logging.getLogger(__name__)


def nearest_other(vectors: np.ndarray, n_options: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each question (unit vectors [Q, d]): the nearest other question with as many options (-1: none) and
    the cosine similarity (-inf: none)."""
    sim = np.asarray(vectors, np.float64) @ np.asarray(vectors, np.float64).T
    same = n_options[:, None] == n_options[None, :]
    np.fill_diagonal(same, False)
    sim = np.where(same, sim, -np.inf)
    nn = np.argmax(sim, axis=1) if len(sim) else np.zeros(0, dtype=np.int64)
    top = sim[np.arange(len(sim)), nn] if len(sim) else np.zeros(0)
    return np.where(np.isfinite(top), nn, -1), top


def choose_threshold(sim: np.ndarray, err_match: np.ndarray, err_text: np.ndarray) -> float:
    """The similarity t minimising sum(err_match where sim >= t) + sum(err_text where sim < t) over the observed
    similarities (the highest such t on ties); inf when borrowing never pays."""
    order = np.argsort(-sim, kind="stable")
    s, gain = sim[order], (err_text - err_match)[order]  # gain of borrowing, most similar first
    total = np.cumsum(gain)  # borrowing for the first i + 1 questions
    ends = np.flatnonzero(np.append(s[1:] < s[:-1], True)) if len(s) else np.zeros(0, dtype=np.int64)
    if len(ends) == 0 or total[ends].max() <= 0:  # a threshold between equal similarities is no threshold
        return float("inf")
    return float(s[ends[int(np.argmax(total[ends]))]])


def fit_matcher(
    table: ItemTable, qvec: np.ndarray, prior: PopulationPrior, known: np.ndarray, oof_full: np.ndarray
) -> QuestionMatcher:
    """The matcher over the table's questions whose items all have a prior (`known` [I]), with its threshold chosen
    as the module says; `qvec` [Q, d]: the table's question vectors, `oof_full` [I, 1 + k]: out-of-fold text
    estimates of the prior's targets (service.training.text_prior.TextPriors.oof_full)."""
    q_known = np.array([known[table.rows([i])].all() for i in range(len(table.questions))])
    qs = np.flatnonzero(q_known)
    nn, sim = nearest_other(qvec[qs], table.q_len[qs])
    err_match, err_text, ok = np.zeros(len(qs)), np.zeros(len(qs)), np.zeros(len(qs), dtype=bool)
    for j, q in enumerate(qs):
        rows = table.rows([q])
        own, text = prior_targets(table, prior, rows), oof_full[rows]
        if nn[j] < 0 or not np.isfinite(text).all():
            continue
        ok[j] = True
        err_match[j] = float(((prior_targets(table, prior, table.rows([qs[nn[j]]])) - own) ** 2).sum())
        err_text[j] = float(((text - own) ** 2).sum())
    threshold = choose_threshold(sim[ok], err_match[ok], err_text[ok])
    log.info(
        "matcher: threshold %.3f chosen on %d training questions (%d would borrow a prior)",
        threshold,
        int(ok.sum()),
        int((sim[ok] >= threshold).sum()),
    )
    return QuestionMatcher(qvec[qs].astype(np.float32), table.q_start[qs], table.q_len[qs], threshold)


def with_question_vectors(table: ItemTable, encoder) -> ItemTable:
    """`table` with the question vectors of its questions from `encoder` (`.embed(texts)` -> unit vectors)."""
    texts = [match_text(q.text, q.options) for q in table.questions]
    return replace(table, qvec=np.asarray(encoder.embed(texts), dtype=np.float32))
