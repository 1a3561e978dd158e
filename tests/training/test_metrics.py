"""Alignment metrics: known values, agreement with scipy, NaN refusal, undefined (equal-ordinal) questions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from service.training.datasets import Question
from service.training.metrics import (
    AlignmentScore,
    argmax_accuracies,
    argmax_accuracy,
    js_alignment,
    js_alignments,
    question_alignment,
    question_alignments,
    score_alignment,
    wasserstein_alignment,
    wasserstein_alignments,
)


@pytest.mark.parametrize(
    ("pred", "true", "ordinals", "expected"),
    [
        ([1, 0, 0], [0, 0, 1], [1, 2, 3], 0.0),  # opposite ends: distance = whole span
        ([1, 0, 0], [0, 1, 0], [1, 2, 3], 0.5),
        ([0.5, 0.5, 0], [0.5, 0.5, 0], [1, 2, 3], 1.0),
        ([1, 0, 0], [0, 0, 1], [1, 2, 1.5], 0.5),  # a neutral option placed between the others
        ([0, 1, 0], [0, 0, 1], [1, 2, 1.5], 0.5),
        ([1, 0], [0, 1], [0, 1], 0.0),
        ([1, 0, 0, 0], [0, 0, 0, 1], [1, 2, 3, 2], 0.5),  # tied ordinals: options 2 and 4 coincide
        ([0, 1, 0, 0], [0, 0, 0, 1], [1, 2, 3, 2], 1.0),
    ],
)
def test_wasserstein_known_values(pred, true, ordinals, expected) -> None:
    assert wasserstein_alignment(pred, true, ordinals) == pytest.approx(expected, abs=1e-12)


def test_wasserstein_matches_scipy_and_reference_formula() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 9):
        ords = rng.permutation(n).astype(float) + rng.uniform(0, 0.5, n)
        for _ in range(20):
            p, t = rng.dirichlet(np.ones(n)), rng.dirichlet(np.ones(n))
            expected = 1 - wasserstein_distance(ords, ords, p, t) / (ords.max() - ords.min())
            assert wasserstein_alignment(p, t, ords) == pytest.approx(expected, abs=1e-12)
            # oqa_baselines.py's wd(), verbatim in spirit: argsort, cumsum, diff
            order = np.argsort(ords)
            x = ords[order]
            wd = np.sum(np.abs(np.cumsum(p[order]) - np.cumsum(t[order]))[:-1] * np.diff(x)) / (x[-1] - x[0])
            assert wasserstein_alignment(p, t, ords) == pytest.approx(1 - wd, abs=1e-12)


def test_wasserstein_batched_equals_scalar() -> None:
    rng = np.random.default_rng(1)
    ords = np.array([1.0, 2.0, 3.0, 4.0, 2.5])
    pred = rng.dirichlet(np.ones(5), size=(3, 4))  # [3, 4, 5]
    true = rng.dirichlet(np.ones(5), size=4)  # [4, 5], broadcast against pred
    got = wasserstein_alignments(pred, true, ords)
    assert got.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            assert got[i, j] == pytest.approx(wasserstein_alignment(pred[i, j], true[j], ords), abs=1e-15)


def test_wasserstein_equal_ordinals_raise() -> None:
    with pytest.raises(ValueError, match="all equal"):
        wasserstein_alignment([0.5, 0.5], [1, 0], [1, 1])
    with pytest.raises(ValueError, match="all equal"):
        wasserstein_alignment([1.0], [1.0], [3])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_inputs_raise(bad: float) -> None:
    good = [0.5, 0.5]
    with pytest.raises(ValueError, match="pred contains NaN or inf"):
        wasserstein_alignment([bad, 0.5], good, [1, 2])
    with pytest.raises(ValueError, match="true contains NaN or inf"):
        wasserstein_alignment(good, [0.5, bad], [1, 2])
    with pytest.raises(ValueError, match="ordinals contains NaN or inf"):
        wasserstein_alignment(good, good, [1, bad])
    with pytest.raises(ValueError, match="NaN or inf"):
        js_alignment([bad, 0.5], good)
    with pytest.raises(ValueError, match="NaN or inf"):
        argmax_accuracy(good, [bad, 0.5])
    q = Question("q", "?", ("a", "b"), (1.0, 1.0))  # undefined score: inputs are still checked
    with pytest.raises(ValueError, match="NaN or inf"):
        question_alignment(q, [bad, 0.5], good)


def test_nan_result_raises() -> None:
    # finite inputs whose distance overflows: the result is inf - inf = NaN, which must not become a score
    huge = np.array([1e308, 1e308])
    with pytest.raises(ValueError, match="produced NaN or inf"):
        wasserstein_alignment(huge, [0.0, 0.0], [0.0, 1e308])


def test_shape_mismatches_raise() -> None:
    with pytest.raises(ValueError, match="pred has 2 options but true has 3"):
        js_alignment([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="ordinals must be 1-D with 2 values"):
        wasserstein_alignment([0.5, 0.5], [0.5, 0.5], [1, 2, 3])
    with pytest.raises(ValueError, match="at least one option"):
        js_alignment([], [])


def test_js_known_values_and_scipy() -> None:
    assert js_alignment([0.2, 0.8], [0.2, 0.8]) == 1.0
    assert js_alignment([1, 0], [0, 1]) == pytest.approx(1 - math.sqrt(math.log(2)), abs=1e-12)
    assert js_alignment([2, 6], [1, 3]) == 1.0  # normalised by the sums, as scipy
    rng = np.random.default_rng(2)
    for n in (2, 3, 7):
        p, t = rng.dirichlet(np.ones(n), size=50), rng.dirichlet(np.ones(n), size=50)
        np.testing.assert_allclose(js_alignments(p, t), 1 - jensenshannon(p, t, axis=-1), atol=1e-12)


def test_js_near_identical_inputs_do_not_give_nan() -> None:
    # the divergence can round to a tiny negative number; scipy would return sqrt(-eps) = NaN
    rng = np.random.default_rng(3)
    for _ in range(200):
        p = rng.dirichlet(np.ones(4))
        t = p + rng.normal(0, 1e-17, 4)
        t = np.abs(t)
        assert 1.0 - 1e-7 <= js_alignment(p, t) <= 1.0


def test_js_refuses_negative_or_zero_mass() -> None:
    with pytest.raises(ValueError, match="negative"):
        js_alignment([1.2, -0.2], [0.5, 0.5])
    with pytest.raises(ValueError, match="sums to 0"):
        js_alignment([0.0, 0.0], [0.5, 0.5])


def test_argmax_accuracy() -> None:
    assert argmax_accuracy([0.1, 0.7, 0.2], [0, 1, 0]) == 1.0
    assert argmax_accuracy([0.6, 0.3, 0.1], [0, 1, 0]) == 0.0
    assert argmax_accuracy([0.5, 0.5], [1, 0]) == 1.0  # ties: the first option
    np.testing.assert_array_equal(argmax_accuracies([[0.9, 0.1], [0.2, 0.8]], [0.0, 1.0]), [0.0, 1.0])


def test_question_alignment_chooses_the_metric() -> None:
    p, t = np.array([0.1, 0.2, 0.7]), np.array([0.3, 0.3, 0.4])
    ordinal = Question("o", "?", ("a", "b", "c"), (1.0, 2.0, 3.0))
    nominal = Question("n", "?", ("a", "b", "c"))
    flat = Question("f", "?", ("a", "b", "c"), (1.0, 1.0, 1.0))
    assert question_alignment(ordinal, p, t) == wasserstein_alignment(p, t, [1, 2, 3])
    assert question_alignment(nominal, p, t) == js_alignment(p, t)
    assert question_alignment(flat, p, t) is None
    assert question_alignments(flat, np.stack([p, p]), t) is None
    np.testing.assert_allclose(
        question_alignments(ordinal, np.stack([p, t]), t), [wasserstein_alignment(p, t, [1, 2, 3]), 1.0]
    )
    with pytest.raises(ValueError, match="has 3 options, got 2 values"):
        question_alignment(ordinal, [0.5, 0.5], [0.5, 0.5])


def test_score_alignment_skips_and_counts() -> None:
    ordinal = Question("o", "?", ("a", "b"), (1.0, 2.0))
    flat = Question("f", "?", ("a", "b"), (1.0, 1.0))
    items = [(ordinal, [1, 0], [0, 1]), (flat, [1, 0], [0, 1]), (ordinal, [1, 0], [1, 0])]
    assert score_alignment(items) == AlignmentScore(mean=0.5, n_scored=2, n_skipped=1)
    with pytest.raises(ValueError, match="no question could be scored"):
        score_alignment([(flat, [1, 0], [0, 1])])


# ------------------------------------------------------------------------- non-ordinal (GlobalOpinionQA)


@pytest.mark.parametrize(
    ("pred", "true", "expected"),
    [
        # m = (0.75, 0.25); KL(p||m) = 0.5 ln(4/3), KL(t||m) = ln(4/3); JS = 0.75 ln(4/3)
        ([0.5, 0.5], [1.0, 0.0], 1 - math.sqrt(0.75 * math.log(4 / 3))),
        # m = (0.25, 0.5, 0.25); each KL = 0.5 ln 2; JS = 0.5 ln 2
        ([0.5, 0.5, 0.0], [0.0, 0.5, 0.5], 1 - math.sqrt(0.5 * math.log(2))),
        ([1.0, 0.0, 0.0], [0.0, 0.5, 0.5], 1 - math.sqrt(math.log(2))),  # disjoint supports: the minimum
        ([0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25], 1.0),
    ],
)
def test_js_hand_computed_values(pred, true, expected) -> None:
    """1 - scipy's JS distance with base e, computed by hand (0.5355, 0.4113, 0.1674, 1)."""
    assert js_alignment(pred, true) == pytest.approx(expected, abs=1e-12)
    assert 1 - jensenshannon(pred, true) == pytest.approx(expected, abs=1e-12)  # base e is scipy's default
    nominal = Question("n", "?", tuple("abcd"[: len(pred)]))
    assert question_alignment(nominal, pred, true) == pytest.approx(expected, abs=1e-12)


def test_score_alignment_picks_the_metric_per_question() -> None:
    ordinal = Question("o", "?", ("a", "b", "c"), (1.0, 2.0, 3.0))
    nominal = Question("n", "?", ("a", "b", "c"))
    items = [
        (ordinal, [1, 0, 0], [0, 1, 0]),  # Wasserstein: 1 - 1/2 = 0.5 (JS would give 1 - sqrt(ln 2))
        (nominal, [0.5, 0.5, 0], [0, 0.5, 0.5]),  # JS: 1 - sqrt(0.5 ln 2) (Wasserstein would give 0.5)
    ]
    expected = (0.5 + 1 - math.sqrt(0.5 * math.log(2))) / 2
    assert score_alignment(items) == AlignmentScore(mean=pytest.approx(expected, abs=1e-12), n_scored=2, n_skipped=0)


def test_nan_is_never_a_perfect_score() -> None:
    """The research code scored a NaN JS distance as 0 (alignment 1); here every NaN path raises."""
    with np.errstate(invalid="ignore"):
        assert math.isnan(jensenshannon([0.0, 0.0], [0.5, 0.5]))  # scipy: NaN for an all-zero input
    nominal = Question("n", "?", ("a", "b"))
    with pytest.raises(ValueError, match="sums to 0"):
        question_alignment(nominal, [0.0, 0.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="NaN or inf"):
        question_alignment(nominal, [np.nan, np.nan], [0.5, 0.5])
    with pytest.raises(ValueError, match="NaN or inf"):  # one bad item spoils the mean: no skipping
        score_alignment([(nominal, [0.5, 0.5], [0.5, 0.5]), (nominal, [np.nan, 1.0], [0.5, 0.5])])
    with pytest.raises(ValueError, match="NaN or inf"):
        js_alignments(np.array([[0.5, 0.5], [np.nan, 0.5]]), [0.5, 0.5])


# ------------------------------------------------------------------------------------------ group contrast

from service.training.metrics import answer_summary, group_contrast  # noqa: E402

ORD = Question("o", "?", ("a", "b", "c"), (1.0, 2.0, 3.0))
NOM = Question("n", "?", ("a", "b", "c"))


def test_answer_summary_is_scaled_expected_position_or_the_distribution():
    assert answer_summary(ORD, [0.0, 0.0, 1.0]).tolist() == [1.0]
    assert answer_summary(ORD, [0.5, 0.0, 0.5]).tolist() == [0.5]
    assert answer_summary(NOM, [0.2, 0.3, 0.5]).tolist() == [0.2, 0.3, 0.5]
    assert answer_summary(Question("f", "?", ("a", "b"), (1.0, 1.0)), [0.5, 0.5]) is None


def test_group_contrast_perfect_alike_and_reversed():
    true = [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]]
    same = group_contrast([(ORD, true, true), (NOM, true, true)])
    assert same.r == pytest.approx(1.0) and same.pred_spread == pytest.approx(same.true_spread)
    assert same.n_pairs == 6  # 3 pairs on each of 2 questions
    alike = group_contrast([(ORD, [[1 / 3] * 3] * 3, true)])  # every group predicted the same: r is 0
    assert alike.r == 0.0 and alike.pred_spread == 0.0 and alike.true_spread > 0
    swapped = group_contrast([(ORD, true[1::-1], true[:2]), (NOM, true[1::-1], true[:2])])  # two groups swapped
    assert swapped.r == pytest.approx(-1.0)


def test_group_contrast_of_answers_alike_up_to_rounding_is_zero():
    """A method that gives every group the same answer, computed once per group (float rounding apart), has r 0:
    r does not change with scale, so the rounding noise alone once got r 0.011 (train_mean, spread 1.8e-17)."""
    rng = np.random.default_rng(1)
    true = rng.dirichlet(np.ones(3), size=6)
    base = np.array([0.2, 0.5, 0.3])
    noisy = [base + rng.normal(scale=1e-17, size=3) * np.array([1, -1, 0]) for _ in true]
    noisy = [p + (true[i] - true.mean(0)) * 1e-14 for i, p in enumerate(noisy)]  # rounding that follows the truth
    c = group_contrast([(ORD, noisy, true), (NOM, noisy, true)])
    assert c.r == 0.0 and c.pred_spread < 1e-12
    small = [base + (t - true.mean(0)) * 1e-6 for t in true]  # a real (tiny) difference still counts
    assert group_contrast([(ORD, small, true)]).r == pytest.approx(1.0)


def test_group_contrast_is_invariant_to_a_shared_shift_and_scale_of_predictions():
    rng = np.random.default_rng(0)
    true = rng.dirichlet(np.ones(3), size=5)
    pos = np.array([answer_summary(ORD, t)[0] for t in true])  # expected positions of the 5 groups
    # predictions whose expected positions are 0.3 + 0.2 * the true ones: a shrunk, shifted copy
    target = 0.3 + 0.2 * pos
    preds = np.stack([np.array([1 - t, 0.0, t]) for t in target])
    c = group_contrast([(ORD, preds, true)])
    assert c.r == pytest.approx(1.0)
    assert c.pred_spread == pytest.approx(0.2 * c.true_spread)


def test_group_contrast_skips_single_group_and_flat_questions_and_refuses_nothing_to_compare():
    flat = Question("f", "?", ("a", "b"), (1.0, 1.0))
    one = group_contrast([(ORD, [[1, 0, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1]]), (NOM, [[1, 0, 0]], [[0, 1, 0]])])
    assert one.n_pairs == 1
    with pytest.raises(ValueError, match="two groups"):
        group_contrast([(NOM, [[1, 0, 0]], [[0, 1, 0]]), (flat, [[1, 0], [0, 1]], [[1, 0], [0, 1]])])
    with pytest.raises(ValueError, match="every true difference"):
        group_contrast([(ORD, [[1, 0, 0], [0, 0, 1]], [[0, 1, 0], [0, 1, 0]])])
    with pytest.raises(ValueError, match="2 predictions for 3"):
        group_contrast([(ORD, [[1, 0, 0]] * 2, [[1, 0, 0]] * 3)])
