"""People splits and seeded context draws: every method sees the same people and the same context items."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.training.ratings import RatingsDataset


@dataclass(frozen=True)
class PeopleSplit:
    fit: list[str]  # meta-training episodes
    val: list[str]  # checkpoint selection (part of meta-train: never a test person)
    test: list[str]


def split_people(people: Sequence[str], train_frac: float, seed: int, val_frac: float = 0.15) -> PeopleSplit:
    """Meta-train / meta-test people (a seeded permutation); validation people come out of meta-train."""
    rng = np.random.default_rng(seed)
    order = [people[i] for i in rng.permutation(len(people))]
    n_train = int(round(train_frac * len(people)))
    train, test = order[:n_train], order[n_train:]
    n_val = max(1, int(round(val_frac * len(train))))
    return PeopleSplit(fit=train[n_val:], val=train[:n_val], test=test)


def rated_rows(ds: RatingsDataset, person: str) -> np.ndarray:
    """Item indices (dataset order) of the items the person rated."""
    pos = {it.item_id: i for i, it in enumerate(ds.items)}
    return np.array([pos[i] for i in ds.rated(person)], dtype=np.int64)


def person_seed(person: str) -> int:
    """A 64-bit seed from the sha256 of a person's whole id: ids that share a prefix get unrelated streams."""
    return int.from_bytes(hashlib.sha256(person.encode("utf-8")).digest()[:8], "little")


def context_draw(ds: RatingsDataset, person: str, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(context item indices, target item indices) of a person: k random rated items, the rest as targets.
    Seeded by (seed, the person's whole id, k), so every method sees the same draw, and two people's draws are
    independent however alike their ids."""
    rated = rated_rows(ds, person)
    rng = np.random.default_rng([seed, person_seed(person), k])
    perm = rng.permutation(rated)
    k = min(k, len(rated) - 2)
    return np.sort(perm[:k]), np.sort(perm[k:])
