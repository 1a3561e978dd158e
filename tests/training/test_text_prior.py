"""Text priors in meta-training (service.training.text_prior): out-of-fold and leave-one-out features, and signal."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.gpo.features import TEXT_FLAG
from service.gpo.prior import PopulationPrior
from service.training.features import GroupPriors, fit_group_priors
from service.training.items import build_item_table
from service.training.text_prior import _Fold, fit_text_priors, prior_targets, question_folds, text_features

from .test_probe import text_dataset
from .test_ragged import _copy, _ragged, _table


def test_a_fit_on_a_subset_of_the_base_items_equals_the_direct_ridge():
    rng = np.random.default_rng(0)
    d = 5
    questions = text_dataset(n_groups=2, n_questions=20)[0].questions
    n = sum(q.n_options for q in questions)
    table = build_item_table(questions, rng.normal(size=(n, d)).astype(np.float32))
    base = rng.random(n) < 0.8
    fold = _Fold(table, np.arange(n), np.arange(n), base)
    mask = base & (rng.random(n) < 0.7)
    y = rng.normal(size=(int(mask.sum()), 3))
    x = fold.x[mask]
    direct = np.linalg.solve(x.T @ x + 2.0 * np.eye(d), x.T @ y)
    np.testing.assert_allclose(fold.solve(mask, y, 2.0), direct, rtol=1e-8, atol=1e-10)
    outside = mask | ~base  # not a subset of the base items: solved directly
    y2 = rng.normal(size=(int(outside.sum()), 3))
    x2 = fold.x[outside]
    np.testing.assert_allclose(
        fold.solve(outside, y2, 2.0), np.linalg.solve(x2.T @ x2 + 2.0 * np.eye(d), x2.T @ y2), rtol=1e-8
    )


def _hand_priors(table, groups, rng) -> GroupPriors:
    k = 2
    full = PopulationPrior(
        rng.random(table.n_items).astype(np.float32), rng.normal(size=(table.n_items, k)).astype(np.float32)
    )
    loo = {g: PopulationPrior(full.mean + 0.01 * i, full.loadings * (1 + 0.1 * i)) for i, g in enumerate(groups)}
    known = np.ones(table.n_items, dtype=bool)
    return GroupPriors(full, loo, known, {g: known.copy() for g in groups})


def test_an_items_text_features_never_use_its_own_questions_prior():
    """Out of fold: changing a question's prior (in every prior) leaves its items' text features unchanged."""
    ds, table = text_dataset(n_groups=4, n_questions=30)
    groups = ds.groups
    rng = np.random.default_rng(1)
    priors = _hand_priors(table, groups, rng)
    known_q = np.ones(len(table.questions), dtype=bool)
    before = fit_text_priors(table, priors, groups, known_q, seed=0, grid=(10.0,))
    rows = table.rows([7])
    for p in [priors.full, *priors.loo.values()]:
        p.mean[rows] = rng.random(len(rows))
        p.loadings[rows] = rng.normal(size=(len(rows), 2))
    after = fit_text_priors(table, priors, groups, known_q, seed=0, grid=(10.0,))
    fold = question_folds(len(table.questions), 5, 0)
    same_fold = table.rows(np.flatnonzero(fold == fold[7]))
    for g in groups:
        np.testing.assert_array_equal(after.oof[g][same_fold], before.oof[g][same_fold])
        assert np.all(after.oof[g][:, 0] == TEXT_FLAG)
    other = table.rows(np.flatnonzero(fold != fold[7]))
    assert not np.array_equal(after.oof[groups[0]][other], before.oof[groups[0]][other])  # it is used elsewhere


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(group=st.integers(0, 7), seed=st.integers(0, 2**16), drop_some=st.booleans())
def test_a_groups_own_answers_never_reach_its_text_features(group: int, seed: int, drop_some: bool) -> None:
    """Leave-one-out: a group's answers (and, ragged, which questions it answered) leave its out-of-fold text
    features unchanged, up to the orthogonal rotation of its leave-one-out basis onto the full one (the readout is
    invariant to it). The ridge is fixed here: it is chosen on the full prior (one value of a grid of 5)."""
    ds = _ragged(n_groups=8, n_questions=20)
    table = _table(ds)
    known_q = np.ones(len(table.questions), dtype=bool)
    g = ds.groups[group]
    changed = _copy(ds)
    rng = np.random.default_rng(seed)
    for q in list(changed.dists[g]):
        if drop_some and rng.random() < 0.3:
            del changed.dists[g][q]
        else:
            changed.dists[g][q] = rng.dirichlet(np.ones(len(changed.dists[g][q])))
    feats = []
    for data in (ds, changed):
        priors = fit_group_priors(table, data, data.groups, known_q, 3)
        feats.append(fit_text_priors(table, priors, data.groups, known_q, seed=0, grid=(100.0,)).oof[g])
    b, a = (f.astype(np.float64) for f in feats)
    np.testing.assert_allclose(a[:, :2], b[:, :2], atol=1e-5)
    np.testing.assert_allclose(a[:, 2:] @ a[:, 2:].T, b[:, 2:] @ b[:, 2:].T, atol=1e-4)


def test_the_text_map_reads_a_new_questions_prior_from_its_options():
    """Where the text carries the answers' structure, the full map's estimate of a question it never saw follows
    the prior its answers give (and its features are what `text_features` serves)."""
    ds, table = text_dataset(n_groups=20, n_questions=90)
    known_q = np.zeros(len(table.questions), dtype=bool)
    known_q[:70] = True
    priors = fit_group_priors(table, ds, ds.groups, known_q, 2)
    texts = fit_text_priors(table, priors, ds.groups, known_q, seed=0)
    truth = fit_group_priors(table, ds, ds.groups, np.ones(len(table.questions), dtype=bool), 2).full
    new_rows = table.rows(np.arange(70, 90))
    est = text_features(texts.full, table, new_rows)
    dev_true = prior_targets(table, truth, new_rows)[:, 0]
    assert np.corrcoef(est[:, 1] - 1.0 / table.q_len[table.item_q[new_rows]], dev_true)[0, 1] > 0.7
    assert texts.fit_items == int(table.rows(np.arange(70)).size)


def test_one_questions_features_equal_the_grouped_computation():
    """`question_features` (the serving path) equals `features` for a table of one question."""
    from service.gpo.features import TextPrior

    rng = np.random.default_rng(2)
    emb = rng.standard_normal((30, 8))
    text = TextPrior.fit(emb, np.repeat(np.arange(10), 3), rng.standard_normal((30, 3)), alpha=2.0)
    one = rng.standard_normal((4, 8))
    np.testing.assert_allclose(
        text.question_features(one), text.features(one, np.zeros(4, dtype=np.int64), np.full(4, 4)), atol=1e-6
    )


def test_per_column_ridge_fits_each_column_with_its_own_strength():
    """`TextPrior.fit` and `_Fold.solve` with one strength per target column equal one fit per column, and the
    per-column choice shrinks a column of pure noise harder than one the embeddings carry."""
    from service.gpo.features import TextPrior
    from service.training.text_prior import choose_text_alpha

    rng = np.random.default_rng(3)
    questions = text_dataset(n_groups=2, n_questions=60)[0].questions
    n = sum(q.n_options for q in questions)
    emb = rng.normal(size=(n, 6))
    table = build_item_table(questions, emb.astype(np.float32))
    targets = np.column_stack([emb @ rng.normal(size=6), rng.normal(size=n)])  # read from the text; noise
    alphas = np.array([1.0, 1e3])
    both = TextPrior.fit(emb, table.item_q, targets, alphas)
    for j in range(2):
        one = TextPrior.fit(emb, table.item_q, targets[:, [j]], float(alphas[j]))
        np.testing.assert_allclose(both.w[:, [j]], one.w, rtol=1e-8, atol=1e-12)
    fold = _Fold(table, np.arange(n), np.arange(n), np.ones(n, dtype=bool))
    for j in range(2):
        np.testing.assert_allclose(
            fold.solve(np.ones(n, dtype=bool), targets, alphas)[:, j],
            fold.solve(np.ones(n, dtype=bool), targets[:, [j]], float(alphas[j]))[:, 0],
            rtol=1e-8,
        )
    folds_of = question_folds(len(questions), 5, 0)[table.item_q]
    design = [
        _Fold(table, np.flatnonzero(folds_of != f), np.flatnonzero(folds_of == f), np.ones(n, dtype=bool))
        for f in range(5)
    ]
    grid = (0.1, 1.0, 10.0, 1e3, 1e5)
    chosen = choose_text_alpha(design, np.ones(n, dtype=bool), lambda rows: targets[rows], grid, per_column=True)
    assert chosen.shape == (2,) and chosen[0] < chosen[1]
    shared = choose_text_alpha(design, np.ones(n, dtype=bool), lambda rows: targets[rows], grid)
    assert np.ndim(shared) == 0
