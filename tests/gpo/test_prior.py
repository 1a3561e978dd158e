"""Population prior: group mean, low-rank loadings, Procrustes alignment, features, question keys."""

from __future__ import annotations

import numpy as np
import pytest

from service.gpo.prior import PopulationPrior, fit_prior, impute_low_rank, prior_dim, question_key


def _answers(seed: int, items: int = 12, groups: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(items, groups))


def _lstsq_residual(y: np.ndarray, prior: PopulationPrior) -> float:
    """max |y - (mean + L z)| for the best z of every group (least squares)."""
    centred = y - prior.mean.astype(np.float64)[:, None]
    lo = prior.loadings.astype(np.float64)
    z, *_ = np.linalg.lstsq(lo, centred, rcond=None)
    return float(np.abs(centred - lo @ z).max())


@pytest.mark.parametrize("seed", [0, 1])
def test_mean_is_group_mean(seed):
    y = _answers(seed)
    prior = fit_prior(y, rank=2)
    np.testing.assert_allclose(prior.mean, y.mean(axis=1), atol=1e-6)
    assert prior.mean.dtype == np.float32 and prior.loadings.dtype == np.float32
    assert prior.loadings.shape == (y.shape[0], 2) and prior.rank == 2
    assert prior_dim(prior.rank) == 4


@pytest.mark.parametrize(("groups", "rank"), [(5, 4), (5, 6), (3, 2), (4, 10)])
def test_full_rank_loadings_reconstruct_answers(groups, rank):
    """With rank >= G-1 the centred answers lie in the span of the loadings: y = mean + L z exactly."""
    y = _answers(groups, items=10, groups=groups)
    prior = fit_prior(y, rank=rank)
    assert prior.loadings.shape == (10, rank)
    assert _lstsq_residual(y, prior) < 1e-5


def test_low_rank_loadings_are_scaled_principal_directions():
    """L = U_k S_k / sqrt(G): L^T L = S_k^2 / G, and the residual equals the dropped singular values."""
    y = _answers(3, items=15, groups=8)
    centred = y - y.mean(axis=1, keepdims=True)
    s = np.linalg.svd(centred, compute_uv=False)
    prior = fit_prior(y, rank=2)
    lo = prior.loadings.astype(np.float64)
    np.testing.assert_allclose(lo.T @ lo, np.diag(s[:2] ** 2 / 8), rtol=1e-5, atol=1e-6)
    z, *_ = np.linalg.lstsq(lo, centred, rcond=None)
    np.testing.assert_allclose(np.linalg.norm(centred - lo @ z), np.sqrt((s[2:] ** 2).sum()), rtol=1e-5)


def test_single_group_has_zero_loadings():
    y = _answers(4, groups=1)
    prior = fit_prior(y, rank=3)
    np.testing.assert_allclose(prior.mean, y[:, 0], atol=1e-6)
    assert (prior.loadings == 0).all() and prior.loadings.shape == (y.shape[0], 3)


def test_rejects_inf_unanswered_items_and_bad_shapes():
    y = _answers(5)
    y[2, 1] = np.inf
    with pytest.raises(AssertionError):
        fit_prior(y, rank=2)
    y = _answers(5)
    y[3, :] = np.nan  # an item nobody answered has no prior
    with pytest.raises(AssertionError):
        fit_prior(y, rank=2)
    with pytest.raises(AssertionError):
        fit_prior(np.zeros(5), rank=2)


@pytest.mark.parametrize("seed", [0, 1])
def test_complete_answers_give_the_plain_svd_bit_for_bit(seed):
    """On complete data the ragged code path is not taken: the result is the formula of before, exactly."""
    y = _answers(seed, items=20, groups=7)
    prior = fit_prior(y, rank=3)
    mean = y.mean(axis=1)
    u, s, _ = np.linalg.svd(y - mean[:, None], full_matrices=False)
    np.testing.assert_array_equal(prior.mean, mean.astype(np.float32))
    np.testing.assert_array_equal(prior.loadings, (u[:, :3] * s[:3] / np.sqrt(7)).astype(np.float32))


def _low_rank(seed: int, items: int = 60, groups: int = 12, rank: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(items, 1)) + rng.normal(size=(items, rank)) @ rng.normal(size=(rank, groups))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ragged_prior_mean_over_answering_groups_and_low_rank_gaps(seed):
    """Ragged answers: each item's mean is over the groups that answered it; the loadings span the true
    low-rank structure (the gaps are filled by the low-rank fit, far better than by the mean)."""
    y = _low_rank(seed)
    rng = np.random.default_rng(seed + 100)
    gaps = rng.random(y.shape) < 0.4
    gaps[np.arange(y.shape[0]), rng.integers(0, y.shape[1], y.shape[0])] = False  # every item answered once
    ragged = np.where(gaps, np.nan, y)
    prior = fit_prior(ragged, rank=2)
    np.testing.assert_allclose(prior.mean, np.nanmean(ragged, axis=1), atol=1e-5)
    # the fitted loadings span the true directions in which the groups differ far better than the SVD of the
    # matrix with its gaps at the mean (what the prior would be without the low-rank fill)
    truth = y - y.mean(axis=1, keepdims=True)  # rank 2

    def unexplained(lo: np.ndarray) -> float:
        z, *_ = np.linalg.lstsq(lo, truth, rcond=None)
        return float(np.linalg.norm(truth - lo @ z) / np.linalg.norm(truth))

    u, sv, _ = np.linalg.svd(np.nan_to_num(ragged - np.nanmean(ragged, axis=1, keepdims=True)), full_matrices=False)
    filled_with_mean = unexplained(u[:, :2] * sv[:2])
    assert unexplained(prior.loadings.astype(np.float64)) < min(0.3, 0.7 * filled_with_mean)
    # deterministic: the same input gives the same prior
    again = fit_prior(ragged.copy(), rank=2)
    np.testing.assert_array_equal(again.loadings, prior.loadings)


def test_impute_low_rank_keeps_observed_entries_and_fills_gaps():
    y = _low_rank(5, items=40, groups=10)
    y = y - y.mean(axis=1, keepdims=True)
    gaps = np.random.default_rng(0).random(y.shape) < 0.3
    filled = impute_low_rank(np.where(gaps, np.nan, y), rank=2)
    np.testing.assert_array_equal(filled[~gaps], y[~gaps])
    assert np.abs(filled[gaps] - y[gaps]).mean() < 0.1 * np.abs(y[gaps]).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_procrustes_alignment_to_reference(seed):
    """A prior fitted with groups permuted and sign-flipped/permuted basis aligns back onto the reference."""
    rng = np.random.default_rng(seed)
    # a clearly low-rank problem (distinct singular values) with a little noise
    items, groups, rank = 20, 9, 3
    y = rng.normal(size=(items, rank)) * np.array([3.0, 2.0, 1.0]) @ rng.normal(size=(rank, groups))
    y += 0.01 * rng.normal(size=(items, groups)) + rng.normal(size=(items, 1))
    ref = fit_prior(y, rank=rank)

    # permuting the groups gives the same subspace; the basis may come out with other signs
    y_perm = y[:, rng.permutation(groups)]
    aligned = fit_prior(y_perm, rank=rank, reference=ref.loadings)
    np.testing.assert_allclose(aligned.mean, ref.mean, atol=1e-5)
    np.testing.assert_allclose(aligned.loadings, ref.loadings, atol=1e-4)

    # a reference in another orthogonal coordinate system (signed permutation of the columns)
    signed_perm = np.eye(rank)[:, rng.permutation(rank)] * rng.choice([-1.0, 1.0], size=rank)
    other_ref = ref.loadings.astype(np.float64) @ signed_perm
    aligned2 = fit_prior(y_perm, rank=rank, reference=other_ref)
    np.testing.assert_allclose(aligned2.loadings, other_ref, atol=1e-4)

    # leave-one-group-out priors land close to the full one in the shared basis
    loo = fit_prior(np.delete(y, 0, axis=1), rank=rank, reference=ref.loadings)
    err = np.linalg.norm(loo.loadings - ref.loadings) / np.linalg.norm(ref.loadings)
    unaligned = fit_prior(np.delete(y, 0, axis=1), rank=rank)
    assert err < 0.35
    assert err <= np.linalg.norm(unaligned.loadings - ref.loadings) / np.linalg.norm(ref.loadings) + 1e-6


def test_alignment_is_a_rotation():
    """Aligning never changes what the loadings span or their Gram spectrum."""
    y = _answers(6, items=14, groups=7)
    plain = fit_prior(y, rank=3)
    aligned = fit_prior(y, rank=3, reference=np.random.default_rng(0).normal(size=(14, 3)))
    g0 = np.linalg.eigvalsh(plain.loadings.T.astype(np.float64) @ plain.loadings)
    g1 = np.linalg.eigvalsh(aligned.loadings.T.astype(np.float64) @ aligned.loadings)
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-6)
    assert _lstsq_residual(y, aligned) == pytest.approx(_lstsq_residual(y, plain), abs=1e-4)


def test_features_known_and_unknown_rows():
    prior = PopulationPrior(
        mean=np.arange(5, dtype=np.float32) + 1.0,
        loadings=np.arange(10, dtype=np.float32).reshape(5, 2) + 1.0,
    )
    rows = np.array([4, 0, 2])
    f = prior.features(rows)
    assert f.shape == (3, prior_dim(2)) and f.dtype == np.float32
    np.testing.assert_array_equal(f[:, 0], 1.0)
    np.testing.assert_array_equal(f[:, 1], prior.mean[rows])
    np.testing.assert_array_equal(f[:, 2:], prior.loadings[rows])

    known = np.array([True, False, True])
    fk = prior.features(rows, known)
    np.testing.assert_array_equal(fk[1], 0.0)  # unknown: flag and everything else zero
    np.testing.assert_array_equal(fk[[0, 2]], f[[0, 2]])


def test_question_key_normalisation():
    k = question_key("How often do you vote?", ["Always", "Sometimes", "Never"])
    assert len(k) == 32 and int(k, 16) >= 0
    assert question_key("  how OFTEN do\tyou\n vote?  ", [" ALWAYS", "sometimes ", "never"]) == k
    assert question_key("How  often  do you vote?", ["Always", "Sometimes", "Never"]) == k


def test_question_key_changes_with_options():
    k = question_key("How often do you vote?", ["Always", "Sometimes", "Never"])
    assert question_key("How often do you vote?", ["Always", "Sometimes"]) != k
    assert question_key("How often do you vote?", ["Always", "Sometimes", "Rarely"]) != k
    assert question_key("How often do you vote?", ["Never", "Sometimes", "Always"]) != k  # order matters
    assert question_key("How often did you vote?", ["Always", "Sometimes", "Never"]) != k
    # the boundary between text and options is not ambiguous
    assert question_key("a b", ["c"]) != question_key("a", ["b c"])
    assert question_key("a", ["b", "c"]) != question_key("a", ["b c"])
