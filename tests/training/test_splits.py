"""Splits: the exact RNG use of oqa_baselines.py, disjointness, validation groups from train groups only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from service.training.datasets import PreferenceDataset
from service.training.splits import Split, make_split, scorable_question_ids, validation_groups

GROUPS = [f"g{i}" for i in range(17)]
QIDS = [f"q{i:03d}" for i in range(120)]


def _reference_draws(groups, keys, split, seed, k):
    """The lines of oqa_baselines.run() that draw the split, verbatim."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(groups))
    ntr = int(len(groups) * split)
    train = [groups[i] for i in perm[:ntr]]
    test = [groups[i] for i in perm[ntr:]]
    ctx = list(rng.choice(keys, size=k, replace=False))
    tgt = [q for q in keys if q not in ctx]
    return train, test, ctx, tgt


@pytest.mark.parametrize("split", [0.4, 0.6, 0.8])
@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_matches_reference_rng(split: float, seed: int) -> None:
    s = make_split(GROUPS, QIDS, split, seed, 20)
    train, test, ctx, tgt = _reference_draws(GROUPS, QIDS, split, seed, 20)
    assert list(s.train_groups) == train
    assert list(s.test_groups) == test
    assert list(s.context_qids) == ctx
    assert list(s.target_qids) == tgt
    assert (s.split, s.seed, s.n_context) == (split, seed, 20)


def test_pinned_opinionqa_split(opinionqa: PreferenceDataset) -> None:
    # pins numpy's generator stream: if this changes, every reported number changes with it
    s = make_split(opinionqa.groups, scorable_question_ids(opinionqa), 0.6, 0, 20)
    assert s.test_groups == ("Black", "Liberal", "$100,000 or more", "White", "Moderate", "South", "Asian")
    assert s.context_qids[:5] == ("INFOOWNc_W45", "BENEFITSa_W54", "BIOTECHC_W34", "RACESURV21_W43", "GAP21Q17_W82")
    assert len(s.train_groups) == 10 and len(s.target_qids) == 660


def test_partition_and_order() -> None:
    s = make_split(GROUPS, QIDS, 0.6, 7, 25)
    assert sorted(s.train_groups + s.test_groups) == sorted(GROUPS)
    assert len(s.train_groups) == int(17 * 0.6)
    assert not set(s.context_qids) & set(s.target_qids)
    assert sorted(s.context_qids + s.target_qids) == sorted(QIDS)
    assert list(s.target_qids) == [q for q in QIDS if q not in s.context_qids]  # dataset order
    assert all(isinstance(q, str) for q in s.context_qids)  # not numpy strings
    assert make_split(GROUPS, QIDS, 0.6, 7, 25) == s
    assert make_split(GROUPS, QIDS, 0.6, 8, 25) != s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 3  # type: ignore[misc]


def test_zero_context_is_allowed() -> None:
    s = make_split(GROUPS, QIDS, 0.4, 0, 0)
    assert s.context_qids == () and s.target_qids == tuple(QIDS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": 0.0}, "split must be in"),
        ({"split": 1.0}, "split must be in"),
        ({"split": 0.01}, "leaves no meta-train"),
        ({"groups": ["a", "b"], "split": 0.4}, "leaves no meta-train or no meta-test"),
        ({"n_context": 120}, "n_context must be in"),
        ({"n_context": -1}, "n_context must be in"),
        ({"groups": ["a", "a", "b"]}, "groups must be unique"),
        ({"questions": ["q", "q", "r"]}, "question ids must be unique"),
    ],
)
def test_make_split_errors(kwargs: dict, match: str) -> None:
    args = {"groups": GROUPS, "questions": QIDS, "split": 0.6, "seed": 0, "n_context": 20} | kwargs
    with pytest.raises(ValueError, match=match):
        make_split(**args)


def test_validation_groups_come_from_train_only() -> None:
    s: Split = make_split(GROUPS, QIDS, 0.8, 1, 20)
    fit, val = validation_groups(s.train_groups, seed=1)
    assert len(val) == max(1, round(0.2 * len(s.train_groups))) == 3
    assert sorted(fit + val) == sorted(s.train_groups)
    assert not set(val) & set(s.test_groups)
    assert fit == [g for g in s.train_groups if g not in val]  # train order kept
    assert validation_groups(s.train_groups, seed=1) == (fit, val)  # deterministic
    assert any(validation_groups(s.train_groups, seed=k)[1] != val for k in range(2, 6))


def test_validation_groups_pinned_and_own_stream(opinionqa: PreferenceDataset) -> None:
    s = make_split(opinionqa.groups, scorable_question_ids(opinionqa), 0.6, 0, 20)
    fit, val = validation_groups(s.train_groups, 0)
    assert val == ["Northeast", "Male"]
    assert len(fit) == 8


def test_validation_groups_sizes_and_errors() -> None:
    assert len(validation_groups(["a", "b"], 0)[1]) == 1
    assert len(validation_groups([f"g{i}" for i in range(10)], 0, n_val=4)[1]) == 4
    with pytest.raises(ValueError, match="n_val must be in"):
        validation_groups(["a"], 0)
    with pytest.raises(ValueError, match="n_val must be in"):
        validation_groups(["a", "b", "c"], 0, n_val=3)
    with pytest.raises(ValueError, match="unique"):
        validation_groups(["a", "a", "b"], 0)


def test_scorable_question_ids(opinionqa: PreferenceDataset) -> None:
    ids = scorable_question_ids(opinionqa)
    assert len(ids) == 680
    assert ids == sorted(ids)
    assert all(opinionqa.question(q).has_ordinal_spread for q in ids)
    assert scorable_question_ids(opinionqa, opinionqa.groups[:3]) == ids
