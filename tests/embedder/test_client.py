"""WorkerClient against a real uvicorn worker and in-process apps, LocalWorker beside it: same vectors, same errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from service.batching import QueueFull
from service.config import Settings
from service.embedder.client import (
    LocalWorker,
    WorkerBusy,
    WorkerClient,
    WorkerInfo,
    WorkerModelChanged,
    WorkerRequestError,
    WorkerUnavailable,
    build_worker,
)
from service.embedder.embed import Embedder
from service.embedder.engine import WorkerEngine
from service.embedder.loading import BaseLM, BaseLMNotFoundError, LMIdentity
from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION, format_items
from service.embedder.protocol import SamplingParams
from service.embedder.worker import create_worker_app
from tests.ports import free_port

TEXTS = [
    *format_items("Do you trust the news?", ["A great deal", "Some", "Not at all"]),
    "short",
    "A somewhat longer text, so that batches need padding on the right. " * 2,
]
PROMPT = "Write one sentence about rivers."
CLOSED = "http://127.0.0.1:1"  # nothing listens on port 1: connections are refused at once


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server_url(tiny_lm: BaseLM) -> Iterator[str]:
    """A real uvicorn worker on a free loopback port, serving the tiny LM from a thread."""
    port = free_port()
    app = create_worker_app(WorkerEngine.from_lm(tiny_lm))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the uvicorn worker did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def asgi_client(app: ASGIApp, **kwargs: object) -> WorkerClient:
    return WorkerClient("http://worker", transport=httpx.ASGITransport(app=app), **kwargs)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_http_and_local_workers_agree(server_url: str, tiny_lm: BaseLM) -> None:
    local = LocalWorker(WorkerEngine.from_lm(tiny_lm))
    async with WorkerClient(server_url) as remote:
        assert await remote.ready() and await local.ready()
        info = await remote.info()
        assert info == await local.info()
        assert info == WorkerInfo(tiny_lm.model_id, tiny_lm.revision, 64, 64, "mean", True)
        assert info.key_prefix() == Embedder(tiny_lm).key_prefix
        assert (
            info.key_prefix(RESPONSE_TEMPLATE_VERSION)
            == Embedder(tiny_lm, template_version=RESPONSE_TEMPLATE_VERSION).key_prefix
        )

        over_http = await remote.embed(TEXTS)
        in_process = await local.embed(TEXTS)
        assert over_http.dtype == np.float32 and over_http.shape == (len(TEXTS), 64)
        np.testing.assert_allclose(over_http, in_process, atol=1e-6, rtol=0)
        np.testing.assert_allclose(over_http, Embedder(tiny_lm).embed(TEXTS), atol=1e-6, rtol=0)
        assert (await remote.embed([])).shape == (0, 64) == (await local.embed([])).shape

        a = await remote.complete(SamplingParams(PROMPT, n=4, max_new_tokens=10, temperature=1.0, seed=11))
        assert a == await remote.complete(SamplingParams(PROMPT, n=4, max_new_tokens=10, temperature=1.0, seed=11))
        assert a == await local.complete(SamplingParams(PROMPT, n=4, max_new_tokens=10, temperature=1.0, seed=11))
        assert len(a) == 4 and len(set(a)) >= 3
        assert a != await remote.complete(SamplingParams(PROMPT, n=4, max_new_tokens=10, temperature=1.0, seed=12))


@pytest.mark.anyio
async def test_large_inputs_are_chunked(server_url: str, tiny_lm: BaseLM) -> None:
    texts = [f"text number {i}" for i in range(7)]
    async with WorkerClient(server_url, chunk_size=3) as small, WorkerClient(server_url) as whole:
        ref = await whole.embed(texts)
        np.testing.assert_allclose(await small.embed(texts), ref, atol=1e-6, rtol=0)
    local = LocalWorker(WorkerEngine.from_lm(tiny_lm), chunk_size=3)
    np.testing.assert_allclose(await local.embed(texts), ref, atol=1e-6, rtol=0)


@pytest.mark.anyio
async def test_refused_requests_raise_with_the_workers_detail(tiny_lm: BaseLM) -> None:
    engine = WorkerEngine.from_lm(tiny_lm)
    local = LocalWorker(engine)
    async with asgi_client(create_worker_app(engine, warm=False)) as remote:
        for worker in (remote, local):
            with pytest.raises(WorkerRequestError) as bad_n:
                await worker.complete(SamplingParams(PROMPT, n=17))
            assert bad_n.value.status_code == 422
            assert any(err["loc"][-1] == "n" for err in bad_n.value.detail)
            with pytest.raises(WorkerRequestError) as too_long:
                await worker.embed(["x" * 3000])
            assert too_long.value.status_code == 422 and "at most 512" in too_long.value.detail
            with pytest.raises(WorkerRequestError):
                await worker.embed([""])


@pytest.mark.anyio
async def test_closed_port_is_unavailable() -> None:
    async with WorkerClient(CLOSED, timeout_s=2.0) as client:
        assert not await client.ready()
        with pytest.raises(WorkerUnavailable, match="unreachable"):
            await client.embed(["hi"])
        with pytest.raises(WorkerUnavailable):
            await client.info()
        with pytest.raises(WorkerUnavailable):
            await client.complete(SamplingParams(PROMPT))


@pytest.mark.anyio
async def test_model_that_cannot_load_is_unavailable(tiny_lm: BaseLM) -> None:
    def missing() -> BaseLM:
        raise BaseLMNotFoundError("no such model")

    engine = WorkerEngine(Embedder(missing, identity=tiny_lm.identity))
    async with asgi_client(create_worker_app(engine, warm=False)) as remote:
        assert not await remote.ready()
        with pytest.raises(WorkerUnavailable, match="503"):
            await remote.embed(["hi"])
        assert (await remote.info()).loaded is False
    with pytest.raises(WorkerUnavailable, match="failed to load"):
        await LocalWorker(engine).embed(["hi"])


@pytest.mark.anyio
async def test_changed_weights_are_detected(tiny_lm: BaseLM) -> None:
    old = create_worker_app(WorkerEngine.from_lm(tiny_lm), warm=False)
    new_identity = LMIdentity(tiny_lm.model_id, "re-saved", 64)
    new = create_worker_app(WorkerEngine.from_lm(tiny_lm, identity=new_identity), warm=False)
    serving = [old]

    async def deployment(scope: Scope, receive: Receive, send: Send) -> None:  # the worker behind one URL
        await serving[0](scope, receive, send)

    async with asgi_client(deployment) as client:
        before = await client.info()
        await client.embed(["hi"])
        serving[0] = new  # redeployed with other weights behind the same URL
        with pytest.raises(WorkerModelChanged):
            await client.embed(["hi"])
        after = await client.info()
        assert after.revision == "re-saved" and after.key_prefix() != before.key_prefix()
        assert (await client.embed(["hi"])).shape == (1, 64)


@pytest.mark.anyio
async def test_build_worker_from_settings(tiny_lm: BaseLM, tiny_lm_path: Path, tmp_path: Path) -> None:
    remote = build_worker(Settings(worker_url="http://127.0.0.1:9/", worker_timeout_s=3.5))
    assert isinstance(remote, WorkerClient) and remote.base_url == "http://127.0.0.1:9"
    await remote.aclose()

    settings = Settings(worker_url=None, embedder=str(tiny_lm_path), device="cpu", cache_dir=tmp_path)
    local = build_worker(settings)
    assert isinstance(local, LocalWorker)
    assert not await local.ready()  # nothing is loaded until asked
    assert (await local.info()).key_prefix() == Embedder(tiny_lm).key_prefix
    await local.load()
    assert await local.ready()
    np.testing.assert_allclose(await local.embed(TEXTS), Embedder(tiny_lm).embed(TEXTS), atol=1e-6, rtol=0)
    await local.aclose()


@pytest.mark.anyio
async def test_a_busy_worker_is_a_full_queue_upstream_not_a_refused_input(tiny_lm: BaseLM) -> None:
    """The worker's 429 (queue full, or work that cannot start before the deadline) reaches the API as QueueFull with
    the worker's Retry-After (the API's 429), as the in-process worker's does; it used to be a 400 'input refused'."""
    engine = WorkerEngine.from_lm(tiny_lm)
    batcher = engine._embed_batcher  # noqa: SLF001
    batcher.max_queue, batcher.retry_after_s = 0, 7  # full: every call is refused, retry after 7 s
    async with asgi_client(create_worker_app(engine, warm=False)) as remote:
        for worker in (remote, LocalWorker(engine)):
            with pytest.raises(QueueFull) as busy:
                await worker.embed(["a text"])
            assert busy.value.retry_after_s == 7
        assert isinstance(busy.value, QueueFull) and not isinstance(busy.value, WorkerRequestError)
        with pytest.raises(WorkerBusy):
            await remote.embed(["a text"])
