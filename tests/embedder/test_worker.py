"""The embedding worker app on the tiny LM: OpenAI wire shapes, pooling, seeded sampling, validation, readiness."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.embedder.embed import Embedder
from service.embedder.engine import InputTooLong, WorkerEngine
from service.embedder.generate import sample_responses
from service.embedder.loading import BaseLM, BaseLMNotFoundError
from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION, TEMPLATE_VERSION, format_items
from service.embedder.protocol import MAX_INPUTS, MAX_TEXT_CHARS, SamplingParams, decode_base64
from service.embedder.worker import create_worker_app

TEXTS = [
    *format_items("Is crime a problem where you live?", ["A major problem", "A minor problem", "Not a problem"]),
    "hi",
    "A much longer text that needs padding when it shares a batch with the short ones. " * 3,
]
PROMPT = "Tell me about autumn."


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def engine(tiny_lm: BaseLM) -> WorkerEngine:
    return WorkerEngine.from_lm(tiny_lm, batch_size=2)


@pytest.fixture(scope="module")
def client(engine: WorkerEngine) -> Iterator[TestClient]:
    with TestClient(create_worker_app(engine)) as c:
        yield c


def vectors(body: dict[str, Any]) -> np.ndarray:
    rows = sorted(body["data"], key=lambda d: d["index"])
    return np.stack(
        [decode_base64(d["embedding"]) if isinstance(d["embedding"], str) else np.asarray(d["embedding"]) for d in rows]
    ).astype(np.float32)


def test_health_ready_and_model_card(client: TestClient, tiny_lm: BaseLM) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and len(body["data"]) == 1
    card = body["data"][0]
    assert (card["id"], card["object"], card["owned_by"]) == (tiny_lm.model_id, "model", "gpo-serve")
    assert (card["model_id"], card["revision"]) == (tiny_lm.model_id, tiny_lm.revision)
    assert (card["hidden_size"], card["dim"], card["pooling"], card["loaded"]) == (64, 64, "mean", True)
    # The key prefix is exactly the one an in-process Embedder of the same weights writes.
    assert card["template_version"] == TEMPLATE_VERSION
    assert card["key_prefix"] == Embedder(tiny_lm).key_prefix
    resp_prefix = Embedder(tiny_lm, template_version=RESPONSE_TEMPLATE_VERSION).key_prefix
    pooled_prefix = Embedder(tiny_lm, template_version="gpo-resp-gen-v1").key_prefix
    assert card["key_prefixes"] == {
        TEMPLATE_VERSION: card["key_prefix"],
        RESPONSE_TEMPLATE_VERSION: resp_prefix,
        "gpo-resp-gen-v1": pooled_prefix,
    }
    other = client.get("/v1/models", params={"template_version": RESPONSE_TEMPLATE_VERSION}).json()
    assert other["data"][0]["key_prefix"] == resp_prefix
    assert client.get("/v1/models", params={"template_version": "no spaces"}).status_code == 422


def test_embeddings_are_the_embedders_pooled_vectors(client: TestClient, tiny_lm: BaseLM) -> None:
    r = client.post("/v1/embeddings", json={"input": TEXTS})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == tiny_lm.model_id and body["revision"] == tiny_lm.revision
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", i) for i in range(len(TEXTS))]
    n_tokens = sum(len(ids) for ids in tiny_lm.tokenizer(TEXTS, add_special_tokens=True)["input_ids"])
    assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens, "completion_tokens": None}
    got = vectors(body)
    assert got.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(got, Embedder(tiny_lm, batch_size=16).embed(TEXTS), atol=1e-6, rtol=0)


def test_other_pooling(tiny_lm: BaseLM) -> None:
    engine = WorkerEngine.from_lm(tiny_lm, pooling="mean_last")
    with TestClient(create_worker_app(engine, warm=False)) as c:
        body = c.post("/v1/embeddings", json={"input": TEXTS[:2], "encoding_format": "base64"}).json()
        assert c.get("/v1/models").json()["data"][0]["dim"] == 128
    np.testing.assert_allclose(vectors(body), Embedder(tiny_lm, pooling="mean_last").embed(TEXTS[:2]), atol=1e-6)


def test_base64_and_float_encodings_agree(client: TestClient, tiny_lm: BaseLM) -> None:
    floats = vectors(client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "float"}).json())
    b64 = client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}).json()
    assert all(isinstance(d["embedding"], str) for d in b64["data"])
    assert np.array_equal(vectors(b64), floats)  # float32 survives the JSON float round trip exactly
    single = client.post("/v1/embeddings", json={"input": TEXTS[0], "model": tiny_lm.model_id}).json()
    # A bare string is a list of one (alone, not batched with padding: equal up to float rounding).
    np.testing.assert_allclose(vectors(single), floats[:1], atol=1e-6, rtol=0)


def test_completions_seeded_and_batched(client: TestClient, tiny_lm: BaseLM) -> None:
    req = {"prompt": PROMPT, "n": 4, "max_tokens": 12, "temperature": 1.0, "seed": 7}
    a = client.post("/v1/completions", json=req)
    assert a.status_code == 200
    body = a.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == tiny_lm.model_id
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert all(c["finish_reason"] in ("stop", "length") for c in body["choices"])
    texts = [c["text"] for c in body["choices"]]
    assert len(set(texts)) >= 3  # n distinct samples, not one sample repeated
    # One batched generate call, exactly as sample_responses makes it: same seed, same texts.
    assert texts == sample_responses(
        tiny_lm, PROMPT, n=4, max_new_tokens=12, temperature=1.0, seed=7, use_chat_template=False
    )
    again = client.post("/v1/completions", json=req).json()
    assert [c["text"] for c in again["choices"]] == texts
    other = client.post("/v1/completions", json={**req, "seed": 8}).json()
    assert [c["text"] for c in other["choices"]] != texts
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_greedy_completions_repeat(client: TestClient) -> None:
    body = client.post("/v1/completions", json={"prompt": PROMPT, "n": 3, "max_tokens": 6, "temperature": 0}).json()
    assert len({c["text"] for c in body["choices"]}) == 1 and len(body["choices"]) == 3


@pytest.mark.parametrize(
    ("route", "payload"),
    [
        ("/v1/embeddings", {"input": []}),
        ("/v1/embeddings", {"input": [""]}),
        ("/v1/embeddings", {"input": ["x"] * (MAX_INPUTS + 1)}),
        ("/v1/embeddings", {"input": "x" * (MAX_TEXT_CHARS + 1)}),
        ("/v1/embeddings", {"input": [1, 2, 3]}),
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}),
        ("/v1/embeddings", {"input": "x", "dimensions": 8}),
        ("/v1/completions", {"prompt": "x", "n": 0}),
        ("/v1/completions", {"prompt": "x", "n": 17}),
        ("/v1/completions", {"prompt": "x", "max_tokens": 513}),
        ("/v1/completions", {"prompt": "x", "temperature": -0.1}),
        ("/v1/completions", {"prompt": "x", "temperature": 2.5}),
        ("/v1/completions", {"prompt": "x", "top_p": 0}),
        ("/v1/completions", {"prompt": "x", "seed": -1}),
        ("/v1/completions", {"prompt": ""}),
        ("/v1/completions", {"n": 2}),
    ],
)
def test_invalid_requests_are_422(client: TestClient, route: str, payload: dict[str, Any]) -> None:
    r = client.post(route, json=payload)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail[0]["loc"][0] == "body"


def test_too_long_and_unknown_model(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"input": ["hi", "x" * 3000]})  # > 512 positions of the tiny LM
    assert r.status_code == 422 and r.json()["detail"].startswith("input 1 has")
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 512})  # 512 + the prompt > 512 positions
    assert r.status_code == 422 and "exceeds" in r.json()["detail"]
    r = client.post("/v1/embeddings", json={"input": "hi", "model": "gpt-4"})
    assert r.status_code == 404 and "not served" in r.json()["detail"]


def test_metrics_count_requests(client: TestClient) -> None:
    client.get("/healthz")
    text = client.get("/metrics").text
    assert 'gpo_worker_requests_total{route="/healthz",status="200"}' in text
    assert "gpo_worker_request_seconds_bucket" in text


@pytest.mark.anyio
async def test_model_calls_leave_the_event_loop_free(tiny_lm: BaseLM) -> None:
    gate = threading.Event()

    def slow_load() -> BaseLM:
        assert gate.wait(10), "the test never opened the gate"
        return tiny_lm

    engine = WorkerEngine(Embedder(slow_load, identity=tiny_lm.identity))
    app = create_worker_app(engine)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://w") as c:
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        pending = asyncio.create_task(c.post("/v1/embeddings", json={"input": TEXTS}))
        await asyncio.sleep(0.1)
        assert not pending.done()  # waiting for the model being loaded in the background...
        assert (await c.get("/healthz")).status_code == 200  # ...while the loop keeps answering
        gate.set()
        r = await pending
        assert r.status_code == 200
        assert (await c.get("/readyz")).status_code == 200
        np.testing.assert_allclose(vectors(r.json()), Embedder(tiny_lm).embed(TEXTS), atol=1e-6)


@pytest.mark.anyio
async def test_concurrent_requests_are_serialised_and_correct(engine: WorkerEngine, tiny_lm: BaseLM) -> None:
    app = create_worker_app(engine, warm=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as c:
        embeds = [c.post("/v1/embeddings", json={"input": TEXTS[i:]}) for i in range(len(TEXTS))]
        completions = [
            c.post("/v1/completions", json={"prompt": PROMPT, "n": 2, "max_tokens": 8, "seed": s}) for s in (1, 2)
        ]
        results = await asyncio.gather(*embeds, *completions)
    assert all(r.status_code == 200 for r in results)
    ref = Embedder(tiny_lm).embed(TEXTS)
    for i, r in enumerate(results[: len(TEXTS)]):
        np.testing.assert_allclose(vectors(r.json()), ref[i:], atol=1e-6)
    for seed, r in zip((1, 2), results[len(TEXTS) :], strict=True):
        want = sample_responses(
            tiny_lm, PROMPT, n=2, max_new_tokens=8, temperature=1.0, seed=seed, use_chat_template=False
        )
        assert [c["text"] for c in r.json()["choices"]] == want


def test_failed_load_is_503(tiny_lm: BaseLM) -> None:
    def missing() -> BaseLM:
        raise BaseLMNotFoundError("no such model")

    engine = WorkerEngine(Embedder(missing, identity=tiny_lm.identity))
    with TestClient(create_worker_app(engine, warm=False)) as c:
        assert c.get("/readyz").json()["status"] == "loading"
        r = c.post("/v1/embeddings", json={"input": "hi"})
        assert r.status_code == 503 and "failed to load" in r.json()["detail"]
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed" and ready.json()["error"] == "BaseLMNotFoundError"
        assert c.get("/healthz").status_code == 200
        card = c.get("/v1/models").json()["data"][0]
        assert card["loaded"] is False and card["key_prefix"] == Embedder(tiny_lm).key_prefix


def test_engine_direct_calls(engine: WorkerEngine, tiny_lm: BaseLM) -> None:
    assert engine.embed([]).shape == (0, 64)
    np.testing.assert_allclose(engine.embed(TEXTS[:2]), Embedder(tiny_lm).embed(TEXTS[:2]), atol=1e-6)
    params = SamplingParams(PROMPT, 2, 5, 1.0, 3)
    assert engine.complete(params) == engine.complete(params)
    assert engine.serves(None) and engine.serves(tiny_lm.model_id) and not engine.serves("other")


def test_cli_has_a_worker_command() -> None:
    result = CliRunner().invoke(cli_app, ["worker", "--help"])
    assert result.exit_code == 0
    assert "--host" in result.output and "--port" in result.output


@pytest.mark.anyio
async def test_concurrent_embedding_requests_share_one_forward(tiny_lm: BaseLM) -> None:
    engine = WorkerEngine.from_lm(tiny_lm, batch_size=16)
    gate = threading.Event()
    real = engine.embed_with_usage

    def held(texts: list[str]):  # the first call holds the model while the others queue up
        gate.wait(10)
        return real(texts)

    engine.embed_with_usage = held  # type: ignore[method-assign]
    first = asyncio.create_task(engine.aembed_with_usage(TEXTS[:1]))
    await asyncio.sleep(0.05)
    rest = [asyncio.create_task(engine.aembed_with_usage(TEXTS[i:])) for i in range(len(TEXTS))]
    too_long = asyncio.create_task(engine.aembed_with_usage(["hi", "x" * 3000]))
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(first, *rest, return_exceptions=False)
    with pytest.raises(InputTooLong, match="tokens"):
        await too_long
    ref = Embedder(tiny_lm).embed(TEXTS)
    np.testing.assert_allclose(results[0].vectors, ref[:1], atol=1e-5)
    for i, r in enumerate(results[1:]):
        np.testing.assert_allclose(r.vectors, ref[i:], atol=1e-5)
        assert r.prompt_tokens == sum(len(ids) for ids in tiny_lm.tokenizer(TEXTS[i:])["input_ids"])
    assert engine.embed_batches[0] == 1 and max(engine.embed_batches) > 1, engine.embed_batches
    await engine.aclose()


@pytest.mark.anyio
async def test_concurrent_unseeded_completions_share_one_generate_call(tiny_lm: BaseLM) -> None:
    engine = WorkerEngine.from_lm(tiny_lm)
    gate = threading.Event()
    real = engine.complete_with_usage

    def held(*args, **kwargs):
        gate.wait(10)
        return real(*args, **kwargs)

    engine.complete_with_usage = held  # type: ignore[method-assign]
    first = asyncio.create_task(engine.acomplete_with_usage(SamplingParams(PROMPT, 1, 4, 1.0, 7)))  # seeded: alone
    await asyncio.sleep(0.05)
    shared = [
        asyncio.create_task(engine.acomplete_with_usage(SamplingParams(f"{PROMPT} {i}", 2 + i, 6, 0.8)))
        for i in range(3)
    ]
    seeded = asyncio.create_task(engine.acomplete_with_usage(SamplingParams(PROMPT, 2, 6, 0.8, 11)))
    await asyncio.sleep(0.05)
    gate.set()
    out = await asyncio.gather(first, *shared, seeded)
    assert [len(r.texts) for r in out[1:4]] == [2, 3, 4]
    assert all(len(r.completion_tokens) == len(r.texts) for r in out)
    assert out[4].texts == sample_responses(
        tiny_lm, PROMPT, n=2, max_new_tokens=6, temperature=0.8, seed=11, use_chat_template=False
    )
    assert engine.complete_batches[:2] == [1, 4], engine.complete_batches
    await engine.aclose()


def test_completions_can_return_vectors_pooled_while_sampling(client: TestClient, tiny_lm: BaseLM) -> None:
    body = {"prompt": PROMPT, "n": 3, "max_tokens": 6, "temperature": 1.0, "seed": 4}
    plain = client.post("/v1/completions", json=body).json()
    r = client.post("/v1/completions", json={**body, "return_embeddings": True})
    assert r.status_code == 200
    choices = r.json()["choices"]
    assert [c["text"] for c in choices] == [c["text"] for c in plain["choices"]]  # the same draw
    assert all(c["embedding"] is None for c in plain["choices"])
    got = np.stack([decode_base64(c["embedding"]) for c in choices])
    _, want = sample_responses(tiny_lm, PROMPT, 3, 6, 1.0, 4, pooling="mean", use_chat_template=False)
    np.testing.assert_allclose(got, want, atol=1e-6)
    card = client.get("/v1/models").json()["data"][0]
    assert card["key_prefixes"]["gpo-resp-gen-v1"].endswith("|mean|gpo-resp-gen-v1")
