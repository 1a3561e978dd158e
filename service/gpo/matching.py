"""Rewording-tolerant prior bank: a question outside the bank borrows the prior of its nearest known question (pure
numpy).

The prior bank matches a question by its exact text and options, so a user's rewording of a known question is a new
question to it. The matcher compares a question-level sentence vector (the question and its options in one line,
`match_text`, embedded by a sentence encoder such as all-MiniLM-L6-v2: unit vectors) with the bank's questions of the
same number of options. When the nearest one's cosine similarity reaches `threshold`, the new question's options get
that question's prior features, option by option in order (`borrowed_features`), flagged as estimates (TEXT_FLAG, as
text-prior features are): a target reads them out as its own prior, and in a context they weigh what a text estimate
weighs in the ridge fit. (With full weight in a context, borrowed priors cost the new-context protocol 0.955 -> 0.901
on known targets: a sibling question's loadings paired with another question's answers mislead the group's
factors.) Otherwise the question stays new (the text prior).

The threshold is chosen on the training side (service.training.matching): the similarity above which a training
question's nearest *other* training question gives better prior features than its out-of-fold text estimate. The
survey's own near-duplicates (the same question in several waves, families of questions on one template) decide it;
no rewording does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.gpo.features import TEXT_FLAG
from service.gpo.prior import PopulationPrior

MATCH_TEXT_VERSION = "gpo-match-v1"


def match_text(question: str, options: Sequence[str]) -> str:
    """The line a question is matched by (version MATCH_TEXT_VERSION): "question / option 1 / option 2 ..."."""
    return " / ".join([question.strip(), *(o.strip() for o in options)])


def borrowed_features(prior: PopulationPrior, rows: np.ndarray) -> np.ndarray:
    """[n, 2 + k] the prior features of a known question's option `rows`, flagged TEXT_FLAG (an estimate)."""
    f = prior.features(rows)
    f[:, 0] = TEXT_FLAG
    return f


@dataclass(frozen=True)
class QuestionMatcher:
    """The bank's question vectors, each question's first prior row and option count, and the threshold."""

    vectors: np.ndarray  # [Qb, d] unit vectors
    starts: np.ndarray  # [Qb] int: the question's first row in the prior (its options are the next n rows)
    n_options: np.ndarray  # [Qb] int
    threshold: float

    def match_many(self, vectors: np.ndarray, n_options: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """For each question (unit vector [m, d], its option count): the first prior row of its match (-1: none)
        and the similarity of the nearest bank question with that many options (-inf when there is none)."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.vectors.shape[1])
        n = np.asarray(n_options, dtype=np.int64)
        if len(self.vectors) == 0:
            return np.full(len(n), -1, dtype=np.int64), np.full(len(n), -np.inf)
        sim = np.where(n[:, None] == self.n_options[None, :], vectors @ self.vectors.T, -np.inf)  # [m, Qb]
        best = np.argmax(sim, axis=1)
        top = sim[np.arange(len(n)), best]
        starts = np.where(top >= self.threshold, self.starts[best], -1)
        return starts.astype(np.int64), top.astype(np.float64)

    def match(self, vector: np.ndarray, n_options: int) -> np.ndarray | None:
        """The prior rows of the matched bank question's options, in order, or None."""
        (start,), _ = self.match_many(np.asarray(vector)[None, :], [n_options])
        return None if start < 0 else np.arange(start, start + n_options)

    def to_checkpoint(self) -> dict[str, np.ndarray]:
        """The arrays a checkpoint stores."""
        return {
            "match_vectors": np.ascontiguousarray(self.vectors, dtype=np.float32),
            "match_starts": np.asarray(self.starts, dtype=np.int64),
            "match_n_options": np.asarray(self.n_options, dtype=np.int64),
            "match_threshold": np.array([self.threshold], dtype=np.float64),
        }

    @classmethod
    def from_checkpoint(cls, extra: Mapping[str, np.ndarray]) -> QuestionMatcher | None:
        """The matcher a checkpoint stores, or None when it stores none."""
        if not {"match_vectors", "match_starts", "match_n_options", "match_threshold"} <= set(extra):
            return None
        return cls(
            np.asarray(extra["match_vectors"], np.float32),
            np.asarray(extra["match_starts"], np.int64),
            np.asarray(extra["match_n_options"], np.int64),
            float(np.asarray(extra["match_threshold"]).reshape(-1)[0]),
        )
