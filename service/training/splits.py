"""Meta-train / meta-test group splits, context / target questions, and validation groups.

`make_split` draws exactly as the reference script `oqa_baselines.py` does, so results on the same
group list, question list, split and seed are comparable number for number:

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(groups))            # first int(len(groups) * split) are meta-train
    ctx = rng.choice(question_ids, size=n_context, replace=False)
    targets = [q for q in question_ids if q not in ctx]

The reference's question list is the sorted OpinionQA keys that every group answered and whose ordinals
have spread (680 questions); `scorable_question_ids` builds that list from a dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.training.datasets import PreferenceDataset

# Mixed into the seed of `validation_groups`, so its draws never replay the split's own stream.
_VALIDATION_STREAM = 0x56414C  # "VAL"


@dataclass(frozen=True)
class Split:
    """Which groups train / are tested, and which questions are every test group's context / targets."""

    train_groups: tuple[str, ...]
    test_groups: tuple[str, ...]
    context_qids: tuple[str, ...]  # in draw order
    target_qids: tuple[str, ...]  # every other question, in the order given to make_split
    split: float  # share of groups used for meta-training
    seed: int

    @property
    def n_context(self) -> int:
        return len(self.context_qids)


def make_split(groups: list[str], questions: list[str], split: float, seed: int, n_context: int) -> Split:
    """Split groups into meta-train / meta-test and questions into context / targets, as oqa_baselines.py.

    `questions` are question ids in dataset order, already filtered to the usable ones (the RNG draws
    depend on the exact list). The same context questions serve every test group (as in the paper's
    research code).
    """
    if len(set(groups)) != len(groups):
        raise ValueError("groups must be unique")
    if len(set(questions)) != len(questions):
        raise ValueError("question ids must be unique")
    if not 0.0 < split < 1.0:
        raise ValueError(f"split must be in (0, 1), got {split}")
    n_train = int(len(groups) * split)
    if n_train < 1 or n_train >= len(groups):
        raise ValueError(f"split {split} of {len(groups)} groups leaves no meta-train or no meta-test group")
    if not 0 <= n_context < len(questions):
        raise ValueError(f"n_context must be in [0, {len(questions) - 1}] for {len(questions)} questions")

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(groups))
    train = tuple(groups[i] for i in perm[:n_train])
    test = tuple(groups[i] for i in perm[n_train:])
    ctx = tuple(str(q) for q in rng.choice(questions, size=n_context, replace=False))
    in_ctx = set(ctx)
    targets = tuple(q for q in questions if q not in in_ctx)
    return Split(train_groups=train, test_groups=test, context_qids=ctx, target_qids=targets,
                 split=split, seed=seed)


def validation_groups(
    train_groups: Sequence[str], seed: int, n_val: int | None = None
) -> tuple[list[str], list[str]]:
    """Set aside `n_val` of the meta-train groups for validation (checkpoint choice, early stopping).

    Returns (fit_groups, val_groups), both in the order of `train_groups`. Drawn only from the training
    groups, never from test groups, with a generator of its own (seeded by `seed` and a fixed stream
    tag), so the choice is deterministic and independent of the split's draws. `n_val` defaults to
    max(1, round(0.2 * len(train_groups))); at least one group must remain for fitting.
    """
    train = list(train_groups)
    if len(set(train)) != len(train):
        raise ValueError("train_groups must be unique")
    if n_val is None:
        n_val = max(1, round(0.2 * len(train)))
    if not 1 <= n_val < len(train):
        raise ValueError(
            f"n_val must be in [1, {len(train) - 1}] for {len(train)} training groups, got {n_val}"
        )
    rng = np.random.default_rng([seed, _VALIDATION_STREAM])
    picked = set(rng.choice(len(train), size=n_val, replace=False).tolist())
    fit = [g for i, g in enumerate(train) if i not in picked]
    val = [g for i, g in enumerate(train) if i in picked]
    return fit, val


def scorable_question_ids(dataset: PreferenceDataset, groups: Sequence[str] | None = None) -> list[str]:
    """Ids of questions every one of `groups` (default: all) answered and that have a defined score.

    Drops ordinal questions whose ordinals are all equal (no Wasserstein score). On the shipped
    OpinionQA file this is the reference's list of 680 questions, in the same (sorted key) order.
    """
    groups = dataset.groups if groups is None else list(groups)
    return [
        q.qid
        for q in dataset.complete_questions(groups)
        if q.ordinals is None or q.has_ordinal_spread
    ]
