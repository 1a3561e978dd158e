"""Readiness: each dependency checked for real (database, cache, worker with the embedder the checkpoints need,
model)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service.embedder.client import WorkerError
from service.serving.predictor import EmbedderMismatch
from service.serving.services import in_thread

if TYPE_CHECKING:
    from service.serving.services import Services

log = logging.getLogger(__name__)


def _database_answers(services: Services) -> bool:
    try:
        with services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError as exc:
        log.warning("readiness: database check failed (%s)", type(exc).__name__)
        return False


async def _worker_check(services: Services) -> str:
    if not await services.worker.ready():
        return "unavailable"
    try:
        await services.embedder_keys()
    except EmbedderMismatch as exc:
        log.error("readiness: %s", exc)
        return "embedder mismatch"
    except WorkerError:
        return "unavailable"
    return "ok"


async def readiness(services: Services) -> tuple[bool, dict[str, str]]:
    """Each dependency checked for real; a Redis cache that fails is 'degraded' (the API answers without it)."""
    checks = {
        "database": "ok" if await in_thread(_database_answers, services) else "unavailable",
        "cache": "ok" if await in_thread(services.cache.ping) else "degraded",
        "worker": await _worker_check(services),
        "model": "ok" if services.predictor.model is not None else "not loaded",
    }
    ready = all(status == "ok" for name, status in checks.items() if name != "cache")
    return ready, checks
