"""Encoded group contexts (GPO keys/values per layer, see GPO.encode_context), cached per context version.

A state is valid for exactly one (checkpoint, embedder, group row, context version): the key names all four,
so a context change (a new version) or a new checkpoint can never read an old state; group row ids are never
reused (see service.db.models.Group). The in-process LRU is bounded in bytes; the optional shared cache
(Redis, with a TTL) lets the other replicas skip the encoding too.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.cache import VectorCache
    from service.config import Settings
    from service.gpo.model import ContextState
    from service.serving.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateKey:
    model: str  # checkpoint name/version
    embedder: str  # key prefix of the embeddings the context was encoded from ("" when none)
    group_row: int  # the group's database id (never reused)
    version: int  # the group's context version

    def __str__(self) -> str:
        emb = hashlib.sha1(self.embedder.encode()).hexdigest()[:12]
        return f"{self.model}|{emb}|g{self.group_row}|v{self.version}"


def _nbytes(state: ContextState) -> int:
    n = state.keys.numel() + state.values.numel() + (0 if state.z is None else state.z.numel())
    return n * state.keys.element_size()


class ContextCache:
    """States by StateKey: a byte-bounded in-process LRU in front of an optional shared vector cache.

    Thread-safe. A shared-cache failure is a miss (the shared cache degrades by itself, see RedisVectorCache).
    """

    def __init__(self, predictor: Predictor, max_bytes: int, shared: VectorCache | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.predictor = predictor
        self.max_bytes = max_bytes
        self.shared = shared
        self._items: OrderedDict[str, tuple[ContextState, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = {"local": 0, "shared": 0}
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 or self.shared is not None

    def get(self, key: StateKey, predictor: Predictor | None = None) -> tuple[ContextState | None, str]:
        """(state, where it was found: "local" | "shared" | "miss"). `predictor`: the model the state belongs to
        (default: the choice model), whose layout a shared value is read with."""
        predictor = predictor or self.predictor
        k = str(key)
        with self._lock:
            hit = self._items.get(k)
            if hit is not None:
                self._items.move_to_end(k)
                self.hits["local"] += 1
                return hit[0], "local"
        if self.shared is not None:
            array = self.shared.get(k)
            if array is not None:
                try:
                    state = predictor.state_from_array(array)
                except ValueError as exc:  # another checkpoint's layout under our key: never trust it
                    log.warning("context cache: unusable shared value for %s (%s)", k, exc)
                else:
                    self._put_local(k, state)
                    with self._lock:
                        self.hits["shared"] += 1
                    return state, "shared"
        with self._lock:
            self.misses += 1
        return None, "miss"

    def put(self, key: StateKey, state: ContextState, predictor: Predictor | None = None) -> None:
        k = str(key)
        self._put_local(k, state)
        if self.shared is not None:
            self.shared.put(k, (predictor or self.predictor).state_to_array(state))

    def _put_local(self, k: str, state: ContextState) -> None:
        size = _nbytes(state)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(k, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[k] = (state, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, n) = self._items.popitem(last=False)
                self._bytes -= n

    def forget_group(self, group_row: int) -> int:
        """Drop this replica's states of one group (its context changed); returns how many."""
        tag = f"|g{group_row}|"
        with self._lock:
            doomed = [k for k in self._items if tag in k]
            for k in doomed:
                self._bytes -= self._items.pop(k)[1]
        return len(doomed)

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._items),
                "bytes": self._bytes,
                **{f"hits_{k}": v for k, v in self.hits.items()},
                "misses": self.misses,
            }

    def close(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
        if self.shared is not None:
            self.shared.close()


def build_context_cache(settings: Settings, predictor: Predictor) -> ContextCache:
    """In-process LRU of GPO_CONTEXT_CACHE_MB, plus Redis (GPO_REDIS_URL) with GPO_CONTEXT_CACHE_TTL_S."""
    shared = None
    if settings.redis_url and settings.context_cache_shared:
        from service.cache import RedisVectorCache

        shared = RedisVectorCache(
            settings.redis_url, settings.redis_prefix + "ctx:", ttl_s=settings.context_cache_ttl_s
        )
    return ContextCache(predictor, int(settings.context_cache_mb * 2**20), shared)
