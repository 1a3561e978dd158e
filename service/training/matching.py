"""The matcher's threshold, chosen on the training side (service.gpo.matching).

For every training question with a prior, its nearest *other* training question with as many options (by the
matcher's sentence vectors) is a candidate match. Borrowing that question's prior features costs their squared
error against the question's own (deviation from uniform and loadings, per option, paired as the matcher pairs
them); not borrowing costs the error of the question's out-of-fold text estimate. The threshold is the
similarity above which borrowing costs less in total: only the training groups' answers (their full prior) and the
training questions' texts decide it. Pairs of near-duplicate survey questions (one question in several waves, one
template on several topics) are what the survey offers.

Those pairs alone set the threshold high (0.872 on OpinionQA), because a sibling question is often answered
differently: it accepted half of the users' rewordings of known questions. So the choice also counts validation
rewordings (service/data/reworded/opinionqa_reworded_validation.jsonl: 180 training questions in new words, disjoint
from the 247 the reworded protocol reports): for each one whose original is in the bank, borrowing costs the error of
the nearest bank question's prior against the original's own (zero when the nearest is the original); not borrowing
costs the original's out-of-fold text estimate error (a proxy for the rewording's own text estimate, which reads
unfamiliar words no better). Every training question and every validation rewording counts once. A data set without
rewordings of its questions gets the threshold of its sibling pairs alone.

Soft borrowing (`fit_matcher(..., blend=...)`, service.gpo.matching.BlendRule) is chosen on the same cases: each
training question's nearest *other* training questions (and, with blend "all", each validation rewording's nearest
bank questions), the rule of BLEND_GRID whose blend of their priors with the out-of-fold text estimate has the least
squared error against the question's own prior; with blend "all" the two populations weigh alike and the rule takes
the place of the threshold. Blend "split" is "all" with the mean column's share and the loadings' share chosen
apart (each column's error is its own, so each takes the grid's best share for it). Blend "banded" is "all" with one
share per band of the nearest one's similarity in place of the ramp (`choose_banded`).
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from service.gpo.matching import (
    BAND_EDGES,
    BLEND_MODES,
    BlendRule,
    QuestionMatcher,
    blend_targets,
    match_text,
    option_text,
)
from service.gpo.prior import PopulationPrior
from service.training.items import ItemTable
from service.training.text_prior import prior_targets

log = logging.getLogger(__name__)

VALIDATION_REWORDINGS = (
    Path(__file__).resolve().parent.parent / "data" / "reworded" / "opinionqa_reworded_validation.jsonl"
)


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


BLEND_GRID = {
    "k": (1, 3, 5, 10),
    "beta": (10.0, 20.0, 40.0, 80.0),
    "lam": (0.0, 0.3, 0.5, 0.7, 1.0),
    "floor": (0.3, 0.5, 0.7),
    "span": (0.2, 0.4),
}


def choose_blend(
    cases: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    weights: np.ndarray | None = None,
    split: bool = False,
    contrast: bool = False,
) -> BlendRule | None:
    """The BlendRule of BLEND_GRID with the least total squared error over `cases` (own targets [n, 1 + k], text
    estimate [n, 1 + k], nearest neighbours' similarities [K], their targets paired with the question's options
    [K, n, 1 + k]), each case's error times its weight (default 1); None when no blending (lam 0) does best. With
    `split`, the mean column and the loadings each get the share of the grid that suits them (lam, lam_loadings).
    With `contrast` (and `split`), the rule's shape and the loadings' share are the ones whose blended loadings agree
    best in direction with the questions' own: the largest weighted correlation through zero, sum <blend, own> /
    sqrt(sum |blend|^2 sum |own|^2), which a shared scale of the loadings does not change (as group contrast r); the
    mean column's share still has the least squared error."""
    w = np.ones(len(cases)) if weights is None else np.asarray(weights, dtype=np.float64)
    best, best_err = None, np.inf
    grid = BLEND_GRID
    for k, beta, floor, span in itertools.product(grid["k"], grid["beta"], grid["floor"], grid["span"]):
        per_lam = []  # (lam, error of the mean column, error of the loadings)
        for lam in grid["lam"]:
            if lam == 0.0 and (k, beta, floor, span) != (
                grid["k"][0],
                grid["beta"][0],
                grid["floor"][0],
                grid["span"][0],
            ):
                continue  # no blending is one rule, whatever its other parameters
            rule = BlendRule(k, beta, lam, floor, span)
            blended = [blend_targets(text, list(lent[:k]), sims[:k], rule) for _, text, sims, lent in cases]
            sq = [(b - own) ** 2 for b, (own, _, _, _) in zip(blended, cases, strict=True)]
            err_loadings = sum(wi * float(e[:, 1:].sum()) for wi, e in zip(w, sq, strict=True))
            if contrast:
                owns = [c[0][:, 1:] for c in cases]
                cross = sum(wi * float((b[:, 1:] * o).sum()) for wi, b, o in zip(w, blended, owns, strict=True))
                norm = np.sqrt(
                    sum(wi * float((b[:, 1:] ** 2).sum()) for wi, b in zip(w, blended, strict=True))
                    * sum(wi * float((o**2).sum()) for wi, o in zip(w, owns, strict=True))
                )
                err_loadings = -cross / norm if norm > 0 else 0.0
            per_lam.append((lam, sum(wi * float(e[:, 0].sum()) for wi, e in zip(w, sq, strict=True)), err_loadings))
        if split:
            lam_m, err_m, _ = min(per_lam, key=lambda r: r[1])
            lam_l, _, err_l = min(per_lam, key=lambda r: r[2])
            # with `contrast` the rules' shapes are compared by the loadings' agreement alone (a correlation and a
            # squared error do not add up)
            score = err_l if contrast else err_m + err_l
            candidates = [(BlendRule(k, beta, lam_m, floor, span, None if lam_l == lam_m else lam_l), score)]
        else:
            candidates = [(BlendRule(k, beta, lam, floor, span), em + el) for lam, em, el in per_lam]
        for rule, err in candidates:
            if err < best_err - 1e-12:
                best, best_err = rule, err
    if best is None or (best.lam == 0.0 and not best.lam_loadings):
        return None
    return best


BAND_SHARES = tuple(i / 10 for i in range(11))


def choose_banded(
    cases: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], weights: np.ndarray | None = None
) -> BlendRule | None:
    """Blend "banded": for each (k, beta) of BLEND_GRID, each band of the nearest one's similarity (BAND_EDGES) takes
    the share of BAND_SHARES with the least weighted squared error over the cases (as `choose_blend` takes them) whose
    nearest similarity falls in it (a band without cases: 0), and the (k, beta) with the least total error wins. None
    when every band's share is 0."""
    w = np.ones(len(cases)) if weights is None else np.asarray(weights, dtype=np.float64)
    edges = (-1.0, *BAND_EDGES, 2.0)  # cosine similarities lie in [-1, 1]
    band = np.array([int(np.searchsorted(BAND_EDGES, sims[0], side="right")) for _, _, sims, _ in cases], np.int64)
    shares = np.asarray(BAND_SHARES)
    best, best_err = None, np.inf
    for k, beta in itertools.product(BLEND_GRID["k"], BLEND_GRID["beta"]):
        weigh = BlendRule(k, beta, 1.0).weights
        err = np.zeros((len(edges) - 1, len(shares)))
        for (own, text, sims, lent), wi, b in zip(cases, w, band, strict=True):
            near = np.tensordot(weigh(sims[:k]), np.asarray(lent[:k], np.float64), axes=1)
            miss, step = np.asarray(text, np.float64) - own, near - np.asarray(text, np.float64)
            # |miss + s step|^2 for every share s at once
            err[b] += wi * (
                float((miss**2).sum()) + 2 * shares * float((miss * step).sum()) + shares**2 * float((step**2).sum())
            )
        pick = err.argmin(axis=1)
        total = float(err[np.arange(len(pick)), pick].sum())
        if total < best_err - 1e-12:
            bands = tuple((edges[b], edges[b + 1], float(shares[pick[b]])) for b in range(len(pick)))
            best, best_err = BlendRule(k, beta, 1.0, bands=bands), total
    if best is None or all(s == 0.0 for _, _, s in best.bands or ()):
        return None
    return best


def fit_matcher(
    table: ItemTable,
    qvec: np.ndarray,
    prior: PopulationPrior,
    known: np.ndarray,
    oof_full: np.ndarray,
    blend: str = "off",
) -> QuestionMatcher:
    """The matcher over the table's questions whose items all have a prior (`known` [I]), with its threshold chosen
    as the module says (on `table.qval`'s rewordings too) and the table's option vectors (`table.ovec`) when it has
    them; `qvec` [Q, d]: the table's question vectors, `oof_full` [I, 1 + k]: out-of-fold text estimates of the
    prior's targets (service.training.text_prior.TextPriors.oof_full)."""
    q_known = np.array([known[table.rows([i])].all() for i in range(len(table.questions))])
    qs = np.flatnonzero(q_known)
    options = None if table.ovec is None else table.ovec[table.rows(qs)].astype(np.float32)
    bank = QuestionMatcher(qvec[qs].astype(np.float32), table.q_start[qs], table.q_len[qs], -np.inf, options)

    def err_borrow(j: int, q: int, option_vectors: np.ndarray | None) -> float:
        """Squared error of bank question j's prior targets, paired with question q's options, against q's own."""
        lent = prior_targets(table, prior, bank.rows(j, option_vectors))
        return float(((lent - prior_targets(table, prior, table.rows([q]))) ** 2).sum())

    def err_text(q: int) -> float:
        rows = table.rows([q])
        text = oof_full[rows]
        return float(((text - prior_targets(table, prior, rows)) ** 2).sum()) if np.isfinite(text).all() else np.nan

    def own_options(q: int) -> np.ndarray | None:
        return None if table.ovec is None else table.ovec[table.rows([q])]

    nn, sim = nearest_other(qvec[qs], table.q_len[qs])
    cases = []  # (similarity, error if borrowing, error if not)
    for j, q in enumerate(qs):  # the survey's own sibling questions: each training question's nearest other one
        if nn[j] >= 0 and np.isfinite(t := err_text(q)):
            cases.append((sim[j], err_borrow(int(nn[j]), q, own_options(q)), t))
    n_siblings = len(cases)
    if table.qval is not None:  # validation rewordings of bank questions: the bank holds their original
        q_index, vectors, option_vectors = table.qval
        ends = np.cumsum(table.q_len[q_index])
        for q, v, end in zip(q_index, vectors, ends, strict=True):
            if not q_known[q] or not np.isfinite(t := err_text(q)):
                continue
            (j,), (s,) = bank.nearest_many(v[None, :], [table.q_len[q]])
            if j >= 0:
                cases.append((s, err_borrow(int(j), q, option_vectors[end - table.q_len[q] : end]), t))
    sims, e_match, e_text = np.array(cases, dtype=np.float64).reshape(-1, 3).T
    threshold = choose_threshold(sims, e_match, e_text)
    rule = None
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {', '.join(BLEND_MODES)}, not {blend!r}")
    split = blend in {"split", "contrast"}
    contrast, banded = blend == "contrast", blend == "banded"
    blend = "all" if split or banded else blend
    if blend != "off":
        # soft borrowing, chosen on training questions: "below" for those the threshold leaves new, "all" in place of
        # the threshold (every training question, and the validation rewordings, whose original is in the bank)
        k_max = max(BLEND_GRID["k"])
        blend_cases = []

        def case(q: int, vector: np.ndarray, options: np.ndarray | None, exclude: int) -> None:
            rows = table.rows([q])
            text = oof_full[rows]
            if not np.isfinite(text).all():
                return
            others = np.flatnonzero((bank.n_options == table.q_len[q]) & (np.arange(len(qs)) != exclude))
            if len(others) == 0:
                return
            near = bank.vectors[others] @ np.asarray(vector, np.float32)
            order = np.argsort(-near, kind="stable")[:k_max]
            if blend == "below" and near[order[0]] >= threshold:
                return  # a match: borrowed outright
            lent = np.stack([prior_targets(table, prior, bank.rows(int(others[o]), options)) for o in order])
            blend_cases.append((prior_targets(table, prior, rows), text, near[order].astype(np.float64), lent))

        for j, q in enumerate(qs):
            case(int(q), bank.vectors[j], own_options(int(q)), exclude=j)
        n_sibling_cases = len(blend_cases)
        if blend == "all" and table.qval is not None:
            q_index, vectors, option_vectors = table.qval
            ends = np.cumsum(table.q_len[q_index])
            for q, v, end in zip(q_index, vectors, ends, strict=True):
                if q_known[q]:
                    case(int(q), v, option_vectors[end - table.q_len[q] : end], exclude=-1)
        # the two populations a served question comes from weigh alike: new questions (the survey's siblings) and
        # rewordings of known ones (the validation rewordings), however many cases each has
        n_reworded = len(blend_cases) - n_sibling_cases
        weights = np.ones(len(blend_cases))
        if n_reworded and n_sibling_cases:
            weights[:n_sibling_cases] = 1.0 / n_sibling_cases
            weights[n_sibling_cases:] = 1.0 / n_reworded
        if banded:
            rule = choose_banded(blend_cases, weights)
        else:
            rule = choose_blend(blend_cases, weights, split=split, contrast=contrast)
        log.info("matcher: soft borrowing (%s) %s, chosen on %d cases", blend, rule, len(blend_cases))
        if blend == "all" and rule is not None:
            threshold = float("inf")  # the soft rule takes the place of outright borrowing
    log.info(
        "matcher: threshold %.3f chosen on %d training questions (%d would borrow a prior) and %d validation "
        "rewordings (%d would)",
        threshold,
        n_siblings,
        int((sims[:n_siblings] >= threshold).sum()),
        len(sims) - n_siblings,
        int((sims[n_siblings:] >= threshold).sum()),
    )
    return replace(bank, threshold=threshold, blend=rule)


def validation_rewordings(table: ItemTable, path: Path = VALIDATION_REWORDINGS) -> list[tuple[int, str, list[str]]]:
    """(question index, match text, option texts) of each rewording in the JSONL file `path` (keys qid, text,
    options) of a table question with as many options; a file that does not exist holds none."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        q = table.index.get(row["qid"])
        if q is not None and len(row["options"]) == table.q_len[q]:
            out.append((q, match_text(row["text"], row["options"]), [option_text(o) for o in row["options"]]))
    return out


def with_question_vectors(table: ItemTable, encoder, rewordings: Path | None = VALIDATION_REWORDINGS) -> ItemTable:
    """`table` with the sentence vectors from `encoder` (`.embed(texts)` -> unit vectors) of its questions and of
    its options, and those of the validation rewordings in `rewordings` of its questions (None: none) for choosing
    the threshold."""
    texts = [match_text(q.text, q.options) for q in table.questions]
    vectors = np.asarray(encoder.embed(texts), dtype=np.float32)
    options = np.asarray(encoder.embed([option_text(o) for q in table.questions for o in q.options]), np.float32)
    val = validation_rewordings(table, rewordings) if rewordings is not None else []
    qval = None
    if val:
        qval = (
            np.array([q for q, _, _ in val], np.int64),
            np.asarray(encoder.embed([t for _, t, _ in val]), np.float32),
            np.asarray(encoder.embed([o for _, _, opts in val for o in opts]), np.float32),
        )
    return replace(table, qvec=vectors, qval=qval, ovec=options.reshape(-1, vectors.shape[1]))
