"""Rating and comparison context items through the API: stored, versioned and validated like choice items; a group
holds one kind; a deployment with a choice checkpoint refuses to predict for the other kinds, naming why."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.config import Settings
from service.serving.predictor import AnsweredItem, Item

from .conftest import context_item, question
from .test_tenants import snapshot

RATING = {"kind": "rating", "prompt": "Rate this reply.", "response": "It is fine.", "score": 4, "scale": [1, 5]}
COMPARISON = {
    "kind": "comparison",
    "prompt": "Which reply is better?",
    "response_a": "Short answer.",
    "response_b": "A longer, kinder answer.",
    "preferred": "b",
}


def test_rating_items_are_stored_and_versioned(client: TestClient) -> None:
    c = client
    written = c.post("/groups/r/context", json={"items": [RATING, {**RATING, "response": "Bad.", "score": 1}]})
    assert (written.status_code, written.json()["version"], written.json()["size"]) == (200, 1, 2)
    assert c.get("/groups/r").json()["kind"] == "rating"
    items = c.get("/groups/r/context").json()["items"]
    assert [(i["kind"], i["question"], i["options"], i["distribution"], i["score"], i["scale"]) for i in items] == [
        ("rating", "Rate this reply.", ["It is fine."], [0.75], 4.0, [1.0, 5.0]),
        ("rating", "Rate this reply.", ["Bad."], [0.0], 1.0, [1.0, 5.0]),
    ]
    assert c.delete(f"/groups/r/context/{items[0]['id']}").json()["version"] == 2


def test_comparison_items_are_stored(client: TestClient) -> None:
    c = client
    items = [COMPARISON, {**COMPARISON, "preferred": None, "probability_a": 0.7}]
    items[1].pop("preferred")
    assert c.post("/groups/cmp/context", json={"items": items}).status_code == 200
    stored = c.get("/groups/cmp/context").json()["items"]
    assert [(i["kind"], i["options"], i["distribution"]) for i in stored] == [
        ("comparison", ["Short answer.", "A longer, kinder answer."], [0.0, 1.0]),
        ("comparison", ["Short answer.", "A longer, kinder answer."], [0.7, pytest.approx(0.3)]),
    ]
    assert c.get("/groups/cmp").json()["kind"] == "comparison"


def test_a_group_holds_one_kind(client: TestClient, settings: Settings) -> None:
    c = client
    assert c.post("/groups/g/context", json={"items": [context_item(0)]}).status_code == 200
    before = snapshot(settings.database_url)
    refused = c.post("/groups/g/context", json={"items": [RATING]})
    assert refused.status_code == 409
    assert refused.json()["detail"] == "group 'g' holds choice items; this write has rating items"
    mixed = c.post("/groups/h/context", json={"items": [RATING, context_item(1)]})
    assert mixed.status_code == 422 and "one kind" in mixed.text
    assert snapshot(settings.database_url) == before


@pytest.mark.parametrize(
    "item,words",
    [
        ({**RATING, "score": 6}, ["outside the scale"]),
        ({**RATING, "scale": [5, 1]}, ["lowest < highest"]),
        ({**RATING, "score": float("nan")}, ["finite"]),
        ({k: v for k, v in RATING.items() if k != "scale"}, ["scale", "missing"]),
        ({**RATING, "response": "  "}, ["response"]),
        ({**COMPARISON, "response_b": "Short answer."}, ["must differ"]),
        ({**COMPARISON, "probability_a": 0.5}, ["exactly one"]),
        ({k: v for k, v in COMPARISON.items() if k != "preferred"}, ["exactly one"]),
        ({**COMPARISON, "preferred": "c"}, ["preferred"]),
        ({**COMPARISON, "preferred": None, "probability_a": 1.5}, ["probability_a"]),
        ({**RATING, "kind": "ranking"}, ["kind", "ranking"]),
        ({**RATING, "extra": 1}, ["extra"]),
    ],
)
def test_malformed_items_of_the_new_kinds(client: TestClient, settings: Settings, item: dict, words: list[str]) -> None:
    before = snapshot(settings.database_url)
    answer = client.post(
        "/groups/k/context", content=_json({"items": [item]}), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    for word in words:
        assert word.lower() in answer.text.lower(), (word, answer.text)
    assert snapshot(settings.database_url) == before


def test_predict_and_generate_name_the_kind_this_deployment_does_not_serve(client: TestClient) -> None:
    c = client
    assert c.post("/groups/r/context", json={"items": [RATING]}).status_code == 200
    for path, body in [
        ("/predict", {"group_id": "r", "questions": [question(1)]}),
        ("/generate", {"group_id": "r", "prompt": "Say hi.", "n": 2, "max_new_tokens": 4, "seed": 1}),
    ]:
        answer = c.post(path, json=body)
        assert answer.status_code == 422, answer.text
        (error,) = answer.json()["detail"]
        assert error["loc"] == ["body", "group_id"] and "holds rating items" in error["msg"]
        assert "serves no rating model (set GPO_RATING_CHECKPOINT)" in error["msg"]


def _json(body: dict) -> bytes:
    import json

    return json.dumps(body).encode()  # NaN is written as the JSON extension NaN, which the API must refuse


# ---------------------------------------------------------------------------------------------- rating groups served


@pytest.fixture
def rating_client(make_settings, sqlite_url: str, rating_store) -> TestClient:
    from .conftest import RATING_CHECKPOINT, authed_client

    settings = make_settings(sqlite_url, model_store=rating_store, rating_checkpoint=RATING_CHECKPOINT)
    with authed_client(settings) as c:
        yield c


def _rating(j: int, score: float) -> dict:
    from .conftest import RATING_PROMPT

    return {
        "kind": "rating",
        "prompt": RATING_PROMPT,
        "response": f"reply number {j} talks about topic {j % 7}",
        "score": score,
        "scale": [1, 5],
    }


def test_a_rating_group_gets_predicted_scores(rating_client: TestClient) -> None:
    c = rating_client
    assert c.post("/groups/p1/context", json={"items": [_rating(j, 1 + j % 5) for j in range(8)]}).status_code == 200
    body = {
        "group_id": "p1",
        "responses": [
            {"prompt": "Rate this reply.", "response": t}
            for t in ("reply number 9 talks about topic 2", "Something new entirely.")
        ],
    }
    answer = c.post("/predict", json=body)
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["model_version"] == "api-rating/v0001" and out["context_version"] == 1 and out["predictions"] == []
    assert len(out["scores"]) == 2 and all(np.isfinite(s["score"]) and s["std"] > 0 for s in out["scores"])
    # the rating items' embeddings were stored back on first use: a second call gives the same scores
    assert c.post("/predict", json=body).json()["scores"] == out["scores"]
    # the other kind's targets are refused, naming what to send
    wrong = c.post("/predict", json={"group_id": "p1", "questions": [question(1)]})
    assert wrong.status_code == 422 and "send 'responses'" in wrong.text
    assert c.post("/groups/c1/context", json={"items": [context_item(0)]}).status_code == 200
    wrong = c.post("/predict", json={"group_id": "c1", "responses": body["responses"]})
    assert wrong.status_code == 422 and "send 'questions'" in wrong.text


def test_a_rating_groups_context_is_cached_and_a_change_invalidates_it(rating_client: TestClient) -> None:
    """Rating groups take the fast path too: the context is encoded once per version (then one row read per call),
    the cached prediction equals the full forward, and a write is seen at once, with the group's scale."""
    from .test_fast_path import _states

    c = rating_client
    services = c.app.state.services
    rating = services.kinds["rating"].predictor
    items = [_rating(j, 1 + j % 5) for j in range(6)]
    assert c.post("/groups/p3/context", json={"items": items}).status_code == 200
    responses = [{"prompt": "Rate this reply.", "response": t} for t in ("a short reply", "reply number 3 again")]
    body = {"group_id": "p3", "responses": responses}
    before = _states(c)
    first = c.post("/predict", json=body).json()
    again = c.post("/predict", json=body).json()
    after = _states(c)
    assert (after["miss"] - before["miss"], after["local"] - before["local"]) == (1.0, 1.0)
    assert again == first

    def full_forward(context_items: list[dict]) -> list[float]:
        def emb(prompt: str, response: str) -> np.ndarray:
            (text,) = rating.item_texts(prompt, [response])
            return services.cache.get(f"{services.kinds['rating'].embedder_key}|{text}")[None]

        ctx = [
            AnsweredItem(
                i["prompt"], [i["response"]], emb(i["prompt"], i["response"]), np.array([(i["score"] - 1) / 4])
            )
            for i in context_items
        ]
        tgt = [Item(r["prompt"], [r["response"]], emb(r["prompt"], r["response"])) for r in responses]
        return [1 + 4 * float(p.distribution[0]) for p in rating.predict(ctx, tgt)]

    np.testing.assert_allclose([s["score"] for s in first["scores"]], full_forward(items), atol=1e-4)
    extra = _rating(9, 5.0)
    assert c.post("/groups/p3/context", json={"items": [extra]}).json()["version"] == 2
    changed = c.post("/predict", json=body).json()
    assert changed["context_version"] == 2 and _states(c)["miss"] == after["miss"] + 1
    np.testing.assert_allclose([s["score"] for s in changed["scores"]], full_forward([*items, extra]), atol=1e-4)
    assert changed["scores"] != first["scores"]


def test_generate_for_a_rating_group_returns_the_sample_gpo_scores_highest(rating_client: TestClient) -> None:
    c = rating_client
    assert c.post("/groups/p2/context", json={"items": [_rating(j, 5 - j % 5) for j in range(10)]}).status_code == 200
    out = c.post(
        "/generate", json={"group_id": "p2", "prompt": "Rate this reply.", "n": 4, "max_new_tokens": 6, "seed": 3}
    )
    assert out.status_code == 200, out.text
    ranked = out.json()["responses"]
    assert len(ranked) >= 2 and out.json()["model_version"] == "api-rating/v0001"
    assert out.json()["basis"] is None and out.json()["nearest_similarity"] is None  # a choice prior's: not here
    # score every returned sample on its own through /predict: the first returned is the one scored highest
    answer = c.post(
        "/predict",
        json={"group_id": "p2", "responses": [{"prompt": "Rate this reply.", "response": r["text"]} for r in ranked]},
    )
    assert answer.status_code == 200, (answer.text, [r["text"] for r in ranked])
    alone = answer.json()["scores"]
    assert [round(r["score"], 5) for r in ranked] == [round(s["score"], 5) for s in alone]
    assert ranked[0]["score"] == max(r["score"] for r in ranked)
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)


@pytest.fixture
def comparison_client(make_settings, sqlite_url: str, rating_store) -> TestClient:
    from .conftest import COMPARISON_CHECKPOINT, authed_client

    settings = make_settings(sqlite_url, model_store=rating_store, comparison_checkpoint=COMPARISON_CHECKPOINT)
    with authed_client(settings) as c:
        yield c


def _comparison(a: int, b: int, preferred: str) -> dict:
    from .conftest import RATING_PROMPT

    def text(j: int) -> str:
        return f"reply number {j} talks about topic {j % 7}"

    return {
        "kind": "comparison",
        "prompt": RATING_PROMPT,
        "response_a": text(a),
        "response_b": text(b),
        "preferred": preferred,
    }


def test_a_comparison_group_gets_preference_probabilities(comparison_client: TestClient) -> None:
    c = comparison_client
    items = [_comparison(j, j + 1, "a" if j % 2 else "b") for j in range(6)]
    assert c.post("/groups/cp/context", json={"items": items}).status_code == 200
    pairs = [{"prompt": "Rate this reply.", "response_a": "A short reply.", "response_b": "A long, careful reply."}]
    answer = c.post("/predict", json={"group_id": "cp", "pairs": pairs})
    assert answer.status_code == 200, answer.text
    out = answer.json()
    assert out["model_version"] == "api-comparison/v0001" and out["context_version"] == 1
    (pref,) = out["preferences"]
    assert 0.0 < pref["probability_a"] < 1.0
    wrong = c.post("/predict", json={"group_id": "cp", "responses": [{"prompt": "x", "response": "y"}]})
    assert wrong.status_code == 422 and "send 'pairs'" in wrong.text


def test_a_comparison_groups_context_is_cached_and_a_change_invalidates_it(comparison_client: TestClient) -> None:
    """Comparison groups take the fast path too: pair tokens encoded once per version, the cached prediction equal
    to the full forward, a write seen at once; and the score head's two orders of a pair sum to 1."""
    from .test_fast_path import _states

    c = comparison_client
    services = c.app.state.services
    model = services.kinds["comparison"].predictor
    items = [_comparison(j, j + 2, "a" if j % 3 else "b") for j in range(5)]
    assert c.post("/groups/cq/context", json={"items": items}).status_code == 200
    pairs = [
        {"prompt": "Rate this reply.", "response_a": "A short reply.", "response_b": "A long, careful reply."},
        {"prompt": "Rate this reply.", "response_a": "A long, careful reply.", "response_b": "A short reply."},
    ]
    body = {"group_id": "cq", "pairs": pairs}
    before = _states(c)
    first = c.post("/predict", json=body).json()
    again = c.post("/predict", json=body).json()
    after = _states(c)
    assert (after["miss"] - before["miss"], after["local"] - before["local"]) == (1.0, 1.0)
    assert again == first

    def full_forward(context_items: list[dict]) -> list[float]:
        def emb(prompt: str, a: str, b: str) -> np.ndarray:
            texts = model.item_texts(prompt, [a, b])
            return np.stack([services.cache.get(f"{services.kinds['comparison'].embedder_key}|{t}") for t in texts])

        def item(i: dict) -> Item:
            return Item(
                i["prompt"], [i["response_a"], i["response_b"]], emb(i["prompt"], i["response_a"], i["response_b"])
            )

        ctx = [
            AnsweredItem(
                i["prompt"],
                [i["response_a"], i["response_b"]],
                item(i).embeddings,
                np.array([1.0, 0.0] if i["preferred"] == "a" else [0.0, 1.0]),
            )
            for i in context_items
        ]
        x = model._pair_tokens(ctx).astype(np.float32)
        from service.gpo.batch import Episode, collate

        tgt = [item(p) for p in pairs]
        if model.score_head:
            singles = np.concatenate([model.features(t) for t in tgt])
            xt = np.column_stack([singles, np.zeros(len(singles))]).astype(np.float32)
        else:
            xt = model._pair_tokens(tgt).astype(np.float32)
        n_ctx, n = len(x), len(x) + len(xt)
        is_ctx = torch.zeros(n, dtype=torch.bool)
        is_ctx[:n_ctx] = True
        y = torch.zeros(n)
        y[:n_ctx] = torch.tensor([float(ci.distribution[0]) for ci in ctx])
        ep = Episode(x=torch.from_numpy(np.concatenate([x, xt])), y=y, is_context=is_ctx, question=torch.arange(n))
        with torch.no_grad():
            pred = model.model(collate([ep]))
        if model.score_head:
            s = pred.logits[0, n_ctx:].double()
            return torch.sigmoid(s[0::2] - s[1::2]).tolist()
        return pred.mean[0, n_ctx:].double().tolist()

    got = [p["probability_a"] for p in first["preferences"]]
    np.testing.assert_allclose(got, full_forward(items), atol=1e-5)
    if model.score_head:
        assert got[0] + got[1] == pytest.approx(1.0, abs=1e-9)
    extra = _comparison(1, 8, "b")
    assert c.post("/groups/cq/context", json={"items": [extra]}).json()["version"] == 2
    changed = c.post("/predict", json=body).json()
    assert changed["context_version"] == 2 and _states(c)["miss"] == after["miss"] + 1
    np.testing.assert_allclose(
        [p["probability_a"] for p in changed["preferences"]], full_forward([*items, extra]), atol=1e-5
    )


def test_generate_for_a_comparison_group_ranks_by_win_rate(comparison_client: TestClient) -> None:
    c = comparison_client
    items = [_comparison(j, j + 2, "a") for j in range(8)]
    assert c.post("/groups/cq/context", json={"items": items}).status_code == 200
    out = c.post(
        "/generate", json={"group_id": "cq", "prompt": "Rate this reply.", "n": 3, "max_new_tokens": 6, "seed": 4}
    )
    assert out.status_code == 200, out.text
    ranked = out.json()["responses"]
    texts = [r["text"] for r in ranked]
    n = len(texts)
    assert n >= 2
    # recompute every sample's win rate from /predict on all ordered pairs: the ranking is by it, best first
    ordered = [(i, j) for i in range(n) for j in range(n) if i != j]
    body = {
        "group_id": "cq",
        "pairs": [{"prompt": "Rate this reply.", "response_a": texts[i], "response_b": texts[j]} for i, j in ordered],
    }
    p = dict(
        zip(ordered, [x["probability_a"] for x in c.post("/predict", json=body).json()["preferences"]], strict=True)
    )
    wins = [np.mean([(p[i, j] + 1 - p[j, i]) / 2 for j in range(n) if j != i]) for i in range(n)]
    assert [r["score"] for r in ranked] == pytest.approx(wins, abs=1e-5)
    assert wins[0] == max(wins)


def test_every_kind_waits_in_the_one_micro_batcher(make_settings, sqlite_url: str, rating_store) -> None:
    """Rating and comparison predictions queue on the same micro-batcher as choice ones (bounded: 429 when full), and
    a batch that mixes kinds answers each request as it would be answered alone."""
    import threading
    import time

    from .conftest import COMPARISON_CHECKPOINT, RATING_CHECKPOINT, RATING_PROMPT, authed_client

    settings = make_settings(
        sqlite_url,
        model_store=rating_store,
        rating_checkpoint=RATING_CHECKPOINT,
        comparison_checkpoint=COMPARISON_CHECKPOINT,
        batch_max_requests=8,
        batch_max_queue=2,
    )
    with authed_client(settings) as c:
        assert c.post("/groups/choice/context", json={"items": [context_item(1)]}).status_code == 200
        assert (
            c.post("/groups/rater/context", json={"items": [_rating(j, 1 + j % 5) for j in range(6)]}).status_code
            == 200
        )
        items = [_comparison(j, j + 1, "a" if j % 2 else "b") for j in range(6)]
        assert c.post("/groups/chooser/context", json={"items": items}).status_code == 200
        bodies = {
            "choice": {"group_id": "choice", "questions": [question(2)]},
            "rating": {"group_id": "rater", "responses": [{"prompt": RATING_PROMPT, "response": "A new reply."}]},
            "comparison": {
                "group_id": "chooser",
                "pairs": [{"prompt": RATING_PROMPT, "response_a": "A short reply.", "response_b": "A long reply."}],
            },
        }
        alone = {kind: c.post("/predict", json=body).json() for kind, body in bodies.items()}  # warm: states cached

        services = c.app.state.services
        gate, entered = threading.Event(), threading.Event()
        real = services.predictor.predict_encoded

        def held(calls):  # the choice forward, held until the other kinds have queued behind it
            entered.set()
            gate.wait(10)
            return real(calls)

        services.predictor.predict_encoded = held
        answers: dict[str, dict] = {}

        def post(kind: str) -> None:
            answers[kind] = c.post("/predict", json=bodies[kind]).json()

        threads = [threading.Thread(target=post, args=("choice",))]
        threads[0].start()
        assert entered.wait(10)
        threads += [threading.Thread(target=post, args=(kind,)) for kind in ("rating", "comparison")]
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 10
        while services.batcher.waiting < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert services.batcher.waiting == 2  # the rating and the comparison request wait for the next forward
        refused = c.post("/predict", json=bodies["rating"])
        gate.set()
        for t in threads:
            t.join(10)
        services.predictor.predict_encoded = real
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert answers["rating"]["scores"][0]["score"] == pytest.approx(alone["rating"]["scores"][0]["score"], abs=1e-6)
        assert answers["comparison"]["preferences"][0]["probability_a"] == pytest.approx(
            alone["comparison"]["preferences"][0]["probability_a"], abs=1e-6
        )
        (got,), (want,) = answers["choice"]["predictions"], alone["choice"]["predictions"]
        assert got["distribution"] == pytest.approx(want["distribution"], abs=1e-6)
