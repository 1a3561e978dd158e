"""Ragged survey data from complete data: each group loses a random share of its answers (issue 15).

Real surveys are ragged (in GlobalOpinionQA no question is answered by every country); OpinionQA is complete.
`drop_answers` makes a ragged copy of a complete dataset, to check that training and evaluation use, for every
group, only the questions it answered. `python -m benchmarks.ragged_opinionqa` writes one as JSONL.
"""

from __future__ import annotations

import numpy as np

from service.training.datasets import PreferenceDataset


def drop_answers(dataset: PreferenceDataset, drop: float, seed: int) -> PreferenceDataset:
    """A copy where each group keeps a random (1 - `drop`) share of the questions it answered.

    Group i (in `dataset.groups` order) drops round(drop * n_i) of its n_i answers, drawn without replacement
    by `np.random.default_rng([seed, i])`, so a group's draw does not depend on the others. Questions are kept
    even when no group answers them any more.
    """
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    dists: dict[str, dict[str, np.ndarray]] = {}
    for i, g in enumerate(dataset.groups):
        answered = [q.qid for q in dataset.questions if dataset.has(g, q.qid)]
        rng = np.random.default_rng([seed, i])
        gone = set(rng.choice(len(answered), size=int(round(drop * len(answered))), replace=False).tolist())
        dists[g] = {q: dataset.dist(g, q).copy() for k, q in enumerate(answered) if k not in gone}
    return PreferenceDataset(
        questions=list(dataset.questions),
        groups=list(dataset.groups),
        dists=dists,
        group_attributes=dict(dataset.group_attributes),
    )
