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


# Prior features of a choice item read from its text (`TextPrior`) carry this flag: the readout uses them (flag > 0)
# with this weight in the context's ridge fit, and the transformer can tell them from an item's own prior (flag 1).
TEXT_FLAG = 0.5


def centred_features(emb: np.ndarray, item_q: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """Standardised embeddings [n, D] minus the mean of their question's options (the options of one question share
    its prompt; what tells them apart is what the text map reads)."""
    x = (np.asarray(emb, dtype=np.float64) - mu) / sd
    _, inverse, counts = np.unique(item_q, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), x.shape[1]))
    np.add.at(sums, inverse, x)
    return x - (sums / counts[:, None])[inverse]


@dataclass(frozen=True)
class TextPrior:
    """Prior features of a choice option read from its embedding, for questions no training group answered.

    A ridge map from the option's standardised embedding, centred within its question, to its population mean's
    deviation from uniform (1 / n_options) and its loadings on the training groups' principal directions, fitted
    on the known questions' options. Centring within the question makes the deviations of a question's options
    sum to 0, as its training targets do. `features` gives [TEXT_FLAG, 1/n + deviation, loadings].
    """

    mu: np.ndarray  # [D]
    sd: np.ndarray  # [D]
    w: np.ndarray  # [D, 1 + k]

    @property
    def rank(self) -> int:
        return int(self.w.shape[1] - 1)

    @classmethod
    def fit(cls, emb: np.ndarray, item_q: np.ndarray, targets: np.ndarray, alpha: float | np.ndarray) -> TextPrior:
        """Ridge (strength `alpha`, or one per target column [1 + k]) from items' embeddings [n, D] to `targets`
        [n, 1 + k]."""
        mu = np.asarray(emb, dtype=np.float64).mean(axis=0)
        sd = np.maximum(np.asarray(emb, dtype=np.float64).std(axis=0), 1e-6)
        x = centred_features(emb, item_q, mu, sd)
        gram, b = x.T @ x, x.T @ np.asarray(targets, dtype=np.float64)
        alphas = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (b.shape[1],))
        w = np.zeros_like(b)
        for a in np.unique(alphas):
            w[:, alphas == a] = np.linalg.solve(gram + a * np.eye(x.shape[1]), b[:, alphas == a])
        return cls(mu, sd, w)

    def estimate(self, emb: np.ndarray, item_q: np.ndarray) -> np.ndarray:
        """[n, 1 + k]: each item's deviation from uniform and loadings."""
        return centred_features(emb, item_q, self.mu, self.sd) @ self.w

    def features(self, emb: np.ndarray, item_q: np.ndarray, n_options: np.ndarray) -> np.ndarray:
        """[n, 2 + k] prior features [TEXT_FLAG, 1/n_options + deviation, loadings] of items (`n_options`: of each
        item's question)."""
        est = self.estimate(emb, item_q)
        flag = np.full((len(est), 1), TEXT_FLAG)
        return np.column_stack([flag, 1.0 / np.asarray(n_options) + est[:, 0], est[:, 1:]]).astype(np.float32)

    def question_features(self, emb: np.ndarray) -> np.ndarray:
        """[n, 2 + k] prior features of one question's n options from their embeddings [n, D] (`features` for one
        question, without its grouping: the serving path, once per new question)."""
        n = len(emb)
        x = (np.asarray(emb, dtype=np.float64) - self.mu) / self.sd
        est = (x - x.mean(axis=0)) @ self.w
        flag = np.full((n, 1), TEXT_FLAG)
        return np.column_stack([flag, 1.0 / n + est[:, 0], est[:, 1:]]).astype(np.float32)

    def to_checkpoint(self) -> dict[str, np.ndarray]:
        """The arrays a checkpoint stores."""
        return {"text_mu": _float32(self.mu), "text_sd": _float32(self.sd), "text_w": _float32(self.w)}

    @classmethod
    def from_checkpoint(cls, extra: Mapping[str, np.ndarray]) -> TextPrior | None:
        """The text prior a checkpoint stores, or None when it stores none."""
        if not {"text_mu", "text_sd", "text_w"} <= set(extra):
            return None
        return cls(
            np.asarray(extra["text_mu"], np.float64),
            np.asarray(extra["text_sd"], np.float64),
            np.asarray(extra["text_w"], np.float64),
        )


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
