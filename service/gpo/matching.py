"""Rewording-tolerant prior bank: a question outside the bank borrows the prior of its nearest known question (pure
numpy).

The prior bank matches a question by its exact text and options, so a user's rewording of a known question is a new
question to it. The matcher compares a question-level sentence vector (the question and its options in one line,
`match_text`, embedded by a sentence encoder such as all-MiniLM-L6-v2: unit vectors) with the bank's questions of the
same number of options. When the nearest one's cosine similarity reaches `threshold`, the new question's options get
that question's prior features option by option (`borrowed_features`), flagged as estimates (TEXT_FLAG, as
text-prior features are): a target reads them out as its own prior, and in a context they weigh what a text estimate
weighs in the ridge fit. (With full weight in a context, borrowed priors cost the new-context protocol 0.955 -> 0.901
on known targets: a sibling question's loadings paired with another question's answers mislead the group's
factors.) Otherwise the question stays new (the text prior).

Options are paired by meaning, not position: a user may list a known question's options in another order ("It can be
different from the sex assigned at birth" first where the survey lists "determined by the sex assigned at birth"
first). When the matcher stores option vectors (each bank option's text alone, by the same encoder), each new
option takes the bank option of the assignment that maximises the summed cosine similarity (`QuestionMatcher.rows`);
without them, options pair in order. Borrowing by position inverted that question's answer.

The threshold is chosen on the training side (service.training.matching): the similarity above which a training
question's nearest *other* training question gives better prior features than its out-of-fold text estimate. The
survey's own near-duplicates (the same question in several waves, families of questions on one template) decide it;
no rewording does.

Soft borrowing (`BlendRule`, optional): a question the threshold leaves new, or with a rule that takes the threshold's
place every question outside the bank, gets its text estimate blended with a similarity-weighted mean of its k
nearest bank questions' priors (same option count, options paired as above), the more the nearer the nearest one is.
A hard threshold gives a question one sibling's answer pattern or none; near siblings of a new question often answer
alike only on average, and the average of several is a better estimate than any one of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

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


EXACT_UP_TO = 7  # options: the best assignment is found among all permutations up to here (7! = 5,040), greedily beyond


@cache
def _permutations(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)


def best_assignment(sim: np.ndarray) -> np.ndarray:
    """For a square similarity matrix [asked, bank]: the bank index of each asked option in the one-to-one pairing of
    maximal summed similarity (exact up to EXACT_UP_TO options; beyond, the most similar pair first, repeatedly).
    Ties go to the order given (the identity first)."""
    n = sim.shape[0]
    if n <= EXACT_UP_TO:
        perms = _permutations(n)
        return perms[int(np.argmax(sim[np.arange(n), perms].sum(axis=1)))].copy()
    out = np.full(n, -1, dtype=np.int64)
    free = sim.astype(np.float64).copy()
    for _ in range(n):
        i, j = np.unravel_index(int(np.argmax(free)), free.shape)
        out[i] = j
        free[i, :], free[:, j] = -np.inf, -np.inf
    return out


def option_text(option: str) -> str:
    """The line an option is paired by: its own text."""
    return option.strip()


# how a trainer chooses soft borrowing: "off"; "below" the threshold only; "all" in place of the threshold; "split":
# as "all", with the mean column's and the loadings' shares chosen apart; "banded": as "all", with one share per band
# of the nearest one's similarity (BAND_EDGES) instead of one ramp
BLEND_MODES = ("off", "below", "all", "split", "contrast", "banded")
BAND_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9)  # "banded": bands below 0.5, 0.5-0.6, ..., 0.9 and above


@dataclass(frozen=True)
class BlendRule:
    """How much a new question's prior leans on its `k` nearest bank questions (same option count): weights
    softmax(beta * similarity) over them, and a share lam * clip((s1 - floor) / span, 0, 1) of the result beside the
    text estimate, s1 the nearest one's similarity. With `lam_loadings`, the loadings take their own share (the mean
    column keeps lam): what neighbours say about the population's answer and about how groups differ on it need not
    be equally trustworthy. With `bands` ((lo, hi, share), ...), the share is the band's of s1, whatever the column
    (neighbours at middling similarity can be worse than the text estimate where both weak ones, mixed, beat either).
    Chosen on training questions (service.training.matching)."""

    k: int
    beta: float
    lam: float
    floor: float = 0.5
    span: float = 0.4
    lam_loadings: float | None = None  # None: the loadings take lam, as the mean does
    bands: tuple[tuple[float, float, float], ...] | None = None

    def share(self, top: float, loadings: bool = False) -> float:
        if self.bands is not None:
            return next((float(s) for lo, hi, s in self.bands if lo <= top < hi), 0.0)
        lam = self.lam_loadings if loadings and self.lam_loadings is not None else self.lam
        return float(lam * np.clip((top - self.floor) / self.span, 0.0, 1.0))

    def weights(self, sims: np.ndarray) -> np.ndarray:
        w = np.exp(self.beta * (np.asarray(sims, np.float64) - np.max(sims)))
        return w / w.sum()

    def mix(self, text: np.ndarray, near: np.ndarray, top: float) -> np.ndarray:
        """[n, 1 + k] the text estimate's columns (mean, loadings) blended with the neighbours' weighted `near`
        [n, 1 + k], the nearest one at similarity `top`."""
        shares = np.full(np.shape(text)[1], self.share(top, loadings=True))
        shares[0] = self.share(top)
        return (1.0 - shares) * np.asarray(text, np.float64) + shares * np.asarray(near, np.float64)

    def to_array(self) -> np.ndarray:
        lam_l = self.lam if self.lam_loadings is None else self.lam_loadings
        bands = [x for band in self.bands or () for x in band]  # (lo, hi, share) triples after the six
        return np.array([self.k, self.beta, self.lam, self.floor, self.span, lam_l, *bands], dtype=np.float64)

    @classmethod
    def from_array(cls, values: np.ndarray) -> BlendRule:
        v = [float(x) for x in np.asarray(values).reshape(-1)]
        k, beta, lam, floor, span = v[:5]
        lam_l = v[5] if len(v) > 5 and v[5] != lam else None  # checkpoints before lam_loadings store five
        rest = v[6:]
        bands = tuple((rest[i], rest[i + 1], rest[i + 2]) for i in range(0, len(rest), 3)) if rest else None
        return cls(int(k), beta, lam, floor, span, lam_l, bands)


def blend_targets(text: np.ndarray, lent: Sequence[np.ndarray], sims: np.ndarray, rule: BlendRule) -> np.ndarray:
    """[n, 1 + k] the blended estimate of one question's prior columns (mean, loadings): `text` [n, 1 + k] mixed
    (BlendRule.mix) with the weighted mean of the neighbours' `lent` [n, 1 + k] each, nearest first with similarities
    `sims`."""
    if not len(lent):
        return np.asarray(text, np.float64)
    near = np.tensordot(rule.weights(sims), np.stack(lent).astype(np.float64), axes=1)
    return rule.mix(text, near, float(sims[0]))


@dataclass(frozen=True)
class QuestionMatcher:
    """The bank's question vectors, each question's first prior row and option count, the threshold, and optionally
    the vectors of every bank option (question by question in bank order, options in prior-row order)."""

    vectors: np.ndarray  # [Qb, d] unit vectors
    starts: np.ndarray  # [Qb] int: the question's first row in the prior (its options are the next n rows)
    n_options: np.ndarray  # [Qb] int
    threshold: float
    option_vectors: np.ndarray | None = None  # [sum(n_options), d] unit vectors of option_text, or None
    # Soft borrowing below the threshold (BlendRule): a question no bank question matches takes a similarity-weighted
    # share of its nearest bank questions' priors beside its text estimate; None: the text estimate alone.
    blend: BlendRule | None = None

    def __post_init__(self) -> None:
        if self.option_vectors is not None:
            assert len(self.option_vectors) == int(np.sum(self.n_options)), "one vector per bank option"
        object.__setattr__(self, "_offsets", np.concatenate([[0], np.cumsum(self.n_options)]).astype(np.int64))

    def nearest_many(self, vectors: np.ndarray, n_options: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """For each question (unit vector [m, d], its option count): the bank index of its match (-1: none) and the
        similarity of the nearest bank question with that many options (-inf when there is none)."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.vectors.shape[1])
        n = np.asarray(n_options, dtype=np.int64)
        if len(self.vectors) == 0:
            return np.full(len(n), -1, dtype=np.int64), np.full(len(n), -np.inf)
        sim = np.where(n[:, None] == self.n_options[None, :], vectors @ self.vectors.T, -np.inf)  # [m, Qb]
        best = np.argmax(sim, axis=1)
        top = sim[np.arange(len(n)), best]
        return np.where(top >= self.threshold, best, -1).astype(np.int64), top.astype(np.float64)

    def match_many(self, vectors: np.ndarray, n_options: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """As `nearest_many`, with the first prior row of the match (-1: none) in place of its bank index."""
        index, top = self.nearest_many(vectors, n_options)
        starts = np.full(len(index), -1, dtype=np.int64)
        starts[index >= 0] = self.starts[index[index >= 0]]
        return starts, top

    def neighbours(self, vector: np.ndarray, n_options: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The bank indices of the `k` bank questions with `n_options` options nearest `vector` (nearest first) and
        their similarities."""
        same = np.flatnonzero(self.n_options == n_options)
        if len(same) == 0 or k < 1:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        sims = self.vectors[same] @ np.asarray(vector, np.float32).reshape(-1)
        order = np.argsort(-sims, kind="stable")[:k]
        return same[order].astype(np.int64), sims[order].astype(np.float64)

    def blended_features(
        self, prior: PopulationPrior, text: np.ndarray, vector: np.ndarray, option_vectors: np.ndarray | None
    ) -> np.ndarray:
        """[n, 2 + k] a new question's prior features: its text features `text` [n, 2 + k] (flag, mean, loadings)
        blended with its nearest bank questions' (BlendRule; flag kept TEXT_FLAG). Without a rule: `text`."""
        if self.blend is None:
            return text
        index, sims = self.neighbours(vector, len(text), self.blend.k)
        lent = [prior.features(self.rows(int(j), option_vectors))[:, 1:] for j in index]
        out = np.array(text, dtype=np.float32, copy=True)
        out[:, 1:] = blend_targets(text[:, 1:], lent, sims, self.blend)
        return out

    def rows(self, index: int, option_vectors: np.ndarray | None) -> np.ndarray:
        """The prior rows bank question `index` lends to a question whose options have unit vectors
        `option_vectors` [n, d] (option_text), one per option in the asker's order: the assignment of maximal summed
        similarity, or the bank's order when either side has no option vectors."""
        n = int(self.n_options[index])
        start = int(self.starts[index])
        if self.option_vectors is None or option_vectors is None:
            return np.arange(start, start + n)
        own = self.option_vectors[self._offsets[index] : self._offsets[index] + n]
        sim = np.asarray(option_vectors, np.float64).reshape(n, -1) @ own.T.astype(np.float64)  # [asked, bank]
        return start + best_assignment(sim)

    def match(self, vector: np.ndarray, n_options: int, option_vectors: np.ndarray | None = None) -> np.ndarray | None:
        """The prior rows of the matched bank question's options, paired with the asker's options, or None."""
        (index,), _ = self.nearest_many(np.asarray(vector)[None, :], [n_options])
        return None if index < 0 else self.rows(int(index), option_vectors)

    def to_checkpoint(self) -> dict[str, np.ndarray]:
        """The arrays a checkpoint stores."""
        out = {
            "match_vectors": np.ascontiguousarray(self.vectors, dtype=np.float32),
            "match_starts": np.asarray(self.starts, dtype=np.int64),
            "match_n_options": np.asarray(self.n_options, dtype=np.int64),
            "match_threshold": np.array([self.threshold], dtype=np.float64),
        }
        if self.option_vectors is not None:
            out["match_option_vectors"] = np.ascontiguousarray(self.option_vectors, dtype=np.float32)
        if self.blend is not None:
            out["match_blend"] = self.blend.to_array()
        return out

    @classmethod
    def from_checkpoint(cls, extra: Mapping[str, np.ndarray]) -> QuestionMatcher | None:
        """The matcher a checkpoint stores, or None when it stores none (option vectors: optional)."""
        if not {"match_vectors", "match_starts", "match_n_options", "match_threshold"} <= set(extra):
            return None
        options = extra.get("match_option_vectors")
        blend = None
        if "match_blend" in extra:
            blend = BlendRule.from_array(extra["match_blend"])
        return cls(
            np.asarray(extra["match_vectors"], np.float32),
            np.asarray(extra["match_starts"], np.int64),
            np.asarray(extra["match_n_options"], np.int64),
            float(np.asarray(extra["match_threshold"]).reshape(-1)[0]),
            None if options is None else np.asarray(options, np.float32),
            blend,
        )
