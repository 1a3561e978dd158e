"""/predict by stored group and with an inline context: distributions, order, versions, re-embedding, errors."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.db.models import ContextItem
from service.db.repository import DEFAULT_TENANT, get_context, set_item_embeddings
from service.db.session import make_engine, make_sessionmaker, session_scope

from .conftest import NEW_QUESTION, context_item, options_of, question

CONTEXT = [context_item(i) for i in range(6)]
QUESTIONS = [question(10), NEW_QUESTION, question(11)]


@pytest.fixture
def group(client: TestClient) -> str:
    assert client.post("/groups/grp/context", json={"items": CONTEXT}).status_code == 200
    return "grp"


def _check(out: dict, questions: list[dict]) -> None:
    assert len(out["predictions"]) == len(questions)
    for pred, q in zip(out["predictions"], questions, strict=True):
        dist, std = np.asarray(pred["distribution"]), np.asarray(pred["std"])
        assert dist.shape == std.shape == (len(q["options"]),)
        assert (dist >= 0).all() and dist.sum() == pytest.approx(1.0, abs=1e-9)
        assert (std > 0).all()


def test_predict_for_a_stored_group(client: TestClient, group: str) -> None:
    answer = client.post("/predict", json={"group_id": group, "questions": QUESTIONS})
    assert answer.status_code == 200, answer.text
    out = answer.json()
    _check(out, QUESTIONS)
    assert (out["model_version"], out["context_version"]) == ("api-tiny/v0001", 1)
    client.post(f"/groups/{group}/context", json={"items": [context_item(7)]})
    assert client.post("/predict", json={"group_id": group, "questions": QUESTIONS}).json()["context_version"] == 2


def test_question_order_is_kept_and_batching_changes_nothing(client: TestClient, group: str) -> None:
    together = client.post("/predict", json={"group_id": group, "questions": QUESTIONS}).json()["predictions"]
    reverse = client.post("/predict", json={"group_id": group, "questions": QUESTIONS[::-1]}).json()["predictions"]
    for a, b in zip(together, reverse[::-1], strict=True):
        np.testing.assert_allclose(a["distribution"], b["distribution"], atol=1e-6)
    for q, expected in zip(QUESTIONS, together, strict=True):
        alone = client.post("/predict", json={"group_id": group, "questions": [q]}).json()["predictions"][0]
        np.testing.assert_allclose(alone["distribution"], expected["distribution"], atol=1e-6)


def test_the_context_matters(client: TestClient) -> None:
    """Two groups with opposite answers get different predictions for the same question."""
    n = len(options_of(10))
    for name, pick in (("first", 0), ("last", -1)):
        items = []
        for i in range(8):
            dist = [0.0] * len(options_of(i))
            dist[pick] = 1.0
            items.append({"question": context_item(i)["question"], "options": options_of(i), "distribution": dist})
        client.post(f"/groups/{name}/context", json={"items": items})
    first, last = (
        np.asarray(
            client.post("/predict", json={"group_id": g, "questions": [question(10)]}).json()["predictions"][0][
                "distribution"
            ]
        )
        for g in ("first", "last")
    )
    assert first.shape == last.shape == (n,)
    assert np.abs(first - last).max() > 1e-3


def test_predict_with_an_inline_context(client: TestClient) -> None:
    answer = client.post("/predict", json={"context": CONTEXT[:3], "questions": QUESTIONS})
    assert answer.status_code == 200, answer.text
    out = answer.json()
    _check(out, QUESTIONS)
    assert out["context_version"] is None and out["model_version"] == "api-tiny/v0001"
    assert client.get("/groups").json()["groups"] == []  # nothing stored


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"questions": [question(1)]}, "group_id"),
        ({"group_id": "grp", "context": CONTEXT[:1], "questions": [question(1)]}, "context"),
        ({"group_id": "grp", "questions": []}, "questions"),
        ({"group_id": "grp", "questions": [{"question": "q", "options": ["a", "a"]}]}, "options"),
        ({"context": [{**CONTEXT[0], "distribution": [1, 1]}], "questions": [question(1)]}, "distribution"),
        ({"group_id": "bad id", "questions": [question(1)]}, "group_id"),
    ],
)
def test_invalid_predict_requests(client: TestClient, group: str, body: dict, field: str) -> None:
    answer = client.post("/predict", json=body)
    assert answer.status_code == 422, answer.text
    assert any(field in map(str, e["loc"]) or field in e["msg"] for e in answer.json()["detail"])


def test_unknown_and_empty_groups(client: TestClient) -> None:
    answer = client.post("/predict", json={"group_id": "nobody", "questions": [question(1)]})
    assert (answer.status_code, answer.json()) == (404, {"detail": "group 'nobody' not found"})
    client.post("/groups/empty/context", json={"mode": "replace", "items": []})
    answer = client.post("/predict", json={"group_id": "empty", "questions": [question(1)]})
    assert answer.status_code == 422
    assert answer.json()["detail"] == [
        {"type": "empty_context", "loc": ["body", "group_id"], "msg": "group 'empty' has no context items"}
    ]


def test_items_from_another_embedder_are_embedded_again(client: TestClient, group: str, settings) -> None:
    """Context items whose stored embedder key is not the worker's are re-embedded once and stored back."""
    expected = client.post("/predict", json={"group_id": group, "questions": QUESTIONS}).json()
    sessions = make_sessionmaker(engine := make_engine(settings.database_url))
    try:
        with session_scope(sessions) as session:
            _, items = get_context(session, DEFAULT_TENANT, group)
            current_key = items[0].embedder_key
            blobs = {it.id: np.zeros((len(it.options), 64), np.float32).tobytes() for it in items[:2]}
            assert set_item_embeddings(session, blobs, "old-lm@r0|mean|gpo-mc-v1") == 2
        # The encoded context of this version is cached; a replica that never encoded it reads the items.
        client.app.state.services.contexts.close()
        again = client.post("/predict", json={"group_id": group, "questions": QUESTIONS}).json()
        with session_scope(sessions) as session:
            keys = session.scalars(select(ContextItem.embedder_key)).all()
    finally:
        engine.dispose()
    assert keys == [current_key] * len(CONTEXT)
    assert again["context_version"] == expected["context_version"]  # the context itself did not change
    for a, b in zip(again["predictions"], expected["predictions"], strict=True):
        np.testing.assert_allclose(a["distribution"], b["distribution"], atol=1e-6)
    assert "gpo_reembedded_context_items_total 2.0" in client.get("/metrics").text
