"""The partisan new-question set (service/data/partisan) that benchmarks/partisan.py scores: well formed, sourced,
and new (no question of the shipped OpinionQA data, nor a close restatement of one)."""

from __future__ import annotations

import re

from benchmarks.partisan import PARTIES, load_partisan
from service.training.opinionqa import load_opinionqa


def test_every_question_names_an_option_of_its_own_and_a_source() -> None:
    questions, dem = load_partisan()
    assert len(questions) >= 20 and len({q.qid for q in questions}) == len(questions)
    for q, opt in zip(questions, dem, strict=True):
        assert opt in q.options and len(q.options) >= 2 and len(set(q.options)) == len(q.options)
        assert q.ordinals is not None and len(q.ordinals) == len(q.options)


def test_no_question_restates_an_opinionqa_question() -> None:
    oqa = load_opinionqa()
    assert set(PARTIES) <= set(oqa.groups)

    def words(s: str) -> set[str]:
        return set(re.findall(r"[a-z]+", s.lower()))

    known_texts = {q.text.lower() for q in oqa.questions}
    for q, _ in zip(*load_partisan(), strict=True):
        assert q.text.lower() not in known_texts
        # close restatements (Jaccard of words > 0.7) were replaced when the set was written
        assert max(len(words(q.text) & words(t)) / len(words(q.text) | words(t)) for t in known_texts) < 0.7
