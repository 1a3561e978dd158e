"""In-memory group preference datasets: questions, groups and each group's answer distribution."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Question:
    """One multiple-choice question. `ordinals` (same length as options) makes it ordinal."""

    qid: str
    text: str
    options: tuple[str, ...]
    ordinals: tuple[float, ...] | None = None
    tags: frozenset[str] = frozenset()

    @property
    def n_options(self) -> int:
        return len(self.options)

    @property
    def is_ordinal(self) -> bool:
        return self.ordinals is not None

    @property
    def has_ordinal_spread(self) -> bool:
        """False where every ordinal is equal: a Wasserstein score is undefined there."""
        return self.ordinals is not None and max(self.ordinals) > min(self.ordinals)


@dataclass
class PreferenceDataset:
    """Questions in a fixed order and, per group, a distribution over each answered question's options."""

    questions: list[Question]
    groups: list[str]
    dists: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # group -> qid -> [n_options]
    # group -> the demographic attribute it belongs to (e.g. "Democrat" -> "POLPARTY"); optional
    group_attributes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_id = {q.qid: q for q in self.questions}
        assert len(self._by_id) == len(self.questions), "question ids must be unique"

    def question(self, qid: str) -> Question:
        return self._by_id[qid]

    def dist(self, group: str, qid: str) -> np.ndarray:
        return self.dists[group][qid]

    def has(self, group: str, qid: str) -> bool:
        return qid in self.dists.get(group, {})

    def complete_questions(self, groups: list[str] | None = None) -> list[Question]:
        """Questions every one of `groups` (default: all) has answered, in dataset order."""
        groups = self.groups if groups is None else groups
        return [q for q in self.questions if all(self.has(g, q.qid) for g in groups)]

    def subset(self, qids: list[str]) -> PreferenceDataset:
        """A dataset restricted to the given questions (same groups)."""
        keep = set(qids)
        return PreferenceDataset(
            questions=[q for q in self.questions if q.qid in keep],
            groups=list(self.groups),
            dists={g: {k: v for k, v in d.items() if k in keep} for g, d in self.dists.items()},
            group_attributes=dict(self.group_attributes),
        )
