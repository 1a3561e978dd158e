"""Item embeddings for the API: the vector cache first, the worker for the misses, written back to the cache."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio.to_thread
import numpy as np

if TYPE_CHECKING:
    from service.cache import VectorCache
    from service.embedder.client import Worker
    from service.metrics import Metrics

log = logging.getLogger(__name__)

WORKER_CHUNK = 64  # texts per worker call


def cache_key(key_prefix: str, text: str) -> str:
    """The cache key of `text`'s vector: the prefix names the weights, pooling and template (no stale vectors)."""
    return f"{key_prefix}|{text}"


class ItemEmbeddings:
    """Embeddings of item texts by key prefix; blocking cache calls run in worker threads, not on the event loop."""

    def __init__(
        self, cache: VectorCache, worker: Worker, metrics: Metrics | None = None, chunk: int = WORKER_CHUNK
    ) -> None:
        self.cache = cache
        self.worker = worker
        self.metrics = metrics
        self.chunk = chunk

    async def embed(self, texts: Sequence[str], key_prefix: str) -> np.ndarray:
        """[len(texts), D] float32 vectors in order; each distinct text is looked up (and embedded) once."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return np.zeros((0, 0), dtype=np.float32)
        keys = [cache_key(key_prefix, t) for t in unique]
        if self.cache.blocking:
            cached = await anyio.to_thread.run_sync(self.cache.get_many, keys)
        else:
            cached = self.cache.get_many(keys)
        vectors: dict[str, np.ndarray] = {t: v for t, v in zip(unique, cached, strict=True) if v is not None}
        missing = [t for t in unique if t not in vectors]
        if self.metrics is not None:
            backend = self.cache.backend
            self.metrics.cache_lookups.labels(backend, "hit").inc(len(vectors))
            self.metrics.cache_lookups.labels(backend, "miss").inc(len(missing))
        for start in range(0, len(missing), self.chunk):
            # Bounded calls: each one is well within the worker timeout, and what was embedded is cached at once.
            part = missing[start : start + self.chunk]
            computed = np.asarray(await self.worker.embed(part), dtype=np.float32)  # [m, D]
            fresh = dict(zip(part, computed, strict=True))
            await anyio.to_thread.run_sync(self.cache.put_many, {cache_key(key_prefix, t): v for t, v in fresh.items()})
            vectors.update(fresh)
            if self.metrics is not None:
                self.metrics.embedded_texts.inc(len(part))
        if missing:
            log.debug("embedded %d texts (%d from the cache)", len(missing), len(unique) - len(missing))
        return np.stack([np.asarray(vectors[t], dtype=np.float32) for t in texts])
