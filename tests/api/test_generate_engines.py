"""/generate on standard engines: the API applies the chat template and sends plain text to any OpenAI-compatible
completions server (GPO_GENERATE_URL); one that returns no vectors (GPO_GENERATE_VECTORS=false) has its samples
embedded through the embeddings server, and the ranking is the fast path's."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from service.config import Settings
from service.embedder.engine import WorkerEngine
from service.embedder.generate import chat_text
from service.embedder.loading import BaseLM, load_tokenizer
from service.embedder.worker import create_worker_app

from .conftest import SettingsFactory, authed_client, context_item, free_port

PROMPT = "Write one sentence about the economy."


def _generate(settings: Settings, seeds: range) -> list[dict]:
    with authed_client(settings) as client:
        items = [context_item(i) for i in range(5)]
        assert client.post("/groups/gen/context", json={"mode": "replace", "items": items}).status_code == 200
        out = []
        for seed in seeds:
            body = {"group_id": "gen", "prompt": PROMPT, "n": 4, "max_new_tokens": 8, "temperature": 1.0, "seed": seed}
            answer = client.post("/generate", json=body)
            assert answer.status_code == 200, answer.text
            out.append(answer.json())
    return out


@pytest.mark.slow
def test_without_vectors_from_the_engine_the_ranking_is_the_fast_paths(tmp_path: Path) -> None:
    """The embedded default (bundled SmolLM2, the shipped checkpoint), a group registered with Democrats' answers to
    20 OpinionQA questions: /generate with and without vectors from the completions engine (GPO_GENERATE_VECTORS)
    gives the same samples in the same order, the scores within 1e-4 (the same tokens pooled). The tiny test LM
    cannot show this: it samples byte fragments whose text does not tokenize back to the sampled ids."""
    from benchmarks.partisan import context_ids
    from service.training.opinionqa import load_opinionqa

    oqa = load_opinionqa()
    items = []
    for qid in context_ids(oqa):
        q = oqa.question(qid)
        items.append(
            {"question": q.text, "options": list(q.options), "distribution": oqa.dist("Democrat", qid).tolist()}
        )
    base = dict(cache_dir=tmp_path / "cache", redis_url=None, worker_url=None, device="cpu", torch_threads=1)
    runs = []
    for vectors in (True, False):
        settings = Settings(
            database_url=f"sqlite:///{tmp_path}/gpo-{vectors}.sqlite3", generate_vectors=vectors, **base
        )
        with authed_client(settings) as client:
            assert client.post("/groups/dem/context", json={"items": items}).status_code == 200
            out = []
            for seed in range(3):
                body = {"group_id": "dem", "prompt": "Should the government do more to reduce gun violence?"}
                answer = client.post("/generate", json={**body, "n": 4, "max_new_tokens": 24, "seed": seed})
                assert answer.status_code == 200, answer.text
                out.append(answer.json()["responses"])
            runs.append(out)
    for fast, plain in zip(*runs, strict=True):
        assert [r["text"] for r in fast] == [r["text"] for r in plain]  # same samples, ranked alike
        np.testing.assert_allclose([r["score"] for r in fast], [r["score"] for r in plain], atol=1e-4)


class _Recorder:
    """ASGI wrapper that keeps the bodies of the completions requests a server received."""

    def __init__(self, app) -> None:  # noqa: ANN001
        self.app = app
        self.bodies: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http" or scope["path"] != "/v1/completions":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        self.bodies.append(json.loads(body))
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


@contextmanager
def _serve(app) -> Iterator[str]:  # noqa: ANN001
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_separate_completions_server_is_sent_plain_text(
    make_settings: SettingsFactory, sqlite_url: str, tiny_lm: BaseLM, tiny_lm_path: Path
) -> None:
    """GPO_GENERATE_URL: our worker over HTTP stands for any OpenAI-compatible engine (no return_embeddings asked),
    embeddings stay in process. Same seeds, same samples and scores as in process without vectors from the engine."""
    recorder = _Recorder(create_worker_app(WorkerEngine.from_lm(tiny_lm), warm=False))
    with _serve(recorder) as url:
        remote = _generate(make_settings(sqlite_url, generate_url=url, generate_model=tiny_lm.model_id), range(2))
    local = _generate(make_settings(sqlite_url, generate_vectors=False), range(2))
    assert [[r["text"] for r in a["responses"]] for a in remote] == [[r["text"] for r in a["responses"]] for a in local]
    for a, b in zip(remote, local, strict=True):
        np.testing.assert_allclose(
            [r["score"] for r in a["responses"]], [r["score"] for r in b["responses"]], atol=1e-3
        )
    assert recorder.bodies and all("return_embeddings" not in b for b in recorder.bodies)
    templated = chat_text(tiny_lm.tokenizer, PROMPT)
    assert templated != PROMPT and all(b["prompt"] == templated for b in recorder.bodies)
    assert all(b["model"] == tiny_lm.model_id for b in recorder.bodies)  # GPO_GENERATE_MODEL


def test_the_api_reads_the_tokenizer_alone(tiny_lm_path: Path, tmp_path: Path, tiny_lm: BaseLM) -> None:
    """A remote engine runs the model; the API loads only its tokenizer, to apply the chat template."""
    tok = load_tokenizer(str(tiny_lm_path), cache_dir=tmp_path)
    assert chat_text(tok, PROMPT) == chat_text(tiny_lm.tokenizer, PROMPT)


@pytest.mark.parametrize(
    "fields,want",
    [
        ({}, True),
        ({"worker_url": "http://w"}, True),
        ({"generate_url": "http://vllm"}, False),
        ({"generate_url": "http://vllm", "generate_vectors": True}, True),
        ({"worker_url": "http://w", "generate_url": "http://w"}, True),
        ({"generate_vectors": False}, False),
    ],
)
def test_whether_samples_come_with_their_vectors(fields: dict, want: bool) -> None:
    assert Settings(**fields).sampling_returns_vectors is want
