"""create_app(settings) -> FastAPI: the lifespan opens every resource once (and closes it), routers do the rest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI

from service.api import generate, groups, health, predict
from service.api.body_limit import BodySizeLimit, HeaderLimit
from service.api.errors import install_error_handlers
from service.api.openapi import install_limited_openapi
from service.cache import build_vector_cache
from service.config import Settings, get_settings
from service.db.migrate import upgrade_database
from service.db.session import make_engine, make_sessionmaker, normalize_url
from service.deadline import LoopLag, RequestDeadline
from service.embedder.client import LocalWorker, WorkerUnavailable, build_generator, build_worker
from service.gpo.checkpoint import CheckpointError
from service.limits import Limits
from service.metrics import Metrics, MetricsMiddleware
from service.serving.kinds import CHOICE, KINDS, Kind
from service.serving.predictor import EmbedderMismatch, Predictor
from service.serving.services import Services

log = logging.getLogger(__name__)


def _engine_options(settings: Settings) -> dict[str, Any]:
    if normalize_url(settings.database_url).get_backend_name() == "postgresql":
        # Bounded: a Postgres that does not answer makes requests fail with 503, not hang.
        return {"connect_args": {"connect_timeout": settings.database_connect_timeout_s}}
    return {}


def _load_predictor(settings: Settings, kind: Kind) -> Predictor:
    """The latest version of the checkpoint `kind`'s setting names; it must be a checkpoint of that kind (the
    multiple-choice one is the deployment's main checkpoint, whatever kind it says it is)."""
    import torch

    from service.embedder.loading import resolve_device

    if kind is CHOICE and settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    name = kind.checkpoint_name(settings)
    predictor = Predictor.from_store(settings.model_store, name, device=resolve_device(settings.device))
    if kind is not CHOICE and predictor.kind != kind.name:
        raise CheckpointError(f"{predictor.model_version} is a {predictor.kind} checkpoint, not a {kind.name} one")
    if predictor.matcher is not None and settings.matcher:
        from service.embedder.sentence import attach_question_encoder

        try:
            attach_question_encoder(predictor, device=str(resolve_device(settings.device)))
        except (ValueError, FileNotFoundError) as e:
            raise CheckpointError(
                f"{predictor.model_version} matches reworded questions, but {e} (or GPO_MATCHER=false)"
            ) from e
        log.info("%s: questions outside the prior bank are matched to known ones", predictor.model_version)
    return predictor


@asynccontextmanager
async def open_services(settings: Settings, metrics: Metrics) -> AsyncIterator[Services]:
    """Migrate the database, open it, the cache, the worker and the checkpoint; check the checkpoint against the
    worker's embedder (a mismatch raises EmbedderMismatch: the API refuses to start). Closes all on exit."""
    async with AsyncExitStack() as stack:
        if settings.migrate_on_start:
            await anyio.to_thread.run_sync(upgrade_database, settings.database_url)
        engine = make_engine(settings.database_url, **_engine_options(settings))
        stack.callback(engine.dispose)
        cache = build_vector_cache(settings)
        stack.callback(cache.close)
        worker = build_worker(settings)
        stack.push_async_callback(worker.aclose)
        generator = build_generator(settings, worker)
        if generator is not worker:
            stack.push_async_callback(generator.aclose)
        models: dict[str, Predictor] = {}
        for kind in KINDS.values():
            if kind is not CHOICE and not kind.checkpoint_name(settings):
                continue
            try:
                models[kind.name] = await anyio.to_thread.run_sync(_load_predictor, settings, kind)
            except CheckpointError as exc:
                if kind is CHOICE:
                    log.error(
                        "refusing to start: %s (train one with `gpo train`, or set GPO_MODEL_STORE/GPO_CHECKPOINT)", exc
                    )
                else:
                    log.error("refusing to start: %s (%s)", exc, kind.env)
                raise
            log.info("%s checkpoint %s loaded", kind.name, models[kind.name].model_version)
        predictor = models["choice"]
        services = Services(
            settings, engine, make_sessionmaker(engine), cache, worker, models, metrics, generator=generator
        )
        stack.push_async_callback(services.aclose)

        if isinstance(worker, LocalWorker):
            try:  # warm-up: the first request pays no model load
                await worker.load()
            except WorkerUnavailable as exc:
                log.error("the in-process base LLM failed to load (%s); /readyz reports it", exc)
        try:
            await services.embedder_keys()
        except EmbedderMismatch as exc:
            log.error("refusing to start: %s", exc)
            raise
        except WorkerUnavailable as exc:
            # A remote worker may start after the API: checked on its first use; /readyz says not ready till then.
            log.warning("embedding worker not reachable yet (%s); the embedder is checked on first use", exc)
        metrics.model.info(
            {"model_version": predictor.model_version, "embedder": predictor.embedder_meta.get("key_prefix") or "none"}
        )
        yield services
        log.info("shutting down")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API over `settings` (default: from the environment). Nothing is opened before the app starts."""
    settings = settings or get_settings()
    metrics = Metrics()
    loop_lag = LoopLag()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Few threads for blocking work: each one running Python holds the GIL from the event loop in turn
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        async with open_services(settings, metrics) as services:
            app.state.services = services
            # how late the event loop runs (gpo_event_loop_lag_seconds): requests wait that long before the app sees
            # them, so their deadlines start that much earlier
            watcher = asyncio.get_running_loop().create_task(
                loop_lag.watch(metrics.loop_lag_seconds.observe), name="loop-lag"
            )
            try:
                yield
            finally:
                watcher.cancel()
        del app.state.services

    app = FastAPI(
        title="gpo-serve",
        version="1",
        summary="Group preference prediction (GPO) as a service: register a group's answers, predict, rank generations",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HeaderLimit, max_bytes=settings.max_header_bytes, max_headers=settings.max_headers)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(  # last added: outermost, so the deadline covers everything below it
        RequestDeadline,
        timeout_s=settings.request_timeout_s,
        retry_after_s=settings.retry_after_s,
        on_timeout=metrics.observe_deadline,
        on_disconnect=metrics.observe_disconnect,
        loop_lag=loop_lag,
    )
    install_error_handlers(app)
    for router in (groups.router, predict.router, generate.router, health.router):
        app.include_router(router)
    install_limited_openapi(app, Limits.from_settings(settings))
    return app
