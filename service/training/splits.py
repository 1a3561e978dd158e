"""Meta-train / meta-test group splits, context / target questions, and validation groups.

`make_split` draws exactly as the reference script `oqa_baselines.py` does, so results on the same
group list, question list, split and seed are comparable number for number:

    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(groups))            # first int(len(groups) * split) are meta-train
    ctx = rng.choice(question_ids, size=n_context, replace=False)
    targets = [q for q in question_ids if q not in ctx]

The reference's question list is the sorted OpinionQA keys that every group answered and whose ordinals
have spread (680 questions); `scorable_question_ids` builds that list from a dataset.

Ragged data (groups answered different questions; pass `answered` to `make_split`): a test group's context
and targets come from the questions *it* answered that some train group answered too. Its context is the
shared draw's questions it answered, topped up to `n_context` by a draw of its own (seeded by the split's
seed, a fixed stream tag and the group's index), so on complete data every group gets the shared draw, as
the reference. A test group with fewer than n_context + 1 such questions is skipped (`Split.skipped_groups`,
logged as a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import numpy as np

from service.training.datasets import PreferenceDataset

log = logging.getLogger(__name__)

# Mixed into the seed of `validation_groups`, so its draws never replay the split's own stream.
_VALIDATION_STREAM = 0x56414C  # "VAL"
# Mixed into the seed of a ragged test group's own context draw.
_CONTEXT_STREAM = 0x435458  # "CTX"


@dataclass(frozen=True)
class Split:
    """Which groups train / are tested, and which questions are the test groups' context / targets.

    `context_qids` / `target_qids` are the shared draw; a test group that did not answer all of them (ragged
    data) has its own in `group_contexts` / `group_targets` (`context_of`, `targets_of` give either).
    """

    train_groups: tuple[str, ...]
    test_groups: tuple[str, ...]  # the scored ones
    context_qids: tuple[str, ...]  # in draw order
    target_qids: tuple[str, ...]  # every other question, in the order given to make_split
    split: float  # share of groups used for meta-training
    seed: int
    group_contexts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    group_targets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    skipped_groups: tuple[str, ...] = ()  # test groups with fewer than n_context + 1 usable answers

    @property
    def n_context(self) -> int:
        return len(self.context_qids)

    def context_of(self, group: str) -> tuple[str, ...]:
        """The test group's context questions."""
        return self.group_contexts.get(group, self.context_qids)

    def targets_of(self, group: str) -> tuple[str, ...]:
        """The test group's target questions."""
        return self.group_targets.get(group, self.target_qids)

    @property
    def all_targets(self) -> tuple[str, ...]:
        """Every test group's targets, each once, in first-seen order."""
        return tuple(dict.fromkeys(q for g in self.test_groups for q in self.targets_of(g)))


def make_split(
    groups: list[str],
    questions: list[str],
    split: float,
    seed: int,
    n_context: int,
    answered: Mapping[str, AbstractSet[str]] | None = None,
) -> Split:
    """Split groups into meta-train / meta-test and questions into context / targets, as oqa_baselines.py.

    `questions` are question ids in dataset order, already filtered to the usable ones (the RNG draws
    depend on the exact list). The same context questions serve every test group (as in the paper's
    research code). With `answered` (group -> the questions it answered; `answered_sets`), each test group's
    context and targets come from its own answers (module docstring); None: every group answered everything.
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
    if answered is None:
        return Split(
            train_groups=train, test_groups=test, context_qids=ctx, target_qids=targets, split=split, seed=seed
        )
    train_known = set().union(*(answered[g] for g in train))
    contexts, group_targets, scored, skipped = {}, {}, [], []
    for g in test:
        pool = [q for q in questions if q in answered[g] and q in train_known]
        if len(pool) < n_context + 1:
            skipped.append(g)
            continue
        scored.append(g)
        own = draw_group_context(ctx, pool, n_context, [seed, _CONTEXT_STREAM, groups.index(g)])
        own_targets = tuple(q for q in pool if q not in set(own))
        if own != ctx or own_targets != targets:
            contexts[g], group_targets[g] = own, own_targets
    if skipped:
        log.warning(
            "%d of %d test groups answered fewer than %d usable questions and are skipped: %s",
            len(skipped),
            len(test),
            n_context + 1,
            skipped,
        )
    if not scored:
        raise ValueError(f"no test group answered {n_context + 1} questions that a train group answered too")
    return Split(
        train_groups=train,
        test_groups=tuple(scored),
        context_qids=ctx,
        target_qids=targets,
        split=split,
        seed=seed,
        group_contexts=contexts,
        group_targets=group_targets,
        skipped_groups=tuple(skipped),
    )


def draw_group_context(
    shared: Sequence[str], pool: Sequence[str], n_context: int, seed: Sequence[int]
) -> tuple[str, ...]:
    """A group's `n_context` context questions from `pool` (the questions it can use): the `shared` draw's
    questions in the pool, then, if too few, a draw without replacement from the rest of the pool
    (`np.random.default_rng(seed)`)."""
    in_pool = set(pool)
    kept = [q for q in shared if q in in_pool][:n_context]
    if len(kept) == n_context:
        return tuple(kept)
    rest = [q for q in pool if q not in set(kept)]
    extra = np.random.default_rng(list(seed)).choice(rest, size=n_context - len(kept), replace=False)
    return tuple(kept + [str(q) for q in extra])


def answered_sets(dataset: PreferenceDataset, groups: Sequence[str] | None = None) -> dict[str, frozenset[str]]:
    """group -> the ids of the questions it answered (the `answered` argument of `make_split`)."""
    groups = dataset.groups if groups is None else list(groups)
    return {g: frozenset(dataset.dists.get(g, {})) for g in groups}


def validation_groups(train_groups: Sequence[str], seed: int, n_val: int | None = None) -> tuple[list[str], list[str]]:
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
        raise ValueError(f"n_val must be in [1, {len(train) - 1}] for {len(train)} training groups, got {n_val}")
    rng = np.random.default_rng([seed, _VALIDATION_STREAM])
    picked = set(rng.choice(len(train), size=n_val, replace=False).tolist())
    fit = [g for i, g in enumerate(train) if i not in picked]
    val = [g for i, g in enumerate(train) if i in picked]
    return fit, val


def scorable_question_ids(dataset: PreferenceDataset, groups: Sequence[str] | None = None) -> list[str]:
    """Ids of questions at least one of `groups` (default: all) answered and that have a defined score, in
    dataset order (ragged data: which group answered which is `answered_sets`).

    Drops ordinal questions whose ordinals are all equal (no Wasserstein score). On the shipped
    OpinionQA file (complete: every group answered every question) this is the reference's list of 680
    questions, in the same (sorted key) order.
    """
    groups = dataset.groups if groups is None else list(groups)
    return [
        q.qid
        for q in dataset.questions
        if any(dataset.has(g, q.qid) for g in groups) and (q.ordinals is None or q.has_ordinal_spread)
    ]
