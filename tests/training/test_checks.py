"""`check_dataset`: the counts on a small ragged dataset computed by hand, each problem that stops training, and the
shipped OpinionQA and GlobalOpinionQA files passing."""

from __future__ import annotations

import numpy as np
import pytest

from service.training.checks import check_dataset
from service.training.datasets import PreferenceDataset, Question
from service.training.globalopinionqa import load_globalopinionqa


def dataset(answers: dict[str, list[str]], questions: list[Question]) -> PreferenceDataset:
    """Each group answers the listed questions (uniform distributions)."""
    by_id = {q.qid: q for q in questions}
    dists = {g: {q: np.full(by_id[q].n_options, 1 / by_id[q].n_options) for q in qs} for g, qs in answers.items()}
    return PreferenceDataset(questions=questions, groups=list(answers), dists=dists)


Q1 = Question("q1", "one?", ("a", "b"), (1.0, 2.0))
Q2 = Question("q2", "two?", ("a", "b"), (1.0, 1.0))  # all-equal ordinals: never scored
Q3 = Question("q3", "three?", ("a", "b", "c"))
Q4 = Question("q4", "four?", ("a", "b"))
Q5 = Question("q5", "five?", ("a", "b", "c"), (1.0, 2.0, 3.0))

# scorable answers per group: A 4 (q1 q3 q4 q5), B 2 (q1 q3), C 3 (q1 q3 q4), D 2 (q1 q5)
RAGGED = {
    "A": ["q1", "q2", "q3", "q4", "q5"],
    "B": ["q1", "q2", "q3"],
    "C": ["q1", "q3", "q4"],
    "D": ["q1", "q5"],
}


@pytest.fixture
def ragged() -> PreferenceDataset:
    return dataset(RAGGED, [Q1, Q2, Q3, Q4, Q5])


def test_counts_on_a_ragged_dataset(ragged: PreferenceDataset) -> None:
    check = check_dataset(ragged, n_context=2)
    assert (check.n_groups, check.n_questions, check.n_ordinal, check.n_flat_ordinal) == (4, 5, 3, 1)
    assert check.n_answers == 5 + 3 + 3 + 2
    assert check.n_prior_questions == 2  # q1 (4 groups) and q3 (3 groups); q2, q4, q5 have 2 each
    assert check.n_complete == 1  # q1
    assert check.n_test_groups == 2  # A and C have >= 3 scorable answers
    assert check.n_targets == (4 - 2) + (3 - 2)
    assert check.ok and check.problems == []
    assert check.lines()[1] == "questions: 5 (3 ordinal, 2 non-ordinal; 1 ordinal with all-equal ordinals, not scored)"
    assert check.lines()[-2].startswith("groups with >= 3 scorable answers (usable as test groups at 2 context")


def test_counts_follow_n_context_and_groups(ragged: PreferenceDataset) -> None:
    check = check_dataset(ragged, n_context=3)
    assert (check.n_test_groups, check.n_targets) == (1, 1)  # only A, with one target
    check = check_dataset(ragged, groups=["B", "C", "D"], n_context=2)
    assert (check.n_groups, check.n_answers, check.n_prior_questions, check.n_complete) == (3, 8, 1, 1)
    assert (check.n_test_groups, check.n_targets) == (1, 1)  # C


def test_the_default_context_needs_21_scorable_answers(ragged: PreferenceDataset) -> None:
    check = check_dataset(ragged)
    assert check.n_context == 20 and check.n_test_groups == 0
    assert check.problems == [
        "no group answered 21 or more scorable questions: a test group needs 20 context questions and at least one "
        "target; add answers (or lower --n-context for gpo eval)"
    ]


def test_fewer_than_three_groups(ragged: PreferenceDataset) -> None:
    problem, no_prior = check_dataset(ragged, groups=["A", "C"], n_context=2).problems
    assert problem.startswith("2 group(s): training needs at least 3") and problem.endswith("add groups")
    assert no_prior.startswith("no question was answered by 3 or more groups")  # two groups cannot give three


def test_only_all_equal_ordinals() -> None:
    flat = [Question(f"q{i}", "?", ("a", "b"), (2.0, 2.0)) for i in range(4)]
    check = check_dataset(dataset({g: ["q0", "q1", "q2", "q3"] for g in "ABC"}, flat), n_context=2)
    assert check.n_flat_ordinal == 4 and check.n_test_groups == 0
    assert check.problems[0].startswith("no question can be scored: every question is ordinal with all-equal")
    assert "give each ordinal question ordinals that differ" in check.problems[0]


def test_no_question_shared_by_enough_groups() -> None:
    qs = [Question(f"q{i}", "?", ("a", "b")) for i in range(6)]
    disjoint = {"A": ["q0", "q1", "q2"], "B": ["q2", "q3", "q4"], "C": ["q4", "q5", "q0"]}  # each question: <= 2
    check = check_dataset(dataset(disjoint, qs), n_context=2)
    (problem,) = check.problems
    assert problem.startswith("no question was answered by 3 or more groups")
    assert "--no-use-prior" in problem
    assert check_dataset(dataset(disjoint, qs), n_context=2, need_prior=False).ok


def test_splits_need_two_training_groups_and_a_test_group(ragged: PreferenceDataset) -> None:
    assert check_dataset(ragged, n_context=2, splits=(0.6, 0.8)).ok  # 2 + 2, 3 + 1
    (problem,) = check_dataset(ragged, n_context=2, splits=(0.4, 0.6)).problems
    assert problem.startswith("split 0.4 of 4 groups gives 1 training group(s) and 3 test group(s)")


def test_an_empty_dataset_is_refused() -> None:
    check = check_dataset(PreferenceDataset(questions=[], groups=[]))
    assert check.n_answers == 0 and not check.ok


def test_shipped_opinionqa_passes(opinionqa: PreferenceDataset) -> None:
    check = check_dataset(opinionqa, splits=(0.4, 0.6, 0.8))
    assert check.ok, check.problems
    assert (check.n_groups, check.n_questions, check.n_flat_ordinal, check.n_complete) == (17, 684, 4, 684)
    assert (check.n_test_groups, check.n_targets) == (17, 17 * (680 - 20))


def test_shipped_globalopinionqa_passes() -> None:
    check = check_dataset(load_globalopinionqa(), splits=(0.4, 0.6, 0.8))
    assert check.ok, check.problems
    assert (check.n_groups, check.n_questions, check.n_ordinal, check.n_answers) == (130, 1726, 0, 9805)
    assert (check.n_complete, check.n_prior_questions, check.n_test_groups, check.n_targets) == (0, 1059, 106, 7340)
