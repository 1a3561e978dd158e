"""Request limits from settings: they vary per deployment, so they are checked after pydantic's (static) validation
and answered with the same 422 shape, naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.schemas import ContextWriteRequest, GenerateRequest, PredictRequest, QuestionIn

if TYPE_CHECKING:
    from service.config import Settings


class RequestLimitError(ValueError):
    """A request past a configured limit; `errors` are pydantic-style ({loc, msg, type}), answered as 422."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def _error(loc: tuple[str | int, ...], msg: str, kind: str = "too_long") -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc], "msg": msg}


@dataclass(frozen=True)
class Limits:
    """Request limits from settings (they vary per deployment, so they are checked after pydantic's)."""

    max_items_per_request: int
    max_context_items: int
    max_questions_per_request: int
    max_options: int
    max_text_chars: int
    max_generate_n: int
    max_new_tokens: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_items_per_request=settings.max_items_per_request,
            max_context_items=settings.max_context_items,
            max_questions_per_request=settings.max_questions_per_request,
            max_options=settings.max_options,
            max_text_chars=settings.max_text_chars,
            max_generate_n=settings.max_generate_n,
            max_new_tokens=settings.max_new_tokens,
        )

    def _text(self, loc: tuple[str | int, ...], text: str) -> list[dict[str, Any]]:
        if len(text) > self.max_text_chars:
            return [_error(loc, f"at most {self.max_text_chars} characters, got {len(text)}")]
        return []

    def _questions_at(self, field: str, i: int, q: QuestionIn) -> list[dict[str, Any]]:
        errors = self._text((field, i, "question"), q.question)
        if len(q.options) > self.max_options:
            errors.append(_error((field, i, "options"), f"at most {self.max_options} options, got {len(q.options)}"))
        for j, option in enumerate(q.options):
            errors += self._text((field, i, "options", j), option)
        return errors

    def _questions(self, field: str, questions: list[QuestionIn], max_count: int) -> list[dict[str, Any]]:
        if len(questions) > max_count:
            return [_error((field,), f"at most {max_count} per request, got {len(questions)}")]
        errors = []
        for i, q in enumerate(questions):
            errors += self._questions_at(field, i, q)
        return errors

    def check_context_write(self, body: ContextWriteRequest) -> None:
        if len(body.items) > self.max_items_per_request:
            raise RequestLimitError(
                [_error(("items",), f"at most {self.max_items_per_request} per request, got {len(body.items)}")]
            )
        choices = [(i, item) for i, item in enumerate(body.items) if isinstance(item, QuestionIn)]
        errors = []
        for i, q in choices:
            errors += self._questions_at("items", i, q)
        for i, item in enumerate(body.items):
            for field in ("prompt", "response", "response_a", "response_b"):
                if isinstance(getattr(item, field, None), str):
                    errors += self._text(("items", i, field), getattr(item, field))
        if errors:
            raise RequestLimitError(errors)

    def check_context_size(self, size: int) -> None:
        """After a write: the group's context must stay within `max_context_items`."""
        if size > self.max_context_items:
            raise RequestLimitError(
                [_error(("items",), f"a group holds at most {self.max_context_items} items; this write makes {size}")]
            )

    def check_predict(self, body: PredictRequest) -> None:
        errors = self._questions("questions", list(body.questions or []), self.max_questions_per_request)
        responses = body.responses or []
        if len(responses) > self.max_questions_per_request:
            errors.append(
                _error(("responses",), f"at most {self.max_questions_per_request} per request, got {len(responses)}")
            )
        for i, r in enumerate(responses):
            errors += self._text(("responses", i, "prompt"), r.prompt) + self._text(
                ("responses", i, "response"), r.response
            )
        if body.context is not None:
            errors += self._questions("context", list(body.context), self.max_items_per_request)
        pairs = body.pairs or []
        if len(pairs) > self.max_questions_per_request:
            errors.append(_error(("pairs",), f"at most {self.max_questions_per_request} per request, got {len(pairs)}"))
        for i, pr in enumerate(pairs):
            for field in ("prompt", "response_a", "response_b"):
                errors += self._text(("pairs", i, field), getattr(pr, field))
        if errors:
            raise RequestLimitError(errors)

    def check_generate(self, body: GenerateRequest) -> None:
        errors = self._text(("prompt",), body.prompt)
        if body.n > self.max_generate_n:
            errors.append(_error(("n",), f"at most {self.max_generate_n}, got {body.n}", "less_than_equal"))
        if body.max_new_tokens > self.max_new_tokens:
            errors.append(
                _error(
                    ("max_new_tokens",), f"at most {self.max_new_tokens}, got {body.max_new_tokens}", "less_than_equal"
                )
            )
        if errors:
            raise RequestLimitError(errors)
