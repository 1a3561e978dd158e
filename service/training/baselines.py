"""Non-neural baselines: predict a test group's answer distributions from its context answers alone.

Every baseline has the signature of `Baseline`:

    predict(dataset, train_groups, context, targets) -> {qid: predicted distribution}

- `dataset` holds the meta-train groups' answers (it may hold other groups too: only `train_groups`
  are used, never the test group's own answers);
- `context` maps a context question id to the test group's distribution on it (`group_context` builds
  it from a dataset; a new group passes what it told us);
- `targets` are `Question`s or question ids of the dataset.

Baselines (numbers from oqa_baselines.py, which `evaluate_baselines` reproduces):
- `uniform`: 1/n per option. The only one that handles a *new* question (one no train group
  answered: pass it as a `Question`);
- `train_mean`: mean of the train groups' distributions for the question;
- `nearest_group`: the train group with the smallest context fit distance;
- `mixture`: train groups weighted by w = exp(-3 fit / max(min fit, 1e-6));
- `latent_factor` (ours, not in the reference): mean + principal loadings of the train groups with the
  group's factors fitted by ridge regression on its context; a strong collaborative-filtering reference.
The last four raise `UnknownQuestionError` for a target no train group answered. When only some
train groups answered a target they use those (mean over them, nearest among them, mixture weights
computed among them; latent_factor factorises the incomplete answers matrix as `service.gpo.prior`
does); on a complete dataset this is exactly the reference.

Context fit distance of a train group = mean over the context questions *it* answered of
(1 - question_alignment) between its distribution and the test group's (context questions whose score
is undefined, ordinal questions without ordinal spread, are skipped). Ragged data: a train group that
answered none of the test group's context questions has fit +inf (never the nearest, mixture weight 0);
when none of the groups that answered a target shares a context question with the test group,
nearest_group and mixture fall back to train_mean over those groups.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from service.gpo.prior import impute_low_rank
from service.training.datasets import PreferenceDataset, Question
from service.training.metrics import AlignmentScore, question_alignments
from service.training.splits import Split

Baseline = Callable[
    [PreferenceDataset, Sequence[str], Mapping[str, ArrayLike], Sequence[Question | str]],
    dict[str, np.ndarray],
]

MIXTURE_SHARPNESS = 3.0  # w = exp(-SHARPNESS * fit / max(min fit, MIN_FIT)), as oqa_baselines.py
MIN_FIT = 1e-6


class UnknownQuestionError(ValueError):
    """A target question that no train group answered (only `uniform` can predict it)."""


# ------------------------------------------------------------------------------------------- helpers


def group_context(dataset: PreferenceDataset, group: str, qids: Sequence[str]) -> dict[str, np.ndarray]:
    """The group's distributions on `qids` from the dataset (the `context` argument of a baseline)."""
    missing = [q for q in qids if not dataset.has(group, q)]
    if missing:
        raise KeyError(f"group {group!r} has no answer for context questions {missing[:5]}")
    return {q: dataset.dist(group, q) for q in qids}


def _resolve(dataset: PreferenceDataset, target: Question | str) -> Question:
    if isinstance(target, Question):
        return target
    try:
        return dataset.question(target)
    except KeyError:
        raise UnknownQuestionError(
            f"question {target!r} is not in the dataset; pass it as a Question (uniform can predict it)"
        ) from None


def _answers(dataset: PreferenceDataset, train_groups: Sequence[str], q: Question) -> tuple[list[int], np.ndarray]:
    """Indices (into train_groups) of the groups that answered q, and their distributions [k, n]."""
    idx = [i for i, g in enumerate(train_groups) if dataset.has(g, q.qid)]
    if not idx:
        raise UnknownQuestionError(
            f"no train group answered question {q.qid!r}: only the uniform baseline can predict it"
        )
    dists = np.stack([dataset.dist(train_groups[i], q.qid) for i in idx])  # [k, n]
    if dists.shape[1] != q.n_options:
        raise ValueError(f"question {q.qid!r}: train answers have {dists.shape[1]} options, not {q.n_options}")
    return idx, dists


def context_fit(
    dataset: PreferenceDataset, train_groups: Sequence[str], context: Mapping[str, ArrayLike]
) -> np.ndarray:
    """Fit distance of each train group to the test group on the context: [n_train], lower is closer.

    A train group's distance is over the context questions that are in the dataset, that it answered and
    that are scorable; +inf for a train group that answered none of them. Raises ValueError when no train
    group answered any scorable context question.
    """
    if not train_groups:
        raise ValueError("no train groups")
    total = np.zeros(len(train_groups))
    used = np.zeros(len(train_groups))
    for qid, true in context.items():
        if not _in_dataset(dataset, qid):
            continue
        has = np.array([dataset.has(g, qid) for g in train_groups])
        if not has.any():
            continue
        q = dataset.question(qid)
        train = np.stack([dataset.dist(g, qid) for g, h in zip(train_groups, has, strict=True) if h])  # [T', n]
        align = question_alignments(q, train, np.asarray(true, dtype=np.float64))  # [T'] or None
        if align is None:
            continue
        total[has] += 1.0 - align
        used[has] += 1
    if not used.any():
        raise ValueError(f"none of the {len(context)} context questions is answered by a train group and scorable")
    return np.where(used > 0, total / np.maximum(used, 1), np.inf)


def _in_dataset(dataset: PreferenceDataset, qid: str) -> bool:
    try:
        dataset.question(qid)
    except KeyError:
        return False
    return True


def mixture_weights(fit: ArrayLike) -> np.ndarray:
    """Softmin of fit distances relative to the best fit: exp(-3 fit / max(min fit, 1e-6)), summing to 1.

    `fit` is [T] or [C, T] (one row per test group; each row is normalised on its own). A fit of +inf (a
    train group sharing no context question) gets weight 0; a row without a finite fit, equal weights.
    """
    f = np.asarray(fit, dtype=np.float64)
    best = np.maximum(f.min(axis=-1, keepdims=True), MIN_FIT)
    with np.errstate(invalid="ignore"):
        w = np.exp(-f / best * MIXTURE_SHARPNESS)
    w = np.where(np.isfinite(best), w, 1.0)
    return w / w.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------ baselines


def predict_many(
    name: str,
    dataset: PreferenceDataset,
    train_groups: Sequence[str],
    contexts: Sequence[Mapping[str, ArrayLike]],
    targets: Sequence[Question | str],
) -> list[dict[str, np.ndarray]]:
    """Baseline `name` for several test groups at once (one context each): one {qid: dist} per context.

    Every baseline except uniform is a weighting of the train groups that answered the target,
    W [C, k] @ answers [k, n]; computing it per target for all contexts at once is what makes
    evaluation fast. Same results as calling the baseline once per context.
    """
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    if name == "latent_factor":
        return latent_factor_many(dataset, train_groups, contexts, targets)
    questions = [_resolve(dataset, t) for t in targets]
    out: list[dict[str, np.ndarray]] = [{} for _ in contexts]
    if name == "uniform":
        for q in questions:
            for o in out:
                o[q.qid] = np.full(q.n_options, 1.0 / q.n_options)
        return out
    if not contexts:
        return out
    train = list(train_groups)
    fits = None
    if name != "train_mean":
        fits = np.stack([context_fit(dataset, train, c) for c in contexts])  # [C, T]
    mix_all = mixture_weights(fits) if name == "mixture" else None  # [C, T], reused when all answered
    for q in questions:
        idx, dists = _answers(dataset, train, q)  # dists [k, n]
        if name == "train_mean":
            w = np.full((len(contexts), len(idx)), 1.0 / len(idx))
        elif name == "nearest_group":
            assert fits is not None
            # the nearest among the train groups that answered q; ties: the first, as np.argmin
            w = np.eye(len(idx))[np.argmin(fits[:, idx], axis=1)]
            # none of them shares a context question with the test group: their mean (train_mean)
            w[~np.isfinite(fits[:, idx]).any(axis=1)] = 1.0 / len(idx)
        else:
            assert fits is not None and mix_all is not None
            # among the groups that answered q, relative to the best of them (no underflow to 0/0);
            # equal weights (train_mean) where none of them shares a context question
            w = mix_all if len(idx) == len(train) else mixture_weights(fits[:, idx])
        pred = w @ dists  # [C, k] @ [k, n] -> [C, n]
        for o, row in zip(out, pred, strict=True):
            o[q.qid] = row
    return out


def one_group_baseline(method: str, doc: str) -> Baseline:
    """`method` of predict_many as a Baseline: one test group's context, its targets' distributions."""

    def predict(
        dataset: PreferenceDataset,
        train_groups: Sequence[str],
        context: Mapping[str, ArrayLike],
        targets: Sequence[Question | str],
    ) -> dict[str, np.ndarray]:
        return predict_many(method, dataset, train_groups, [context], targets)[0]

    predict.__name__ = predict.__qualname__ = method
    predict.__doc__ = doc
    return predict


uniform = one_group_baseline(
    "uniform", "1/n on each of a question's n options; needs neither train answers nor context."
)
train_mean = one_group_baseline(
    "train_mean", "Mean of the train groups' distributions for each target (ignores the context)."
)
nearest_group = one_group_baseline(
    "nearest_group", "The distribution of the train group closest to the test group on the context questions."
)
mixture = one_group_baseline(
    "mixture", "Train groups' distributions weighted by `mixture_weights` of their context fit."
)


LATENT_RANK = 8  # the rank of GPO's population-prior features
RIDGE_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # the ridge strength is chosen on the train groups


def factorise(y: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean [I] and loadings U_k S_k / sqrt(G) [I, k] of answers y [I, G] (as service.gpo.prior).

    Ragged answers (NaN: not answered): the mean over the groups that answered, and the SVD of the centred
    matrix with its gaps filled by `impute_low_rank`; a row nobody answered gets mean 0 and no loadings.
    """
    observed = np.isfinite(y)
    if observed.all():
        mean = y.mean(axis=1)
        centred = y - mean[:, None]
    else:
        mean = np.where(observed, y, 0.0).sum(axis=1) / np.maximum(observed.sum(axis=1), 1)
        centred = impute_low_rank(y - mean[:, None], rank)
        centred[~observed.any(axis=1)] = 0.0
    u, sv, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(rank, sv.shape[0])
    return mean, u[:, :k] * sv[:k] / np.sqrt(y.shape[1])


def _ridge_predict(
    mean: np.ndarray, loadings: np.ndarray, ctx_rows: np.ndarray, ctx_y: np.ndarray, ridge: float
) -> np.ndarray:
    """mean + loadings @ z over all items, z the ridge fit of the context residuals."""
    lc = loadings[ctx_rows]
    k = loadings.shape[1]
    z = np.linalg.solve(lc.T @ lc + ridge * np.eye(k), lc.T @ (ctx_y - mean[ctx_rows]))
    return mean + loadings @ z


def normalise_blocks(values: np.ndarray, bounds: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    out = []
    for a, b in bounds:
        p = np.clip(values[a:b], 1e-4, None)
        out.append(p / p.sum())
    return out


def latent_factor_many(
    dataset: PreferenceDataset,
    train_groups: Sequence[str],
    contexts: Sequence[Mapping[str, ArrayLike]],
    targets: Sequence[Question | str],
    rank: int = LATENT_RANK,
    ridge: float | None = None,
) -> list[dict[str, np.ndarray]]:
    """Collaborative-filtering reference: answers = mean + loadings @ z_group, z fitted on the context.

    The train groups' answers to the context and target questions (items as rows) give the mean and
    the top-`rank` principal loadings across groups (the same factorisation as GPO's population-prior
    features); a test group's z is the ridge solution on its context residuals, and each target's
    prediction is mean + loadings @ z, clipped at 1e-4 and renormalised. The ridge strength, unless
    given, is chosen from RIDGE_GRID by leaving each train group out in turn (fit on the others, its
    answers on the first context's questions as context, its targets scored): the test groups are never
    used. Ragged data: the context and target questions some train group answered are used, and the answers
    matrix has gaps (filled as `factorise` says); a target no train group answered raises
    UnknownQuestionError.
    """
    questions = [_resolve(dataset, t) for t in targets]
    train = list(train_groups)
    ctx_ids = [q for q in dict.fromkeys(k for c in contexts for k in c) if _in_dataset(dataset, q)]
    ctx_ids = [q for q in ctx_ids if any(dataset.has(g, q) for g in train)]
    for q in questions:
        if not any(dataset.has(g, q.qid) for g in train):
            raise UnknownQuestionError(f"no train group answered {q.qid!r}: latent_factor cannot predict it")
    qids = list(dict.fromkeys(ctx_ids + [q.qid for q in questions]))
    start = np.cumsum([0] + [dataset.question(q).n_options for q in qids])
    where = {q: (int(start[i]), int(start[i + 1])) for i, q in enumerate(qids)}
    bounds = [where[q.qid] for q in questions]

    def answers(g: str, q: str) -> np.ndarray:
        return dataset.dist(g, q) if dataset.has(g, q) else np.full(dataset.question(q).n_options, np.nan)

    y = np.concatenate([np.stack([answers(g, q) for g in train], axis=1) for q in qids])  # [I, T], NaN: gap

    def rows_of(context: Mapping[str, ArrayLike]) -> np.ndarray:
        rows = [np.arange(*where[q]) for q in context if q in where]
        if not rows:
            raise ValueError("latent_factor: no context question answered by a train group")
        return np.concatenate(rows)

    if ridge is None:
        ridge = _choose_ridge(dataset, train, y, rank, rows_of(contexts[0]) if contexts else None, questions, bounds)
    mean, loadings = factorise(y, rank)
    out = []
    for context in contexts:
        r = rows_of(context)
        true = np.concatenate([np.asarray(context[q], dtype=np.float64) for q in context if q in where])
        pred = normalise_blocks(_ridge_predict(mean, loadings, r, true, ridge), bounds)
        out.append({q.qid: p for q, p in zip(questions, pred, strict=True)})
    return out


def _choose_ridge(
    dataset: PreferenceDataset,
    train: list[str],
    y: np.ndarray,
    rank: int,
    ctx_rows: np.ndarray | None,
    questions: list[Question],
    bounds: list[tuple[int, int]],
) -> float:
    """The RIDGE_GRID value with the best mean alignment when each train group is left out in turn.

    Ragged data: the left-out group's context is the context rows it answered and another group answered
    too, and it is scored on the targets of that kind; a group with none of either takes no part.
    """
    if ctx_rows is None or len(train) < 3:
        return RIDGE_GRID[len(RIDGE_GRID) // 2]
    totals = np.zeros(len(RIDGE_GRID))
    for j, g in enumerate(train):
        others = np.delete(y, j, axis=1)
        by_others = np.isfinite(others).any(axis=1)
        rows = ctx_rows[np.isfinite(y[ctx_rows, j]) & by_others[ctx_rows]]
        scored = [
            i
            for i, (q, (a, _)) in enumerate(zip(questions, bounds, strict=True))
            if dataset.has(g, q.qid) and by_others[a]
        ]
        if rows.size == 0 or not scored:
            continue
        mean, loadings = factorise(others, rank)
        for i, lam in enumerate(RIDGE_GRID):
            pred = normalise_blocks(_ridge_predict(mean, loadings, rows, y[rows, j], lam), bounds)
            scores = [question_alignments(questions[k], pred[k], dataset.dist(g, questions[k].qid)) for k in scored]
            totals[i] += np.mean([float(s) for s in scores if s is not None])
    return float(RIDGE_GRID[int(np.argmax(totals))])


def latent_factor(
    dataset: PreferenceDataset,
    train_groups: Sequence[str],
    context: Mapping[str, ArrayLike],
    targets: Sequence[Question | str],
) -> dict[str, np.ndarray]:
    """Mean + principal loadings of the train groups, with the group's factors fitted on its context."""
    return latent_factor_many(dataset, train_groups, [context], targets)[0]


BASELINES: dict[str, Baseline] = {
    "uniform": uniform,
    "train_mean": train_mean,
    "nearest_group": nearest_group,
    "mixture": mixture,
    "latent_factor": latent_factor,
}
# Baselines that can predict a question no train group answered.
NEW_QUESTION_BASELINES = frozenset({"uniform"})


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_baselines(
    dataset: PreferenceDataset, split: Split, names: Sequence[str] | None = None
) -> dict[str, AlignmentScore]:
    """Score baselines on a split: each test group's context is its answers on `split.context_of(group)`.

    The mean is pooled over every (test group, target question) pair the test group answered, as
    oqa_baselines.py; targets without a defined score are skipped and counted. Targets that no train
    group answered are left out for every baseline (so all baselines score the same pairs).
    """
    names = list(BASELINES) if names is None else list(names)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise KeyError(f"unknown baselines {unknown}; known: {sorted(BASELINES)}")
    train = list(split.train_groups)
    test = list(split.test_groups)
    contexts = [group_context(dataset, g, split.context_of(g)) for g in test]
    # targets no train group answered are left out: only uniform could predict them
    targets = [q for q in split.all_targets if any(dataset.has(t, q) for t in train)]
    own_targets = {g: set(split.targets_of(g)) for g in test}
    preds: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # name -> group -> qid -> [n]
    for n in names:
        preds[n] = dict(zip(test, predict_many(n, dataset, train, contexts, targets), strict=True))

    scores = {}
    for n in names:
        total, n_scored, n_skipped = 0.0, 0, 0
        for qid in targets:
            groups = [g for g in test if dataset.has(g, qid) and qid in own_targets[g]]
            if not groups:
                continue
            pred = np.stack([preds[n][g][qid] for g in groups])  # [G, n]
            true = np.stack([dataset.dist(g, qid) for g in groups])  # [G, n]
            align = question_alignments(dataset.question(qid), pred, true)
            if align is None:
                n_skipped += len(groups)
            else:
                total += float(align.sum())
                n_scored += len(groups)
        if n_scored == 0:
            raise ValueError(f"baseline {n!r}: no target could be scored ({n_skipped} skipped)")
        scores[n] = AlignmentScore(mean=total / n_scored, n_scored=n_scored, n_skipped=n_skipped)
    return scores
