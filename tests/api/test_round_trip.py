"""One full round trip through the real app on every database (SQLite, Postgres) and cache (LRU, Redis)."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from .conftest import NEW_QUESTION, SettingsFactory, authed_client, context_item, question


@pytest.fixture(params=["lru", "redis"])
def cache_settings(request: pytest.FixtureRequest) -> dict[str, str | None]:
    if request.param == "lru":
        return {"redis_url": None}
    prefix = request.getfixturevalue("redis_prefix")
    return {"redis_url": request.getfixturevalue("redis_server"), "redis_prefix": prefix}


def test_register_predict_generate_delete(
    make_settings: SettingsFactory, database_url: str, cache_settings: dict[str, str | None]
) -> None:
    settings = make_settings(database_url, **cache_settings)
    with authed_client(settings) as client:
        assert client.get("/readyz").json() == {
            "status": "ready",
            "checks": {"database": "ok", "cache": "ok", "worker": "ok", "model": "ok"},
        }
        first = client.post("/groups/g-1/context", json={"items": [context_item(i) for i in range(3)]})
        assert first.status_code == 200, first.text
        assert first.json() == {"group_id": "g-1", "version": 1, "size": 3}
        second = client.post("/groups/g-1/context", json={"mode": "append", "items": [context_item(3)]})
        assert second.json() == {"group_id": "g-1", "version": 2, "size": 4}

        listed = client.get("/groups").json()
        assert [(g["group_id"], g["size"], g["version"], g["kind"]) for g in listed["groups"]] == [
            ("g-1", 4, 2, "choice")
        ]
        items = client.get("/groups/g-1/context").json()["items"]
        assert [it["question"] for it in items] == [context_item(i)["question"] for i in range(4)]

        body = {"group_id": "g-1", "questions": [question(10), NEW_QUESTION]}
        predicted = client.post("/predict", json=body)
        assert predicted.status_code == 200, predicted.text
        out = predicted.json()
        assert out["context_version"] == 2 and out["model_version"] == "api-tiny/v0001"
        for pred, q in zip(out["predictions"], body["questions"], strict=True):
            assert len(pred["distribution"]) == len(pred["std"]) == len(q["options"])
            assert sum(pred["distribution"]) == pytest.approx(1.0, abs=1e-9)

        generated = client.post(
            "/generate", json={"group_id": "g-1", "prompt": "Say hi.", "n": 3, "seed": 5, "max_new_tokens": 6}
        )
        assert generated.status_code == 200, generated.text
        timing = dict(part.split(";dur=") for part in generated.headers["Server-Timing"].split(", "))
        assert set(timing) == {"context", "sample", "score"} and all(float(v) >= 0 for v in timing.values())
        scores = [r["score"] for r in generated.json()["responses"]]
        assert scores == sorted(scores, reverse=True)

        replaced = client.post("/groups/g-1/context", json={"mode": "replace", "items": [context_item(5)]})
        assert replaced.json() == {"group_id": "g-1", "version": 3, "size": 1}
        item_id = client.get("/groups/g-1/context").json()["items"][0]["id"]
        assert client.delete(f"/groups/g-1/context/{item_id}").json() == {"group_id": "g-1", "version": 4, "size": 0}
        assert client.delete("/groups/g-1").status_code == 204
        assert client.get("/groups/g-1").json() == {"detail": "group 'g-1' not found"}

        # Every embedding went through the cache: registering the same items again is all hits, no worker call.
        hits_before = _lookups(client, "hit")
        again = client.post("/groups/g-2/context", json={"items": [context_item(i) for i in range(3)]})
        assert again.status_code == 200
        n_options = sum(len(context_item(i)["options"]) for i in range(3))
        assert _lookups(client, "hit") - hits_before == n_options

    if cache_settings["redis_url"]:
        raw = redis.Redis.from_url(str(cache_settings["redis_url"]))
        prefix = cache_settings["redis_prefix"]
        keys = [k.decode() for k in raw.scan_iter(match=f"{prefix}*")]
        raw.close()
        states = [k for k in keys if k.startswith(f"{prefix}ctx:")]
        stored = [k for k in keys if k not in states]
        assert states, "encoded contexts are shared through Redis"
        n_texts = sum(len(context_item(i)["options"]) for i in (0, 1, 2, 3, 5))
        n_texts += sum(len(q["options"]) for q in body["questions"])  # responses: pooled while sampling, not cached
        assert len(stored) == n_texts


def _lookups(client: TestClient, result: str) -> float:
    """Cache lookups with `result` so far, read from /metrics."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("gpo_embedding_cache_lookups_total{") and f'result="{result}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_predictions_are_the_same_on_each_backend(make_settings: SettingsFactory, database_url: str) -> None:
    """The stored embeddings (float32 bytes) read back exactly: a stored group predicts as its inline twin."""
    context = [context_item(i) for i in range(5)]
    questions = [question(12), NEW_QUESTION]
    with authed_client(make_settings(database_url)) as client:
        assert client.post("/groups/twin/context", json={"items": context}).status_code == 200
        stored = client.post("/predict", json={"group_id": "twin", "questions": questions}).json()
        inline = client.post("/predict", json={"context": context, "questions": questions}).json()
    assert inline["context_version"] is None and stored["context_version"] == 1
    for a, b in zip(stored["predictions"], inline["predictions"], strict=True):
        np.testing.assert_allclose(a["distribution"], b["distribution"], atol=1e-6)
        np.testing.assert_allclose(a["std"], b["std"], atol=1e-6)
