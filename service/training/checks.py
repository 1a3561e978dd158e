"""Can a group dataset train and be evaluated? Counts what training and evaluation use, and what stops them.

Run before anything expensive (embedding takes an hour on a large file): `gpo import csv|jsonl --dry-run`,
`gpo check`, and the start of `gpo train` / `gpo eval` on a `--data` file. The counts follow what the code
does with the data: a question is scored unless it is ordinal with all-equal ordinals (`scorable_question_ids`);
a question's population prior is its training groups' answers (`fit_group_priors`), and the prior's loadings, and
leave-one-out training on them, need questions that several groups share (`SHARED_GROUPS`);
a test group needs `n_context + 1` scorable answers, else evaluation skips it (`make_split`); training sets aside
validation groups among its training groups (`validation_groups`: at least one fit and one validation group).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from service.training.datasets import PreferenceDataset

MIN_GROUPS = 3  # training needs a fit group and a validation group, evaluation a training and a test group
# a question this many groups answered is shared: every one of them sees the answers of at least two others in its
# leave-one-out prior, so training has something to learn the loadings' use from
SHARED_GROUPS = 3
DEFAULT_CONTEXT = 20  # context questions per test group, as the paper's protocol and `gpo eval`


@dataclass(frozen=True)
class DatasetCheck:
    """What a dataset offers training and evaluation, and why it cannot train (`problems`, empty when it can)."""

    n_groups: int
    n_questions: int
    n_ordinal: int
    n_flat_ordinal: int  # ordinal questions whose ordinals are all equal: never scored
    n_answers: int  # (group, question) rows
    n_prior_questions: int  # answered by >= SHARED_GROUPS groups: what the prior's loadings learn from
    n_complete: int  # answered by every group
    n_context: int
    n_test_groups: int  # groups with >= n_context + 1 scorable answers
    n_targets: int  # their scorable answers beyond the n_context context questions, summed
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """The counts, one per line, as the commands print them."""
        k = self.n_context
        return [
            f"groups: {self.n_groups}",
            f"questions: {self.n_questions} ({self.n_ordinal} ordinal, {self.n_questions - self.n_ordinal} "
            f"non-ordinal; {self.n_flat_ordinal} ordinal with all-equal ordinals, not scored)",
            f"answers (group, question rows): {self.n_answers}",
            f"questions answered by >= {SHARED_GROUPS} groups (shared: the prior's loadings learn from them): "
            f"{self.n_prior_questions}",
            f"complete questions (answered by every group): {self.n_complete}",
            f"groups with >= {k + 1} scorable answers (usable as test groups at {k} context questions): "
            f"{self.n_test_groups}",
            f"scorable targets (those groups' scorable answers beyond {k} context questions, summed): {self.n_targets}",
        ]


def check_dataset(
    dataset: PreferenceDataset,
    groups: Sequence[str] | None = None,
    n_context: int = DEFAULT_CONTEXT,
    splits: Sequence[float] = (),
    need_prior: bool = True,
) -> DatasetCheck:
    """Count what `dataset` (restricted to `groups`, default all) offers and list what stops training on it.

    `splits`: the train-group shares `gpo eval` will use (each must leave two training groups and a test group);
    `need_prior`: whether some question must be answered by SHARED_GROUPS groups (false without the prior).
    """
    groups = list(dataset.groups if groups is None else groups)
    questions = dataset.questions
    answered = np.array([[dataset.has(g, q.qid) for q in questions] for g in groups], dtype=bool)
    answered = answered.reshape(len(groups), len(questions))  # [G, Q], also when G or Q is 0
    scored = np.array([not q.is_ordinal or q.has_ordinal_spread for q in questions], dtype=bool)  # [Q]
    per_question = answered.sum(axis=0)  # [Q]
    usable = (answered & scored).sum(axis=1)  # [G] scorable answers per group
    test = usable >= n_context + 1
    n_ordinal = sum(q.is_ordinal for q in questions)
    check = DatasetCheck(
        n_groups=len(groups),
        n_questions=len(questions),
        n_ordinal=n_ordinal,
        n_flat_ordinal=n_ordinal - sum(q.has_ordinal_spread for q in questions),
        n_answers=int(answered.sum()),
        n_prior_questions=int((per_question >= SHARED_GROUPS).sum()),
        n_complete=int((per_question == len(groups)).sum()) if groups else 0,
        n_context=n_context,
        n_test_groups=int(test.sum()),
        n_targets=int((usable[test] - n_context).sum()),
    )
    check.problems.extend(_problems(check, int(scored.sum()), splits, need_prior))
    return check


def _problems(check: DatasetCheck, n_scored: int, splits: Sequence[float], need_prior: bool) -> list[str]:
    """What stops training or evaluation, each with what would fix it."""
    k = check.n_context
    out = []
    if check.n_groups < MIN_GROUPS:
        out.append(
            f"{check.n_groups} group(s): training needs at least {MIN_GROUPS} (fit, validation and test groups); "
            "add groups"
        )
    if check.n_questions and n_scored == 0:
        out.append(
            "no question can be scored: every question is ordinal with all-equal ordinals; give each ordinal "
            "question ordinals that differ (their order on the scale), or leave ordinals out"
        )
    if check.n_groups and check.n_test_groups == 0:
        out.append(
            f"no group answered {k + 1} or more scorable questions: a test group needs {k} context questions "
            f"and at least one target; add answers (or lower --n-context for gpo eval)"
        )
    if need_prior and check.n_prior_questions == 0:
        out.append(
            f"no question was answered by {SHARED_GROUPS} or more groups: the population prior learns from "
            "questions groups share; give groups common questions (or train with --no-use-prior)"
        )
    for s in splits:
        n_train = int(check.n_groups * s)
        if n_train < 2 or n_train >= check.n_groups:
            out.append(
                f"split {s:g} of {check.n_groups} groups gives {n_train} training group(s) and "
                f"{check.n_groups - n_train} test group(s): it needs at least 2 and 1; choose other --splits "
                "or add groups"
            )
    return out
