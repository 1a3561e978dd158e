"""Item features of a GPO checkpoint: what an item's vector holds, and the typed pieces stored beside the
weights (content basis, reward model) that give any item, known to the prior bank or new, its prior features.

Training builds features with these objects and saves them in the checkpoint; serving loads them back from it,
so both sides compute an item's vector with the same code (pure numpy).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from service.gpo.prior import PopulationPrior, prior_dim


@dataclass(frozen=True)
class FeatureSpec:
    """What an item's feature vector holds; saved in the checkpoint so serving rebuilds the same vector."""

    emb_dim: int
    use_embedding: bool = True
    use_prior: bool = True
    prior_rank: int = 8

    @property
    def dim_x(self) -> int:
        return (self.emb_dim if self.use_embedding else 0) + (prior_dim(self.prior_rank) if self.use_prior else 0)

    @property
    def prior_slice(self) -> slice:
        start = self.emb_dim if self.use_embedding else 0
        return slice(start, start + (prior_dim(self.prior_rank) if self.use_prior else 0))

    @property
    def prior_mean_index(self) -> int | None:
        """Column of the prior mean in the feature vector (after the known flag)."""
        return self.prior_slice.start + 1 if self.use_prior else None

    def to_dict(self) -> dict:
        return asdict(self)

    def join(self, emb: np.ndarray | None, prior_features: np.ndarray | None) -> np.ndarray:
        """[n, dim_x] features from the items' embeddings [n, emb_dim] and prior features [n, 2 + rank], each
        present exactly when the spec uses it."""
        parts = []
        if self.use_embedding:
            assert emb is not None, "this feature spec needs the items' embeddings"
            parts.append(emb)
        if self.use_prior:
            assert prior_features is not None, "this feature spec needs the items' prior features"
            parts.append(prior_features)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def build(self, emb: np.ndarray, prior: PopulationPrior | None, rows: np.ndarray, known: np.ndarray) -> np.ndarray:
        """[n, dim_x] features of item `rows` (embedding rows `emb[rows]`); `known`: prior available."""
        if self.use_prior:
            assert prior is not None, "this feature spec needs a population prior"
        return self.join(
            emb[rows] if self.use_embedding else None,
            prior.features(rows, known) if self.use_prior and prior is not None else None,
        )


def _float32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


@dataclass(frozen=True)
class ContentBasis:
    """Principal directions of the standardised item embeddings: an item's loadings are its coordinates on them
    (divided by sqrt(n) like the rating loadings), so any item, rated or new, has loadings from its embedding."""

    mu: np.ndarray  # [D]
    sd: np.ndarray  # [D]
    components: np.ndarray  # [D, k]
    n: int  # items the basis was fitted on

    def loadings(self, emb: np.ndarray) -> np.ndarray:
        """[n, k] loadings of embeddings [n, D]."""
        return (((emb - self.mu) / self.sd) @ self.components / np.sqrt(self.n)).astype(np.float32)

    def to_checkpoint(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, meta entries) as a checkpoint stores them."""
        arrays = {"content_mu": self.mu, "content_sd": self.sd, "content_components": self.components}
        return {k: _float32(v) for k, v in arrays.items()}, {"content_basis_n": int(self.n)}

    @classmethod
    def from_checkpoint(cls, extra: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> ContentBasis | None:
        """The basis a checkpoint stores, or None when it stores none."""
        if not {"content_mu", "content_sd", "content_components"} <= set(extra):
            return None
        return cls(
            extra["content_mu"], extra["content_sd"], extra["content_components"], int(meta.get("content_basis_n", 1))
        )


@dataclass(frozen=True)
class RewardModel:
    """A non-personalised reward model: a linear score of the item's standardised embedding."""

    mu: np.ndarray  # [D]
    sd: np.ndarray  # [D]
    w: np.ndarray  # [D]
    b: float

    def score(self, emb: np.ndarray) -> np.ndarray:
        return ((emb - self.mu) / self.sd) @ self.w + self.b

    def to_checkpoint(self) -> dict[str, np.ndarray]:
        """The arrays a checkpoint stores."""
        arrays = {"reward_mu": self.mu, "reward_sd": self.sd, "reward_w": self.w, "reward_b": np.array([self.b])}
        return {k: _float32(v) for k, v in arrays.items()}

    @classmethod
    def from_checkpoint(cls, extra: Mapping[str, np.ndarray]) -> RewardModel | None:
        """The reward model a checkpoint stores, or None when it stores none."""
        if not {"reward_mu", "reward_sd", "reward_w", "reward_b"} <= set(extra):
            return None
        return cls(extra["reward_mu"], extra["reward_sd"], extra["reward_w"], float(extra["reward_b"].reshape(-1)[0]))
