"""Versioned prompt templates that turn a question + option (or prompt + response) into the text we embed.

The version string is part of every embedding cache key: change a template, bump its version.

Multiple choice, `TEMPLATE_VERSION = "gpo-mc-v1"` (the GPO paper's prompt). For the question
"Is X good?" with options ["Yes", "No"], `format_item(q, options, 1)` is::

    Answer the following question by picking ONE of the given options
    Is X good?
    A. Yes
    B. No
    Answer: B. No

and `format_question_prompt(q, options)` is the same text up to and including "Answer:" (no trailing
space), so `format_item(q, o, i) == format_question_prompt(q, o) + " " + f"{letter}. {o[i]}"`.
The question and options are stripped of surrounding whitespace; nothing else is changed.

Free text, `RESPONSE_TEMPLATE_VERSION = "gpo-resp-v1"` (a prompt + response pair embedded on its own; `/generate`
itself uses the vectors pooled while sampling, `service.embedder.generate.RESPONSE_POOLED_TEMPLATE_VERSION`)::

    <prompt>
    Answer: <response>
"""

from __future__ import annotations

import string

TEMPLATE_VERSION = "gpo-mc-v1"
RESPONSE_TEMPLATE_VERSION = "gpo-resp-v1"

INSTRUCTION = "Answer the following question by picking ONE of the given options"
LETTERS = string.ascii_uppercase


def option_letter(index: int) -> str:
    """Letter of the option at `index`: "A" for 0, "B" for 1, ... (at most 26 options)."""
    if not 0 <= index < len(LETTERS):
        raise ValueError(f"option index {index} outside 0..{len(LETTERS) - 1}")
    return LETTERS[index]


def format_question_prompt(question: str, options: list[str]) -> str:
    """The question with its lettered options, ending with "Answer:" (for option-letter scoring)."""
    if not options:
        raise ValueError("a multiple-choice question needs at least one option")
    if len(options) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} options, got {len(options)}")
    lines = [INSTRUCTION, question.strip()]
    lines += [f"{option_letter(i)}. {opt.strip()}" for i, opt in enumerate(options)]
    lines.append("Answer:")
    return "\n".join(lines)


def format_item(question: str, options: list[str], option_index: int) -> str:
    """The text embedded for one option of a question: the question prompt answered with that option."""
    if not 0 <= option_index < len(options):
        raise ValueError(f"option_index {option_index} outside 0..{len(options) - 1}")
    answer = f"{option_letter(option_index)}. {options[option_index].strip()}"
    return f"{format_question_prompt(question, options)} {answer}"


def format_items(question: str, options: list[str]) -> list[str]:
    """`format_item` for every option of a question, in option order."""
    return [format_item(question, options, i) for i in range(len(options))]


def format_response_item(prompt: str, response: str) -> str:
    """The text embedded for a free-text prompt + response pair (version `RESPONSE_TEMPLATE_VERSION`)."""
    return f"{prompt.strip()}\nAnswer: {response.strip()}"
