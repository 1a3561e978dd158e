"""Prior features of choice questions outside a checkpoint's prior bank (no web, no database), and what each
question's prior comes from (PriorBasis, which /predict reports).

A question in the bank (same text and options) has its own prior. One outside it, when the checkpoint stores a
matcher and a question encoder is attached, takes a known question's prior when it is near enough one (a rewording:
the matcher's threshold) or blends its nearest known questions' priors into its text estimate (soft borrowing); else
its prior is read from its options' text (the text prior), or it has none (service.gpo.matching, service.gpo.features).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from service.gpo.checkpoint import PriorBank
from service.gpo.features import TextPrior
from service.gpo.matching import QuestionMatcher, borrowed_features, match_text, option_text
from service.gpo.prior import question_key

MATCH_CACHE_ITEMS = 20_000  # questions whose match (or its absence) is remembered


@dataclass(frozen=True)
class PriorBasis:
    """What a choice question's prior features come from, which is what decides how far its prediction is the group's
    own (README, "What to expect"): `known` (the question is in the checkpoint's prior bank), `reworded` (outside it,
    near enough one known question to take that question's prior: the matcher's threshold), `borrowed` (outside
    it, a share of its nearest known questions' priors blended with its text estimate: soft borrowing), `text` (its
    text estimate alone) or `none` (no prior features at all)."""

    source: str
    similarity: float | None = None  # the nearest known question's (the matcher's vectors); None without a matcher
    share: float | None = None  # `borrowed`: the neighbours' share of the loadings


class NewQuestionPriors:
    """A choice checkpoint's bank, matcher and text prior; matches are cached per question (a question asked again
    costs a dictionary lookup, not encoder calls and a bank scan)."""

    def __init__(self, bank: PriorBank, matcher: QuestionMatcher | None, text_prior: TextPrior | None) -> None:
        self.bank, self.matcher, self.text_prior = bank, matcher, text_prior
        self.encoder: Callable[[str], np.ndarray] | None = None
        self._match_rows = functools.lru_cache(maxsize=MATCH_CACHE_ITEMS)(self._matched_rows)
        self._blend_plans = functools.lru_cache(maxsize=MATCH_CACHE_ITEMS)(self._blend_planned)

    def use_encoder(self, encode: Callable[[str], np.ndarray] | None) -> None:
        """Match questions with `encode` (a `match_text` line -> its unit vector); matches made before are forgotten."""
        self.encoder = encode
        self._match_rows.cache_clear()
        self._blend_plans.cache_clear()

    def known_rows(self, question: str, options: Sequence[str]) -> np.ndarray | None:
        return self.bank.lookup(question_key(question, options), len(options))

    def features(self, question: str, options: Sequence[str], emb: np.ndarray | None) -> np.ndarray:
        """[n, 2 + k] prior features of a question outside the bank (`emb`: its options' embeddings, or None)."""
        borrowed = self.matched_rows(question, options)
        if borrowed is not None:  # a rewording of a known question (service.gpo.matching)
            return borrowed_features(self.bank.prior, borrowed)
        if self.text_prior is None or emb is None:
            return np.zeros((len(options), 2 + self.bank.prior.rank), np.float32)
        prior = self.text_prior.question_features(emb)
        plan = self.blend_plan(question, options)
        if plan is not None:  # soft borrowing (service.gpo.matching.blend_targets, cached per question)
            assert self.matcher is not None and self.matcher.blend is not None
            top, near = plan
            prior[:, 1:] = self.matcher.blend.mix(prior[:, 1:], near, top)
        return prior

    def basis(self, question: str, options: Sequence[str], uses_embedding: bool) -> PriorBasis:
        """What the question's prior features come from, as `features` decides it (and from the same cached lookups:
        after a prediction of the question it costs no encoder call)."""
        if self.known_rows(question, options) is not None:
            return PriorBasis("known")
        similarity = None
        if self.matcher is not None and self.encoder is not None:
            rows, top = self._match_rows(match_text(question, options), tuple(options))
            similarity = top if np.isfinite(top) else None
            if rows is not None:
                return PriorBasis("reworded", similarity)
        if self.text_prior is None or not uses_embedding:
            return PriorBasis("none", similarity)
        plan = self.blend_plan(question, options)
        if plan is not None:
            assert self.matcher is not None and self.matcher.blend is not None
            share = self.matcher.blend.share(plan[0], loadings=True)
            if share > 0:
                return PriorBasis("borrowed", similarity, share)
        return PriorBasis("text", similarity)

    def matched_rows(self, question: str, options: Sequence[str]) -> np.ndarray | None:
        """The bank rows of the known question this one borrows its prior from, one per option in the asker's order
        (service.gpo.matching), or None."""
        if self.matcher is None or self.encoder is None:
            return None
        rows, _ = self._match_rows(match_text(question, options), tuple(options))
        return None if rows is None else np.asarray(rows, dtype=np.int64)

    def blend_plan(self, question: str, options: Sequence[str]) -> tuple[float, np.ndarray] | None:
        """When the matcher borrows softly (BlendRule): the similarity of the question's nearest bank question and
        their weighted prior columns [n, 1 + k] (mean, loadings; options paired with the asker's), cached per
        question: a question asked again costs a lookup and one blend."""
        if self.matcher is None or self.matcher.blend is None or self.encoder is None:
            return None
        return self._blend_plans(match_text(question, options), tuple(options))

    def _vectors(self, text: str, options: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """The question's match vector and, when the matcher pairs options by meaning, its options' vectors. An
        encoder that embeds many texts at once (`.many`) gets the question and its options in one batch: on a CPU a
        batch of a few short texts costs what one does."""
        assert self.matcher is not None and self.encoder is not None
        option_texts = [option_text(o) for o in options]
        if self.matcher.option_vectors is None:
            return self.encoder(text), None
        many = getattr(self.encoder, "many", None)
        if many is not None:
            vectors = many([text, *option_texts])
            return vectors[0], vectors[1:]
        return self.encoder(text), np.stack([self.encoder(t) for t in option_texts])

    def _blend_planned(self, text: str, options: tuple[str, ...]) -> tuple[float, np.ndarray]:
        assert self.matcher is not None and self.matcher.blend is not None
        rule, prior = self.matcher.blend, self.bank.prior
        question, option_vectors = self._vectors(text, options)
        index, sims = self.matcher.neighbours(question, len(options), rule.k)
        if len(index) == 0:
            return -np.inf, np.zeros((len(options), 1 + prior.rank))
        lent = np.stack([prior.features(self.matcher.rows(int(j), option_vectors))[:, 1:] for j in index])
        near = np.tensordot(rule.weights(sims), lent.astype(np.float64), axes=1)
        near.setflags(write=False)
        return float(sims[0]), near

    def _matched_rows(self, text: str, options: tuple[str, ...]) -> tuple[tuple[int, ...] | None, float]:
        """The borrowed rows of the question `text` (a `match_text` line) with these options, and the similarity of
        its nearest bank question (-inf: none with as many options); cached in `_match_rows`."""
        assert self.matcher is not None and self.encoder is not None
        wants_options = self.matcher.option_vectors is not None
        option_texts = [option_text(o) for o in options]
        many = getattr(self.encoder, "many", None)
        if many is not None and wants_options:
            vectors = many([text, *option_texts])
            question, option_vectors = vectors[0], vectors[1:]
        else:  # without `.many`, the options are encoded only for a match
            question, option_vectors = self.encoder(text), None
        (index,), (similarity,) = self.matcher.nearest_many(question[None, :], [len(options)])
        if index < 0:
            return None, float(similarity)
        if wants_options and option_vectors is None:
            option_vectors = np.stack([self.encoder(t) for t in option_texts])
        return tuple(int(r) for r in self.matcher.rows(int(index), option_vectors)), float(similarity)
