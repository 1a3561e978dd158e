"""Embedding worker app: the base LLM behind an OpenAI-style HTTP API (/v1/embeddings, /v1/completions)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from service.batching import QueueFull
from service.deadline import LoopLag, RequestDeadline
from service.embedder.engine import EngineUnavailable, InputTooLong, ModelNotServed, WorkerEngine
from service.embedder.generate import RESPONSE_POOLED_TEMPLATE_VERSION
from service.embedder.prompts import RESPONSE_TEMPLATE_VERSION, TEMPLATE_VERSION
from service.embedder.protocol import (
    CompletionChoice,
    CompletionsRequest,
    CompletionsResponse,
    EmbeddingData,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ModelCard,
    ModelList,
    TemplateVersion,
    Usage,
    encode_base64,
)
from service.metrics import MetricsMiddleware, WorkerMetrics

log = logging.getLogger(__name__)


def model_card(engine: WorkerEngine, template_version: str = TEMPLATE_VERSION) -> ModelCard:
    """The engine's entry of `GET /v1/models`; `key_prefix` is for texts formatted with `template_version`."""
    return ModelCard(
        id=engine.model_id,
        created=engine.created,
        model_id=engine.model_id,
        revision=engine.revision,
        hidden_size=engine.hidden_size,
        dim=engine.dim,
        pooling=engine.pooling,
        loaded=engine.is_loaded,
        template_version=template_version,
        key_prefix=engine.key_prefix(template_version),
        key_prefixes={
            v: engine.key_prefix(v)
            for v in (TEMPLATE_VERSION, RESPONSE_TEMPLATE_VERSION, RESPONSE_POOLED_TEMPLATE_VERSION)
        },
    )


# ---------------------------------------------------------------------------------------------------------
# routes (thin: validation by pydantic, work by the engine, errors mapped in create_worker_app)


def get_engine(request: Request) -> WorkerEngine:
    return request.app.state.engine


EngineDep = Annotated[WorkerEngine, Depends(get_engine)]
router = APIRouter()


def _check_model(engine: WorkerEngine, model: str | None) -> None:
    if not engine.serves(model):
        raise ModelNotServed(f"model {model!r} is not served here; this worker serves {engine.model_id!r}")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (the model may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(engine: EngineDep) -> JSONResponse:
    """200 once the model is loaded, else 503 (loading, or failed: see the worker's log)."""
    if engine.is_loaded:
        return JSONResponse({"status": "ready", "model": str(engine.identity)})
    body: dict[str, Any] = {"status": "failed" if engine.load_error else "loading", "model": str(engine.identity)}
    if engine.load_error:
        body["error"] = engine.load_error
    return JSONResponse(body, status_code=503)


@router.get("/v1/models")
async def list_models(
    engine: EngineDep, template_version: Annotated[TemplateVersion, Query()] = TEMPLATE_VERSION
) -> ModelList:
    """OpenAI model list; `key_prefix` is for texts formatted with `template_version`."""
    return ModelList(data=[model_card(engine, template_version)])


@router.post("/v1/embeddings")
async def create_embeddings(body: EmbeddingsRequest, engine: EngineDep) -> EmbeddingsResponse:
    """Pooled last hidden states of raw texts (format item prompts before sending them)."""
    _check_model(engine, body.model)
    result = await engine.aembed_with_usage(body.texts)
    if body.encoding_format == "base64":
        data = [EmbeddingData(index=i, embedding=encode_base64(v)) for i, v in enumerate(result.vectors)]
    else:
        data = [EmbeddingData(index=i, embedding=v) for i, v in enumerate(result.vectors.tolist())]
    usage = Usage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
    return EmbeddingsResponse(data=data, model=engine.model_id, revision=engine.revision, usage=usage)


@router.post("/v1/completions")
async def create_completions(body: CompletionsRequest, engine: EngineDep) -> CompletionsResponse:
    """n samples of one prompt in one batched generate call; a fixed seed repeats exactly."""
    _check_model(engine, body.model)
    result = await engine.acomplete_with_usage(body.sampling_params(), vectors=body.return_embeddings)
    vectors = [None] * len(result.texts) if result.vectors is None else [encode_base64(v) for v in result.vectors]
    choices = [
        CompletionChoice(index=i, text=t, finish_reason=r, embedding=e)
        for i, (t, r, e) in enumerate(zip(result.texts, result.finish_reasons, vectors, strict=True))
    ]
    completion = sum(result.completion_tokens)
    usage = Usage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=completion,
        total_tokens=result.prompt_tokens + completion,
    )
    return CompletionsResponse(
        id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=engine.model_id, choices=choices, usage=usage
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    worker_metrics: WorkerMetrics = request.app.state.metrics
    return Response(worker_metrics.render(), media_type=worker_metrics.content_type)


def _error(status: int, detail: str) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc) or detail}, status_code=status)

    return handler


def create_worker_app(
    engine: WorkerEngine, *, warm: bool = True, request_timeout_s: float | None = None, retry_after_s: int = 5
) -> FastAPI:
    """The worker's FastAPI app. With `warm`, the lifespan loads the model in the background: /healthz
    answers at once, /readyz turns 200 when the model is loaded, requests before that wait for it. With
    `request_timeout_s`, every request has that deadline (service.deadline), as the API's have.
    """

    loop_lag = LoopLag()  # requests wait unread while the loop runs late: their deadlines start that much earlier

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            if request_timeout_s is not None:
                tg.start_soon(loop_lag.watch)
            if warm:
                tg.start_soon(_warm_up, engine)
            yield
            tg.cancel_scope.cancel()  # a load still running is abandoned (its thread ends on its own)
        await engine.aclose()

    app = FastAPI(title="gpo-serve embedding worker", version="1", lifespan=lifespan)
    app.state.engine = engine
    app.state.metrics = WorkerMetrics()  # per app: two apps in one process (tests) never share counters
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if request_timeout_s is not None:
        app.add_middleware(
            RequestDeadline,
            timeout_s=request_timeout_s,
            retry_after_s=retry_after_s,
            on_disconnect=app.state.metrics.observe_disconnect,
            loop_lag=loop_lag,
        )
    app.add_exception_handler(EngineUnavailable, _error(503, "model unavailable"))
    app.add_exception_handler(InputTooLong, _error(422, "input too long"))
    app.add_exception_handler(ModelNotServed, _error(404, "model not served"))
    app.add_exception_handler(QueueFull, _busy)
    app.include_router(router)
    return app


async def _busy(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after_s)})


async def _warm_up(engine: WorkerEngine) -> None:
    t0 = time.perf_counter()
    try:
        await engine.aload()
    except EngineUnavailable:
        return  # logged by the engine; /readyz reports it and each request retries the load
    except Exception:  # a failed warm-up pass must not take the server down: requests will show the error
        log.exception("worker warm-up failed")
        return
    log.info("worker ready in %.1f s: %s", time.perf_counter() - t0, engine.key_prefix())
