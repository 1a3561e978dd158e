"""Population-prior item features: how the training groups' answers to an item vary (pure numpy).

For items of questions the training groups answered, the answers of G groups form a matrix Y [I, G].
Its mean over groups and its top principal directions across groups (item loadings L [I, k]) describe
the item the way collaborative filtering does: a group's answers are roughly mean + L z_group. Given
these features next to the LLM embedding, GPO's in-context step amounts to inferring z from the context
and reading it out on the targets, which plain embeddings make it learn only by memorisation. Questions
the training groups never saw get the flag 0 and zeros (the LLM embedding must carry them).
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def prior_dim(rank: int) -> int:
    """Feature size: known flag, group mean, `rank` loadings."""
    return 2 + rank


def question_key(text: str, options: Sequence[str]) -> str:
    """Stable id of a question with its option list (case and whitespace insensitive)."""

    def norm(s: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", s).casefold().split())

    joined = "\x1e".join([norm(text), *(norm(o) for o in options)])
    return hashlib.sha256(joined.encode()).hexdigest()[:32]


@dataclass
class PopulationPrior:
    """Per-item mean and loadings, for the items of some question layout (rows aligned with an item table)."""

    mean: np.ndarray  # [I] float32
    loadings: np.ndarray  # [I, k] float32

    @property
    def rank(self) -> int:
        return int(self.loadings.shape[1])

    def features(self, rows: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """[n, 2 + k] features of item `rows`; rows where `known` is False get the 'unknown' encoding."""
        flag = np.ones((len(rows), 1), dtype=np.float32) if known is None else known[:, None].astype(np.float32)
        f = np.concatenate([flag, self.mean[rows, None], self.loadings[rows]], axis=1).astype(np.float32)
        return f * flag  # unknown items: all zeros, flag 0


def fit_prior(y: np.ndarray, rank: int, reference: np.ndarray | None = None) -> PopulationPrior:
    """Prior from group answers y [I, G] (complete, no NaN).

    Loadings are U_k S_k / sqrt(G), so their scale does not grow with the number of groups. When
    `reference` loadings [I, k] are given, the basis is rotated onto them (orthogonal Procrustes), so
    priors fitted on different group subsets (leave-one-out during training) share one coordinate system.
    """
    assert y.ndim == 2 and y.shape[1] >= 1, "y must be [items, groups]"
    assert np.isfinite(y).all(), "prior answers must be complete (no NaN)"
    n_groups = y.shape[1]
    mean = y.mean(axis=1)
    loadings = np.zeros((y.shape[0], rank), dtype=np.float64)
    if n_groups > 1 and rank > 0:
        u, s, _ = np.linalg.svd(y - mean[:, None], full_matrices=False)
        k = min(rank, s.shape[0])
        loadings[:, :k] = u[:, :k] * s[:k] / np.sqrt(n_groups)
    if reference is not None and rank > 0:
        u, _, vt = np.linalg.svd(loadings.T @ reference)
        loadings = loadings @ (u @ vt)
    return PopulationPrior(mean.astype(np.float32), loadings.astype(np.float32))
