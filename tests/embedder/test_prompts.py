"""The paper's multiple-choice template and the free-text template, exactly."""

from __future__ import annotations

import pytest

from service.embedder.prompts import (
    RESPONSE_TEMPLATE_VERSION,
    TEMPLATE_VERSION,
    format_item,
    format_items,
    format_question_prompt,
    format_response_item,
    option_letter,
)

QUESTION = "How much of a problem is crime in your community?"
OPTIONS = ["A major problem", "A minor problem", " Not a problem "]


def test_versions() -> None:
    assert TEMPLATE_VERSION == "gpo-mc-v1"
    assert RESPONSE_TEMPLATE_VERSION == "gpo-resp-v1"


def test_question_prompt_exact_text() -> None:
    assert format_question_prompt(QUESTION, OPTIONS) == (
        "Answer the following question by picking ONE of the given options\n"
        "How much of a problem is crime in your community?\n"
        "A. A major problem\n"
        "B. A minor problem\n"
        "C. Not a problem\n"
        "Answer:"
    )


def test_item_is_the_prompt_answered_with_that_option() -> None:
    assert format_item(QUESTION, OPTIONS, 1) == format_question_prompt(QUESTION, OPTIONS) + " B. A minor problem"
    assert format_item(QUESTION, OPTIONS, 2).endswith("\nAnswer: C. Not a problem")
    assert format_items(QUESTION, OPTIONS) == [format_item(QUESTION, OPTIONS, i) for i in range(3)]


def test_items_of_one_question_differ_only_in_the_answer() -> None:
    items = format_items(QUESTION, OPTIONS)
    assert len(set(items)) == 3
    prefix = format_question_prompt(QUESTION, OPTIONS)
    assert all(item.startswith(prefix + " ") for item in items)


def test_bad_indices_and_sizes() -> None:
    with pytest.raises(ValueError):
        format_item(QUESTION, OPTIONS, 3)
    with pytest.raises(ValueError):
        format_item(QUESTION, OPTIONS, -1)
    with pytest.raises(ValueError):
        format_question_prompt(QUESTION, [])
    with pytest.raises(ValueError):
        format_question_prompt(QUESTION, [str(i) for i in range(27)])
    assert option_letter(25) == "Z"


def test_response_item() -> None:
    assert format_response_item(" Write a haiku. ", "Leaves fall\n") == "Write a haiku.\nAnswer: Leaves fall"
