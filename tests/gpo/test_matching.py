"""The rewording-tolerant prior bank's matcher (service.gpo.matching)."""

from __future__ import annotations

import numpy as np

from service.gpo.matching import QuestionMatcher, match_text


def unit(*v: float) -> np.ndarray:
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def matcher(threshold: float = 0.9) -> QuestionMatcher:
    vectors = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0.9, 0.1, 0)])
    return QuestionMatcher(vectors, starts=np.array([0, 3, 5]), n_options=np.array([3, 2, 4]), threshold=threshold)


def test_match_text_joins_the_stripped_question_and_options():
    assert match_text(" Is it good? ", ["Yes ", " No"]) == "Is it good? / Yes / No"


def test_a_question_borrows_the_nearest_bank_question_with_as_many_options():
    m = matcher()
    np.testing.assert_array_equal(m.match(unit(1, 0.05, 0), 3), [0, 1, 2])
    assert m.match(unit(1, 0.05, 0), 2) is None  # the near one has 3 options; the 2-option one is far
    np.testing.assert_array_equal(m.match(unit(0.9, 0.12, 0.01), 4), [5, 6, 7, 8])
    assert m.match(unit(0, 0, 1), 3) is None  # nothing near enough
    assert m.match(unit(1, 0, 0), 7) is None  # no bank question with 7 options
    starts, sims = m.match_many(np.stack([unit(1, 0, 0), unit(0, 0, 1), unit(1, 0, 0)]), [3, 3, 5])
    np.testing.assert_array_equal(starts, [0, -1, -1])
    assert sims[0] == np.float32(1.0) or abs(sims[0] - 1) < 1e-6
    assert abs(sims[1]) < 1e-6 and sims[2] == -np.inf


def test_the_threshold_is_inclusive_and_infinity_matches_nothing():
    v = unit(1, 0.3, 0)
    sim = float(v @ unit(1, 0, 0))
    assert matcher(threshold=sim).match(v, 3) is not None
    assert matcher(threshold=float(np.nextafter(np.float32(sim), np.float32(2)))).match(v, 3) is None
    assert matcher(threshold=float("inf")).match(unit(1, 0, 0), 3) is None


def test_an_empty_bank_matches_nothing():
    m = QuestionMatcher(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), 0.5)
    starts, sims = m.match_many(np.stack([unit(1, 0, 0)]), [3])
    assert starts.tolist() == [-1] and sims.tolist() == [-np.inf]


def test_checkpoint_arrays_round_trip():
    m = matcher(0.87)
    back = QuestionMatcher.from_checkpoint(m.to_checkpoint())
    assert back is not None and back.threshold == 0.87
    np.testing.assert_array_equal(back.vectors, m.vectors)
    np.testing.assert_array_equal(back.starts, m.starts)
    np.testing.assert_array_equal(back.n_options, m.n_options)
    assert QuestionMatcher.from_checkpoint({"match_vectors": m.vectors}) is None


def test_options_pair_by_meaning_when_the_matcher_has_option_vectors():
    """Options listed in another order take the bank option they mean (maximal summed similarity); without option
    vectors on either side they pair in order. A reversed two-option question was inverted by pairing in order."""
    opts = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1), unit(1, 1, 0), unit(0, 1, 1)])  # bank q0: 3, q1: 2
    m = QuestionMatcher(
        np.stack([unit(1, 0, 0), unit(0, 1, 0)]), np.array([10, 20]), np.array([3, 2]), 0.9, option_vectors=opts
    )
    np.testing.assert_array_equal(m.rows(1, np.stack([unit(0, 1, 1), unit(1, 1, 0)])), [21, 20])  # reversed
    asked = np.stack([unit(0, 0.2, 1), unit(1, 0.1, 0), unit(0.1, 1, 0)])  # bank options 2, 0, 1
    np.testing.assert_array_equal(m.rows(0, asked), [12, 10, 11])
    np.testing.assert_array_equal(m.match(unit(1, 0, 0), 3, asked), [12, 10, 11])
    np.testing.assert_array_equal(m.rows(0, None), [10, 11, 12])  # the asker's options unknown: in order
    plain = QuestionMatcher(m.vectors, m.starts, m.n_options, 0.9)
    np.testing.assert_array_equal(plain.rows(0, asked), [10, 11, 12])  # the bank's unknown: in order
    back = QuestionMatcher.from_checkpoint(m.to_checkpoint())
    assert back is not None
    np.testing.assert_array_equal(back.option_vectors, opts)
    np.testing.assert_array_equal(back.rows(0, asked), [12, 10, 11])
    assert QuestionMatcher.from_checkpoint(plain.to_checkpoint()).option_vectors is None


def test_best_assignment_is_exact_up_to_seven_options_and_greedy_beyond():
    from service.gpo.matching import best_assignment

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 7):
        perm = rng.permutation(n)
        sim = rng.uniform(0, 0.5, size=(n, n))
        sim[np.arange(n), perm] += 0.6  # each asked option is near one bank option
        np.testing.assert_array_equal(best_assignment(sim), perm)
    # a greedy-first trap the exact search avoids: the single best pair is not in the best pairing
    np.testing.assert_array_equal(best_assignment(np.array([[0.9, 0.8], [0.8, 0.0]])), [1, 0])
    np.testing.assert_array_equal(best_assignment(np.zeros((3, 3))), [0, 1, 2])  # ties: the order given
    perm = rng.permutation(9)
    sim = np.eye(9)[perm] + rng.uniform(0, 0.1, size=(9, 9))
    np.testing.assert_array_equal(best_assignment(sim), perm)
