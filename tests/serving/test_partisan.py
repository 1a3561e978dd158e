"""The shipped checkpoint personalises questions it has never seen: registered Democrat and Republican groups get
predictions that differ, on most of 26 plainly partisan new questions, in the direction public polls document
(service/data/partisan; benchmarks/partisan.py prints the per-question figures). Before the text prior the two
groups got the same distribution on every new question, to six decimals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.partisan import context_ids, load_partisan, right_direction, served_predictions
from service.config import Settings
from service.embedder.embed import build_embedder
from service.embedder.sentence import attach_question_encoder
from service.serving.predictor import Predictor
from service.training.opinionqa import load_opinionqa

pytestmark = pytest.mark.slow


def test_democrats_and_republicans_differ_the_way_polls_say_on_new_questions(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path / "cache", redis_url=None, worker_url=None, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        embedder = build_embedder(settings)
        predictor = Predictor.from_store(settings.model_store, settings.checkpoint)
        attach_question_encoder(predictor)  # as served: reworded known questions borrow their prior
        oqa = load_opinionqa()
        questions, dem_options = load_partisan()
        preds = served_predictions(predictor, embedder.embed, oqa, questions, context_ids(oqa))
    finally:
        torch.set_num_threads(threads)
    diffs = right_direction(preds, questions, dem_options)
    right = sum(d > 0 for d in diffs)
    assert right > len(questions) / 2, f"right direction on {right} of {len(questions)}: {diffs}"
    assert sum(abs(d) for d in diffs) / len(diffs) > 0.02  # the groups' answers differ, not by rounding
