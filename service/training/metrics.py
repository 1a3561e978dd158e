"""Alignment scores between predicted and true answer distributions: Wasserstein, Jensen-Shannon, arg-max.

Conventions (GPO.md, "Evaluation"):
- ordinal questions (OpinionQA): 1 - W1(pred, true on the option ordinals) / (max ordinal - min ordinal);
- non-ordinal questions (GlobalOpinionQA): 1 - Jensen-Shannon distance (scipy's definition, natural log);
- individuals: accuracy of the arg-max option.
An ordinal question whose ordinals are all equal has no defined score: `question_alignment` returns
None for it, and callers skip it and count it (`AlignmentScore.n_skipped`). It is never scored with
JS instead, so that scores stay comparable with the paper's and with the reference baselines.

A NaN or infinity, in an input or in a result, raises `ValueError`: a NaN is an error, never a score
(the research code scored NaN JS distances as 0, i.e. perfect).

Every metric has a vectorised form (`*_alignments`) over leading batch axes: `pred`, `true` are
`[..., n_options]` and broadcast against each other; the scalar forms call them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import rel_entr

from service.training.datasets import Question


def _finite(name: str, x: ArrayLike) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one option, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: {arr}")
    return arr


def _pair(pred: ArrayLike, true: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p, t = _finite("pred", pred), _finite("true", true)
    if p.shape[-1] != t.shape[-1]:
        raise ValueError(f"pred has {p.shape[-1]} options but true has {t.shape[-1]}")
    try:
        np.broadcast_shapes(p.shape, t.shape)
    except ValueError:
        raise ValueError(f"pred shape {p.shape} and true shape {t.shape} do not broadcast") from None
    return p, t


def _checked_result(name: str, r: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{name} produced NaN or inf: {r}")
    return r


def wasserstein_alignments(pred: ArrayLike, true: ArrayLike, ordinals: ArrayLike) -> np.ndarray:
    """1 - W1(pred, true) / (max - min ordinal), batched: pred, true `[..., n]`, ordinals `[n]` -> `[...]`.

    Options are sorted by ordinal first, so ordinals in any order (e.g. `[1, 2, 1.5]`) are handled.
    Raises ValueError when the ordinals have no spread (all equal): the score is undefined there.
    """
    p, t = _pair(pred, true)
    o = _finite("ordinals", ordinals)
    if o.ndim != 1 or o.shape[0] != p.shape[-1]:
        raise ValueError(f"ordinals must be 1-D with {p.shape[-1]} values, got shape {o.shape}")
    span = float(o.max() - o.min())
    if span <= 0:
        raise ValueError(f"ordinals {o.tolist()} are all equal: the Wasserstein alignment is undefined")
    order = np.argsort(o, kind="stable")
    x = o[order]  # [n] ascending
    with np.errstate(all="ignore"):  # overflow shows up as a non-finite result, refused below
        cdf_gap = np.abs(np.cumsum(p[..., order], axis=-1) - np.cumsum(t[..., order], axis=-1))  # [..., n]
        # W1 on the line = integral of |F_p - F_t|; the CDFs are steps between consecutive ordinals.
        dist = np.sum(cdf_gap[..., :-1] * np.diff(x), axis=-1) / span
    return _checked_result("wasserstein_alignment", 1.0 - dist)


def wasserstein_alignment(pred: ArrayLike, true: ArrayLike, ordinals: ArrayLike) -> float:
    """1 - (1-D Wasserstein distance on the ordinals) / (max ordinal - min ordinal), in [0, 1]."""
    return float(wasserstein_alignments(pred, true, ordinals))


def js_alignments(pred: ArrayLike, true: ArrayLike) -> np.ndarray:
    """1 - Jensen-Shannon distance (natural log), batched over leading axes.

    Same formula as `scipy.spatial.distance.jensenshannon` (each input normalised by its sum), except
    that a divergence rounding to a tiny negative number is clipped to 0 instead of giving sqrt(-eps) =
    NaN. Inputs must be non-negative with a positive sum.
    """
    p, t = _pair(pred, true)
    for name, a in (("pred", p), ("true", t)):
        if np.any(a < 0):
            raise ValueError(f"{name} has a negative value: {a}")
        if np.any(a.sum(axis=-1) <= 0):
            raise ValueError(f"{name} sums to 0: a distribution is needed")
    p = p / p.sum(axis=-1, keepdims=True)
    t = t / t.sum(axis=-1, keepdims=True)
    with np.errstate(all="ignore"):  # overflow shows up as a non-finite result, refused below
        m = (p + t) / 2.0
        js = (np.sum(rel_entr(p, m), axis=-1) + np.sum(rel_entr(t, m), axis=-1)) / 2.0
    return _checked_result("js_alignment", 1.0 - np.sqrt(np.maximum(js, 0.0)))


def js_alignment(pred: ArrayLike, true: ArrayLike) -> float:
    """1 - scipy's Jensen-Shannon distance with base e, in [1 - sqrt(ln 2), 1]."""
    return float(js_alignments(pred, true))


def argmax_accuracies(pred: ArrayLike, true: ArrayLike) -> np.ndarray:
    """1.0 where pred's arg-max option equals true's, else 0.0 (ties: the first option, as np.argmax)."""
    p, t = _pair(pred, true)
    p, t = np.broadcast_arrays(p, t)
    return (np.argmax(p, axis=-1) == np.argmax(t, axis=-1)).astype(np.float64)


def argmax_accuracy(pred: ArrayLike, true: ArrayLike) -> float:
    """1.0 when the most likely predicted option is the group's most chosen one, else 0.0."""
    return float(argmax_accuracies(pred, true))


def question_alignments(question: Question, pred: ArrayLike, true: ArrayLike) -> np.ndarray | None:
    """Alignment for one question, batched over leading axes; None where the score is undefined.

    Ordinal question with ordinal spread -> Wasserstein; ordinal question whose ordinals are all equal
    -> None (skip it and count it); non-ordinal question -> Jensen-Shannon. Inputs are checked (shape,
    NaN) even when the result is None.
    """
    p, t = _pair(pred, true)
    if p.shape[-1] != question.n_options:
        raise ValueError(f"question {question.qid!r} has {question.n_options} options, got {p.shape[-1]} values")
    if question.ordinals is not None:
        if not question.has_ordinal_spread:
            return None
        return wasserstein_alignments(p, t, question.ordinals)
    return js_alignments(p, t)


def question_alignment(question: Question, pred: ArrayLike, true: ArrayLike) -> float | None:
    """The question's alignment score (see `question_alignments`), or None when it is undefined."""
    r = question_alignments(question, pred, true)
    return None if r is None else float(r)


@dataclass(frozen=True)
class AlignmentScore:
    """Mean alignment over the scored questions, and how many were skipped as undefined."""

    mean: float
    n_scored: int
    n_skipped: int


def score_alignment(items: Iterable[tuple[Question, ArrayLike, ArrayLike]]) -> AlignmentScore:
    """Mean `question_alignment` over (question, pred, true) items, skipping and counting undefined ones.

    Raises ValueError when nothing could be scored (the mean of nothing would be NaN).
    """
    total, n_scored, n_skipped = 0.0, 0, 0
    for question, pred, true in items:
        s = question_alignment(question, pred, true)
        if s is None:
            n_skipped += 1
        else:
            total += s
            n_scored += 1
    if n_scored == 0:
        raise ValueError(f"no question could be scored ({n_skipped} skipped as undefined)")
    return AlignmentScore(mean=total / n_scored, n_scored=n_scored, n_skipped=n_skipped)


@dataclass(frozen=True)
class GroupContrast:
    """How well predicted differences between groups follow the true ones (see `group_contrast`)."""

    r: float  # correlation of predicted with true pairwise differences; 0 when every group is predicted alike
    pred_spread: float  # root mean square of the predicted pairwise differences
    true_spread: float  # the same for the true answers
    n_pairs: int  # (question, group pair) differences compared


def answer_summary(question: Question, dist: ArrayLike) -> np.ndarray | None:
    """What a contrast between two groups compares on one question: the expected ordinal position scaled to
    [0, 1] (a 1-vector) on an ordinal question, the option probabilities on a non-ordinal one; None for an
    ordinal question whose ordinals are all equal."""
    d = _finite("dist", dist)
    if question.ordinals is None:
        return d
    if not question.has_ordinal_spread:
        return None
    o = np.asarray(question.ordinals, dtype=np.float64)
    return np.atleast_1d((d * (o - o.min())).sum(axis=-1) / (o.max() - o.min()))


# Predicted differences whose root mean square is below this are float rounding (answer summaries lie in [0, 1]): a
# model whose answers differ only by rounding answers every group alike, and r is 0 (r does not change with scale,
# so rounding noise would otherwise get an r of its own: 0.011 for train_mean, whose spread was 1.8e-17).
ALIKE_SPREAD = 1e-9


def group_contrast(items: Iterable[tuple[Question, Sequence[ArrayLike], Sequence[ArrayLike]]]) -> GroupContrast:
    """Group contrast over questions: items are (question, predicted dists, true dists), one per group that
    answered it. For every pair of those groups, the predicted difference of their `answer_summary` is compared
    with the true one. `r` is the correlation through zero, sum(dp dt) / sqrt(sum dp^2 sum dt^2): the Pearson r
    over both orders of every pair (whose differences have mean 0 by symmetry). A model that answers every group
    alike (up to float rounding: ALIKE_SPREAD) has no predicted difference: its r is reported as 0, not left
    undefined. Raises ValueError when no
    question has two groups (nothing to compare) or when every true difference is 0.
    """
    dps, dts, n_pairs = [], [], 0
    for question, preds, trues in items:
        if len(preds) != len(trues):
            raise ValueError(f"question {question.qid!r}: {len(preds)} predictions for {len(trues)} true answers")
        if len(preds) < 2:
            continue
        p = [answer_summary(question, x) for x in preds]
        t = [answer_summary(question, x) for x in trues]
        if t[0] is None:
            continue
        p_arr, t_arr = np.stack(p), np.stack(t)  # [G, d]
        i, j = np.triu_indices(len(p), k=1)
        dps.append((p_arr[i] - p_arr[j]).ravel())
        dts.append((t_arr[i] - t_arr[j]).ravel())
        n_pairs += len(i)
    if not dps:
        raise ValueError("no question was answered by two groups: no contrast to measure")
    dp, dt = np.concatenate(dps), np.concatenate(dts)
    if not np.any(dt):
        raise ValueError("every true difference between groups is 0: the contrast is undefined")
    norm = float(np.sqrt((dp**2).sum() * (dt**2).sum()))
    alike = float(np.sqrt(np.mean(dp**2))) < ALIKE_SPREAD  # equal answers up to float rounding
    r = float((dp * dt).sum() / norm) if norm > 0 and not alike else 0.0
    return GroupContrast(
        r=r,
        pred_spread=float(np.sqrt(np.mean(dp**2))),
        true_spread=float(np.sqrt(np.mean(dt**2))),
        n_pairs=n_pairs,
    )


# ---------------------------------------------------------------------------------------------- ratings


def rating_rmse(pred: ArrayLike, true: ArrayLike) -> float:
    """Root mean squared error of predicted scores (same scale as `true`)."""
    p, t = _pair(pred, true)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def pairwise_accuracy(pred: ArrayLike, true: ArrayLike) -> float | None:
    """Share of item pairs with different true scores that the predictions order the same way (a tie in the
    prediction counts one half). None when every true score is equal (no pair to order)."""
    p, t = _pair(pred, true)
    dt = np.sign(t[:, None] - t[None, :])
    dp = np.sign(p[:, None] - p[None, :])
    upper = np.triu(np.ones_like(dt, dtype=bool), k=1) & (dt != 0)
    n = int(upper.sum())
    if n == 0:
        return None
    agree = (dp[upper] == dt[upper]).astype(float) + 0.5 * (dp[upper] == 0)
    return float(agree.sum() / n)


def spearman(pred: ArrayLike, true: ArrayLike) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when either side is constant."""
    from scipy.stats import rankdata

    p, t = _pair(pred, true)
    rp, rt = rankdata(p), rankdata(t)
    if rp.std() == 0 or rt.std() == 0:
        return None
    return float(np.corrcoef(rp, rt)[0, 1])


def exact_accuracy(pred: ArrayLike, true: ArrayLike, levels: ArrayLike) -> float:
    """Arg-max accuracy of a rating read as a choice among `levels` (e.g. 1..4): the level nearest to the
    predicted score equals the true one."""
    p, t = _pair(pred, true)
    lv = np.asarray(levels, dtype=np.float64)
    nearest = lv[np.abs(p[:, None] - lv[None, :]).argmin(axis=1)]
    return float(np.mean(nearest == t))
