"""Population-prior item features: how the training groups' answers to an item vary (pure numpy).

For items of questions the training groups answered, the answers of G groups form a matrix Y [I, G].
Its mean over groups and its top principal directions across groups (item loadings L [I, k]) describe
the item the way collaborative filtering does: a group's answers are roughly mean + L z_group (groups that
answered different questions: `fit_prior` fills the gaps by a low-rank fit before the SVD). Given
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


# Ragged answers (groups answered different questions): the missing entries of the mean-centred matrix are
# filled by a rank-`rank` alternating-least-squares fit with this ridge, for this many sweeps (deterministic:
# it starts from the SVD of the zero-filled matrix). See `impute_low_rank`.
IMPUTE_RIDGE = 1e-3
IMPUTE_SWEEPS = 30


def impute_low_rank(r: np.ndarray, rank: int, ridge: float = IMPUTE_RIDGE, sweeps: int = IMPUTE_SWEEPS) -> np.ndarray:
    """r [I, G] (NaN = missing) with its missing entries replaced by a rank-`rank` fit A B^T of its observed ones.

    Alternating ridge least squares on the observed entries only: minimise sum_obs (r - A B^T)^2 +
    ridge (|A|^2 + |B|^2), starting from the top-`rank` SVD of r with missing entries set to 0 (so the
    result is deterministic). Observed entries are returned unchanged. With rank 0, missing entries are 0.
    """
    obs = np.isfinite(r)
    r0 = np.where(obs, r, 0.0)
    k = min(rank, *r.shape)
    if k == 0 or obs.all():
        return r0
    u, s, vt = np.linalg.svd(r0, full_matrices=False)
    a, b = u[:, :k] * np.sqrt(s[:k]), vt[:k].T * np.sqrt(s[:k])  # [I, k], [G, k]
    m = obs.astype(np.float64)
    n_items, n_groups = m.shape
    eye = ridge * np.eye(k)

    def outer(x: np.ndarray) -> np.ndarray:  # [N, k] -> [N, k*k]: each row's outer product, flattened
        return (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], k * k)

    for _ in range(sweeps):
        # each item's loadings from the groups that answered it, then each group's factors from its items;
        # the per-row Gram matrices sum_g m[i,g] b_g b_g^T as one matrix product (7x faster than einsum)
        gram = (m @ outer(b)).reshape(n_items, k, k) + eye
        a = np.linalg.solve(gram, (r0 @ b)[..., None])[..., 0]
        gram = (m.T @ outer(a)).reshape(n_groups, k, k) + eye
        b = np.linalg.solve(gram, (r0.T @ a)[..., None])[..., 0]
    return np.where(obs, r0, a @ b.T)


def fit_prior(y: np.ndarray, rank: int, reference: np.ndarray | None = None) -> PopulationPrior:
    """Prior from group answers y [I, G]; NaN marks an item whose question the group did not answer.

    Loadings are U_k S_k / sqrt(G), so their scale does not grow with the number of groups. When
    `reference` loadings [I, k] are given, the basis is rotated onto them (orthogonal Procrustes), so
    priors fitted on different group subsets (leave-one-out during training) share one coordinate system.

    Ragged answers: an item's mean is over the groups that answered it, and the SVD runs on the
    mean-centred matrix with its missing entries filled by `impute_low_rank`. Every item needs at least
    one answer. On a complete matrix this is exactly the plain SVD (the imputation is not run).
    """
    assert y.ndim == 2 and y.shape[1] >= 1, "y must be [items, groups]"
    assert not np.isinf(y).any(), "prior answers must be finite (NaN marks a missing answer)"
    observed = np.isfinite(y)
    assert observed.any(axis=1).all(), "every item needs at least one group's answer"
    n_groups = y.shape[1]
    if observed.all():
        mean = y.mean(axis=1)
        centred = y - mean[:, None]
    else:
        counts = observed.sum(axis=1)
        mean = np.where(observed, y, 0.0).sum(axis=1) / counts
        centred = impute_low_rank(y - mean[:, None], rank)
    loadings = np.zeros((y.shape[0], rank), dtype=np.float64)
    if n_groups > 1 and rank > 0:
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        k = min(rank, s.shape[0])
        loadings[:, :k] = u[:, :k] * s[:k] / np.sqrt(n_groups)
    if reference is not None and rank > 0:
        u, _, vt = np.linalg.svd(loadings.T @ reference)
        loadings = loadings @ (u @ vt)
    return PopulationPrior(mean.astype(np.float32), loadings.astype(np.float32))
