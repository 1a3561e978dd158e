"""Wire models of the public API (pydantic; no torch, no ORM) and the request limits that come from settings."""

from __future__ import annotations

import math
import unicodedata
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    pass

# letters, digits and _ . : - (1 to 128), but not "." or ".." (a URL normaliser removes those path segments, so a
# client that normalises URLs could never reach such a group). No lookahead: the pattern is for the Rust regex too.
GROUP_ID_PATTERN = (
    r"^([A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,127}|\.[A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,126}|\.\.[A-Za-z0-9_.:-]{1,126})$"
)
DISTRIBUTION_TOLERANCE = 1e-3  # |sum - 1| accepted for a distribution (then renormalised exactly)
# 2^53 - 1: the largest integer every JSON parser reads exactly (a float64 holds it), so the documented bound is the
# bound a client reads
MAX_SEED = 2**53 - 1

GroupId = Annotated[str, StringConstraints(pattern=GROUP_ID_PATTERN)]


def printable_text(value: str) -> str:
    """The text policy of every text field: no lone surrogate (not Unicode text: no database stores it the same) and
    no control character but tab, line feed and carriage return (NUL above all: Postgres refuses it, SQLite keeps
    it). The error names the character by its code point, never echoes it."""
    for i, ch in enumerate(value):
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            raise PydanticCustomError(
                "text_surrogate",
                "contains a lone surrogate (U+{code}) at position {position}: not Unicode text",
                {"code": f"{code:04X}", "position": i},
            )
        if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r":
            raise PydanticCustomError(
                "text_control",
                "contains the control character U+{code} at position {position}; only tab, line feed and carriage "
                "return are allowed",
                {"code": f"{code:04X}", "position": i},
            )
    return value


def without_unprintable(value: str) -> str:
    """`value` without the characters the text policy refuses (what the service itself writes, e.g. sampled
    responses, is then text a caller can send back)."""
    return "".join(
        ch
        for ch in value
        if not (0xD800 <= ord(ch) <= 0xDFFF or (unicodedata.category(ch) == "Cc" and ch not in "\t\n\r"))
    )


# Stripped: the prompt template strips questions and options anyway, so " Yes" and "Yes" are one option.
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1), AfterValidator(printable_text)]
MAX_COUNT = 1e15  # bounds keep every sum of a request finite (no overflow to inf on huge inputs)
MAX_ORDINAL = 1e9
# strict: a JSON boolean is not a number (lax pydantic reads true as 1); integers are numbers
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False, strict=True)]
Count = Annotated[float, Field(ge=0.0, le=MAX_COUNT, allow_inf_nan=False, strict=True)]
Ordinal = Annotated[float, Field(ge=-MAX_ORDINAL, le=MAX_ORDINAL, allow_inf_nan=False, strict=True)]


# ---------------------------------------------------------------------------------------------- requests


class QuestionIn(BaseModel):
    """A multiple-choice question: its text and its options (non-empty, unique)."""

    model_config = ConfigDict(extra="forbid")

    question: Text
    options: list[Text] = Field(min_length=1)

    @field_validator("options")
    @classmethod
    def _unique_options(cls, options: list[str]) -> list[str]:
        seen: set[str] = set()
        for option in options:
            if option in seen:
                raise PydanticCustomError(
                    "duplicate_option", "options must be unique: '{option}' appears twice", {"option": option}
                )
            seen.add(option)
        return options


def _check_length(values: list[float] | None, info: ValidationInfo) -> None:
    options = info.data.get("options")  # absent when the options themselves were invalid
    if values is not None and options is not None and len(values) != len(options):
        raise PydanticCustomError(
            "length_mismatch",
            "{field} has {got} values for {n} options",
            {"field": info.field_name, "got": len(values), "n": len(options)},
        )


class ContextItemIn(QuestionIn):
    """A question the group answered: exactly one of `distribution` (sums to 1) or `counts` (normalised)."""

    kind: Literal["choice"] = Field("choice", description="a multiple-choice item (the default kind)")
    distribution: list[Probability] | None = None
    counts: list[Count] | None = None
    ordinals: list[Ordinal] | None = Field(None, description="numeric value of each option, for ordinal scales")

    @field_validator("distribution")
    @classmethod
    def _distribution_sums_to_one(cls, values: list[float] | None, info: ValidationInfo) -> list[float] | None:
        _check_length(values, info)
        if values is not None:
            total = math.fsum(values)
            if abs(total - 1.0) > DISTRIBUTION_TOLERANCE:
                raise PydanticCustomError(
                    "distribution_sum",
                    "distribution must sum to 1 (within {tol}), got {total}",
                    {"tol": DISTRIBUTION_TOLERANCE, "total": total},
                )
        return values

    @field_validator("counts")
    @classmethod
    def _counts_have_a_total(cls, values: list[float] | None, info: ValidationInfo) -> list[float] | None:
        _check_length(values, info)
        if values is not None and math.fsum(values) <= 0.0:
            raise PydanticCustomError("counts_zero", "counts must not all be zero")
        return values

    @field_validator("ordinals")
    @classmethod
    def _ordinals_match(cls, values: list[float] | None, info: ValidationInfo) -> list[float] | None:
        _check_length(values, info)
        return values

    @model_validator(mode="after")
    def _one_of_distribution_or_counts(self) -> ContextItemIn:
        if (self.distribution is None) == (self.counts is None):
            raise PydanticCustomError("distribution_or_counts", "give exactly one of 'distribution' or 'counts'")
        return self

    def probabilities(self) -> list[float]:
        """The group's distribution over the options, summing to 1 exactly (counts normalised)."""
        values = self.distribution if self.distribution is not None else self.counts
        assert values is not None, "validated: one of distribution / counts is set"
        total = math.fsum(values)
        return [v / total for v in values]


class RatingItemIn(BaseModel):
    """A score the group (or person) gave one response to a prompt, on a declared scale."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["rating"]
    prompt: Text
    response: Text
    score: Ordinal
    scale: tuple[Ordinal, Ordinal] = Field(description="(lowest, highest) possible score, e.g. [1, 5]")

    @model_validator(mode="after")
    def _score_on_its_scale(self) -> RatingItemIn:
        lo, hi = self.scale
        if not lo < hi:
            raise PydanticCustomError("scale_order", "scale must be [lowest, highest] with lowest < highest")
        if not lo <= self.score <= hi:
            raise PydanticCustomError(
                "score_outside_scale",
                "score {score} is outside the scale [{lo}, {hi}]",
                {"score": self.score, "lo": lo, "hi": hi},
            )
        return self

    def normalized(self) -> float:
        lo, hi = self.scale
        return (self.score - lo) / (hi - lo)


class ComparisonItemIn(BaseModel):
    """A choice between two responses to a prompt: `preferred` ("a" or "b"), or the probability that a is."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["comparison"]
    prompt: Text
    response_a: Text
    response_b: Text
    preferred: Literal["a", "b"] | None = None
    probability_a: Probability | None = Field(None, description="share of the group preferring a")

    @model_validator(mode="after")
    def _two_responses_one_answer(self) -> ComparisonItemIn:
        if self.response_a == self.response_b:
            raise PydanticCustomError("same_responses", "response_a and response_b must differ")
        if (self.preferred is None) == (self.probability_a is None):
            raise PydanticCustomError("preferred_or_probability", "give exactly one of 'preferred' or 'probability_a'")
        return self

    def probability(self) -> float:
        if self.probability_a is not None:
            return float(self.probability_a)
        return 1.0 if self.preferred == "a" else 0.0


def _item_kind(value: Any) -> str:
    """The kind tag of a context item (choice when the field is absent)."""
    if isinstance(value, dict):
        kind = value.get("kind", "choice")
        return kind if isinstance(kind, str) else "invalid"
    return str(getattr(value, "kind", "choice"))


AnyContextItem = Annotated[
    Annotated[ContextItemIn, Tag("choice")]
    | Annotated[RatingItemIn, Tag("rating")]
    | Annotated[ComparisonItemIn, Tag("comparison")],
    Discriminator(_item_kind),
]
ITEM_KINDS = ("choice", "rating", "comparison")


class ContextWriteRequest(BaseModel):
    """`POST /groups/{group_id}/context`: append items to the group's context, or replace it."""

    # The schema says what the validator below enforces: appending (the default mode, also when `mode` is absent)
    # needs at least one item; only a replace may send [] (it empties the context).
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "if": {"properties": {"mode": {"const": "append"}}},
            "then": {"properties": {"items": {"minItems": 1}}},
        },
    )

    mode: Literal["append", "replace"] = "append"
    items: list[AnyContextItem] = Field(
        description="at least one, except for a replace that empties the context; all of one kind, the group's"
    )
    expected_version: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        strict=True,
        description="write only if the group is at this version (0: not created yet); otherwise 409, nothing stored",
    )

    @field_validator("items")
    @classmethod
    def _items_unless_emptying(cls, items: list[Any], info: ValidationInfo) -> list[Any]:
        if not items and info.data.get("mode") == "append":
            raise PydanticCustomError("too_short", "appending needs at least one item (replace with [] empties)")
        kinds = sorted({item.kind for item in items})
        if len(kinds) > 1:
            raise PydanticCustomError(
                "mixed_kinds", "items of one write must be of one kind, got {kinds}", {"kinds": ", ".join(kinds)}
            )
        return items

    @property
    def kind(self) -> str | None:
        """The kind of the items (None for a replace that empties the context)."""
        return self.items[0].kind if self.items else None


class ResponseIn(BaseModel):
    """A response to a prompt, to be scored for a rating group."""

    model_config = ConfigDict(extra="forbid")

    prompt: Text
    response: Text


class PairIn(BaseModel):
    """Two responses to a prompt, for a comparison group: which one would it prefer?"""

    model_config = ConfigDict(extra="forbid")

    prompt: Text
    response_a: Text
    response_b: Text


class PredictRequest(BaseModel):
    """`POST /predict`: a stored group (`group_id`) or an inline `context`, and what to predict: `questions`
    (multiple-choice groups), `responses` (rating groups: a predicted score per response) or `pairs` (comparison
    groups: the probability that the group prefers response a)."""

    model_config = ConfigDict(extra="forbid")

    group_id: GroupId | None = None
    context: list[ContextItemIn] | None = Field(None, min_length=1)
    questions: list[QuestionIn] | None = Field(None, min_length=1)
    responses: list[ResponseIn] | None = Field(None, min_length=1, description="for a rating group (group_id)")
    pairs: list[PairIn] | None = Field(None, min_length=1, description="for a comparison group (group_id)")

    @model_validator(mode="after")
    def _one_of_group_or_context(self) -> PredictRequest:
        if (self.group_id is None) == (self.context is None):
            raise PydanticCustomError("group_or_context", "give exactly one of 'group_id' or 'context'")
        if sum(t is not None for t in (self.questions, self.responses, self.pairs)) != 1:
            raise PydanticCustomError("targets", "give exactly one of 'questions', 'responses' or 'pairs'")
        if (self.responses is not None or self.pairs is not None) and self.context is not None:
            raise PydanticCustomError("inline_kind", "'responses' and 'pairs' are predicted for a stored group")
        return self


class GenerateRequest(BaseModel):
    """`POST /generate`: sample n responses to a prompt and rank them by the group's preference."""

    model_config = ConfigDict(extra="forbid")

    group_id: GroupId
    prompt: Text
    n: int = Field(4, ge=1, le=16, strict=True, description="distinct responses wanted")
    max_new_tokens: int = Field(64, ge=1, le=512, strict=True)
    temperature: float = Field(
        0.8, ge=0.0, le=2.0, strict=True, description="0 (or below 1e-4) is greedy: one distinct response"
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, strict=True, description="a fixed seed gives the same answer")


# ---------------------------------------------------------------------------------------------- responses


class ContextWriteResponse(BaseModel):
    group_id: str
    version: int
    size: int = Field(description="number of context items")


class GroupOut(BaseModel):
    group_id: str
    kind: str
    size: int
    version: int
    created_at: datetime
    updated_at: datetime


class GroupList(BaseModel):
    groups: list[GroupOut]
    limit: int
    offset: int


class ContextItemOut(BaseModel):
    """A stored item. Choice: a question, its options and the distribution. Rating: question = the prompt,
    options = [the response], distribution = [the score normalised to 0..1], with `score` and `scale`.
    Comparison: question = the prompt, options = [response_a, response_b], distribution = [P(a), P(b)]."""

    id: int
    kind: str = "choice"
    question: str
    options: list[str]
    distribution: list[float]
    ordinals: list[float] | None
    score: float | None = None
    scale: list[float] | None = None


class GroupContext(BaseModel):
    group_id: str
    version: int
    size: int
    items: list[ContextItemOut]


BasisName = Literal["known", "reworded", "borrowed", "text", "none"]
BASIS_DESCRIPTION = (
    "what the question's population prior comes from, which decides how far the prediction is the group's own "
    "(README, 'What to expect'): known (a question of the checkpoint's training survey, same text and options: the "
    "group's own answer closely), reworded (near enough one known question to take its prior), borrowed (a new "
    "question leaning on its nearest known questions, by `borrowed_share`), text (a new question read from its text "
    "alone: groups differ least), none (the checkpoint has no prior)"
)
NEAREST_DESCRIPTION = (
    "cosine similarity of the nearest known question with as many options (the checkpoint's question encoder, "
    "all-MiniLM-L6-v2 for the shipped one); null for a known question or without a matcher"
)
SHARE_DESCRIPTION = "basis 'borrowed': the share of the nearest known questions' loadings in the prior, 0 to 1"


class Prediction(BaseModel):
    distribution: list[float] = Field(description="one probability per option, summing to 1")
    std: list[float] = Field(description="the model's standard deviation of each probability")
    basis: BasisName = Field(description=BASIS_DESCRIPTION)
    nearest_similarity: float | None = Field(None, description=NEAREST_DESCRIPTION)
    borrowed_share: float | None = Field(None, description=SHARE_DESCRIPTION)


class RatingPrediction(BaseModel):
    score: float = Field(description="the group's predicted score on its items' scale")
    std: float = Field(description="the model's standard deviation of the score, on the same scale")


class PairPrediction(BaseModel):
    probability_a: float = Field(description="the probability that the group prefers response a to response b")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per question, in request order (questions)")
    scores: list[RatingPrediction] | None = Field(None, description="one per response, in request order (responses)")
    preferences: list[PairPrediction] | None = Field(None, description="one per pair, in request order (pairs)")
    model_version: str
    context_version: int | None = Field(description="the group's context version; null for an inline context")


class ScoredResponse(BaseModel):
    text: str
    score: float = Field(
        description="choice group: GPO's probability that the group prefers this response among them; "
        "rating group: the group's predicted score on its scale; comparison group: the response's mean predicted "
        "win rate against the other samples"
    )


class GenerateResponse(BaseModel):
    responses: list[ScoredResponse] = Field(description="distinct responses, best first")
    model_version: str
    context_version: int
    n_sampled: int = Field(description="samples drawn; more than len(responses) when duplicates were dropped")
    basis: BasisName | None = Field(
        None,
        description="choice groups: the prompt with its responses as one question's options, as /predict reports "
        f"it; null for rating and comparison groups. {BASIS_DESCRIPTION}",
    )
    nearest_similarity: float | None = Field(None, description=f"choice groups: {NEAREST_DESCRIPTION}")
    borrowed_share: float | None = Field(None, description=f"choice groups: {SHARE_DESCRIPTION}")


class ErrorResponse(BaseModel):
    """Every error answer: FastAPI's shape. A string, or for validation errors a list of {loc, msg, type}."""

    detail: str | list[dict[str, Any]]


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str]
