"""Vector cache: numpy arrays (item embeddings, encoded group contexts) by string key, in Redis or in process."""

from __future__ import annotations

import logging
import struct
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import redis

    from service.config import Settings

log = logging.getLogger(__name__)

# Wire format of one array: MAGIC, then dtype string length (u8), dtype string (numpy `dtype.str`, e.g. "<f4"),
# ndim (u8), each dimension (u32 little-endian), then the raw C-order bytes. No pickle: a value read back from
# a shared Redis can only ever become a plain numeric array.
_MAGIC = b"GV1"
_ALLOWED_KINDS = "biufc"  # bool, int, uint, float, complex: kinds whose bytes hold no pointers
_MGET_CHUNK = 1000  # keys per MGET: bounds one reply's size
_SCAN_COUNT = 1000


class CacheFormatError(ValueError):
    """Bytes that are not an encoded vector (another writer's value, or a truncated one)."""


def encode_vector(array: np.ndarray) -> bytes:
    """Header + raw bytes of `array`; dtype (byte order included) and shape come back exactly."""
    arr = np.asarray(array)
    if arr.dtype.kind not in _ALLOWED_KINDS:
        raise TypeError(f"only numeric arrays can be cached, got dtype {arr.dtype}")
    if arr.ndim > 255:
        raise ValueError(f"at most 255 dimensions, got {arr.ndim}")
    dtype = arr.dtype.str.encode("ascii")
    header = _MAGIC + struct.pack("<B", len(dtype)) + dtype + struct.pack(f"<B{arr.ndim}I", arr.ndim, *arr.shape)
    return header + np.ascontiguousarray(arr).tobytes()


def decode_vector(data: bytes) -> np.ndarray:
    """Inverse of `encode_vector`: a read-only array over `data` (no copy)."""
    try:
        if not data.startswith(_MAGIC):
            raise CacheFormatError("missing header")
        pos = len(_MAGIC)
        (n_dtype,) = struct.unpack_from("<B", data, pos)
        dtype = np.dtype(data[pos + 1 : pos + 1 + n_dtype].decode("ascii"))
        pos += 1 + n_dtype
        (ndim,) = struct.unpack_from("<B", data, pos)
        shape = struct.unpack_from(f"<{ndim}I", data, pos + 1)
        pos += 1 + 4 * ndim
    except (struct.error, UnicodeDecodeError, TypeError) as exc:
        raise CacheFormatError(f"bad header: {exc}") from exc
    if dtype.kind not in _ALLOWED_KINDS:
        raise CacheFormatError(f"dtype {dtype} is not numeric")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - pos != expected:  # a truncated value is a miss, never a wrong vector
        raise CacheFormatError(f"{len(data) - pos} bytes of data for shape {shape} {dtype}")
    return np.frombuffer(data, dtype=dtype, offset=pos).reshape(shape)


class VectorCache(ABC):
    """Arrays by string key. Callers build keys that name everything the value depends on (embedder id and
    revision, pooling, template), so a model change never reads a stale vector.

    Implementations never raise on a backend failure: a failed read is a miss, a failed write is dropped.
    Returned arrays are read-only.
    """

    backend: str
    blocking: bool = True  # calls may wait on the network: callers on an event loop run them in a thread

    def __init__(self) -> None:
        self._stats_lock = threading.Lock()
        self._hits = self._misses = self._errors = 0

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """Values for `keys` in order, None where absent (or unreadable)."""

    @abstractmethod
    def put_many(self, items: Mapping[str, np.ndarray]) -> None:
        """Store each array under its key, replacing any old value."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every key that starts with `prefix`; returns how many were removed."""

    @abstractmethod
    def ping(self) -> bool:
        """Whether the backend answers now."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and memory (the cache must not be used afterwards)."""

    def get(self, key: str) -> np.ndarray | None:
        return self.get_many([key])[0]

    def put(self, key: str, value: np.ndarray) -> None:
        self.put_many({key: value})

    @property
    def stats(self) -> dict[str, int | str]:
        """Counters since creation: hits, misses (per key) and backend errors (per failed call)."""
        with self._stats_lock:
            return {"backend": self.backend, "hits": self._hits, "misses": self._misses, "errors": self._errors}

    def _count(self, hits: int = 0, misses: int = 0, errors: int = 0) -> None:
        with self._stats_lock:
            self._hits += hits
            self._misses += misses
            self._errors += errors


def _frozen_copy(value: np.ndarray) -> np.ndarray:
    arr = np.array(value, copy=True)  # later changes to the caller's array must not reach the cache
    if arr.dtype.kind not in _ALLOWED_KINDS:
        raise TypeError(f"only numeric arrays can be cached, got dtype {arr.dtype}")
    arr.setflags(write=False)
    return arr


class LRUVectorCache(VectorCache):
    """In-process cache of at most `max_items` arrays, least recently used evicted first; thread-safe."""

    backend = "lru"
    blocking = False  # a dict lookup under a lock: cheaper than a hop to a worker thread

    def __init__(self, max_items: int) -> None:
        super().__init__()
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = max_items
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                value = self._items.get(key)
                if value is not None:
                    self._items.move_to_end(key)
                out.append(value)
        hits = sum(v is not None for v in out)
        self._count(hits=hits, misses=len(out) - hits)
        return out

    def put_many(self, items: Mapping[str, np.ndarray]) -> None:
        frozen = {k: _frozen_copy(v) for k, v in items.items()}  # copy outside the lock
        with self._lock:
            for key, value in frozen.items():
                self._items[key] = value
                self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
                self.evictions += 1

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            doomed = [k for k in self._items if k.startswith(prefix)]
            for key in doomed:
                del self._items[key]
        return len(doomed)

    def ping(self) -> bool:
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def stats(self) -> dict[str, int | str]:
        with self._lock:
            size, evictions = len(self._items), self.evictions
        return {**super().stats, "size": size, "evictions": evictions}

    def close(self) -> None:
        with self._lock:
            self._items.clear()


def _glob_escape(text: str) -> str:
    """`text` as a literal in a Redis SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisVectorCache(VectorCache):
    """Arrays in Redis under `prefix + key`, batched (MGET, pipelined SET), optionally with a TTL.

    Degrades instead of failing: while Redis is unreachable or erroring, reads are misses and writes are
    dropped, each failed call counts one error, and a warning is logged at most once per `warn_every_s`.
    After a failure Redis is left alone for `retry_after_s` (calls skip it at once, so a dead Redis costs
    no timeout per request), then tried again: when it comes back the cache works again without a restart.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = "gpo:",
        *,
        ttl_s: float | None = None,
        connect_timeout_s: float = 0.5,
        timeout_s: float = 1.0,
        retry_after_s: float = 2.0,
        warn_every_s: float = 30.0,
    ) -> None:
        super().__init__()
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        self.url = url
        self.prefix = prefix
        self.ttl_ms = None if ttl_s is None else max(1, round(ttl_s * 1000))
        self.retry_after_s = retry_after_s
        self.warn_every_s = warn_every_s
        # No retries inside redis-py: a failed call degrades at once and the next call tries again.
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        self._error_types: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self._state_lock = threading.Lock()
        self._down_until = 0.0  # monotonic time before which calls skip Redis
        self._last_warning = float("-inf")
        self._skipped = 0

    @property
    def _safe_url(self) -> str:
        """The URL without a password (it goes into logs)."""
        scheme, sep, rest = self.url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}"

    def _available(self) -> bool:
        with self._state_lock:
            if time.monotonic() < self._down_until:
                self._skipped += 1
                return False
            return True

    def _failed(self, what: str, exc: Exception) -> None:
        self._count(errors=1)
        now = time.monotonic()
        with self._state_lock:
            self._down_until = now + self.retry_after_s
            warn = now - self._last_warning >= self.warn_every_s
            if warn:
                self._last_warning = now
        if warn:
            log.warning(
                "redis cache at %s failed on %s (%s: %s); serving without it, retrying in %.1f s",
                self._safe_url,
                what,
                type(exc).__name__,
                exc,
                self.retry_after_s,
            )

    def _recovered(self) -> None:
        with self._state_lock:
            was_down = self._down_until > 0.0
            self._down_until = 0.0
        if was_down:
            log.info("redis cache at %s answers again", self._safe_url)

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        keys = list(keys)
        if not keys:
            return []
        if not self._available():
            self._count(misses=len(keys))
            return [None] * len(keys)
        raw: list[bytes | None] = []
        try:
            for start in range(0, len(keys), _MGET_CHUNK):
                chunk = [self.prefix + k for k in keys[start : start + _MGET_CHUNK]]
                raw.extend(self._client.mget(chunk))
        except self._error_types as exc:
            self._failed("MGET", exc)
            self._count(misses=len(keys))
            return [None] * len(keys)
        self._recovered()
        out: list[np.ndarray | None] = []
        bad = 0
        for key, data in zip(keys, raw, strict=True):
            if data is None:
                out.append(None)
                continue
            try:
                out.append(decode_vector(data))
            except CacheFormatError as exc:
                bad += 1
                log.warning("redis cache: unreadable value under %r (%s); treated as a miss", key, exc)
                out.append(None)
        hits = sum(v is not None for v in out)
        self._count(hits=hits, misses=len(out) - hits, errors=bad)
        return out

    def put_many(self, items: Mapping[str, np.ndarray]) -> None:
        if not items:
            return
        encoded = {self.prefix + k: encode_vector(v) for k, v in items.items()}  # bad dtypes raise here
        if not self._available():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, data in encoded.items():
                pipe.set(key, data, px=self.ttl_ms)
            pipe.execute()
        except self._error_types as exc:
            self._failed("SET", exc)
            return
        self._recovered()

    def delete_prefix(self, prefix: str) -> int:
        """Remove `self.prefix + prefix*` with SCAN + UNLINK (never KEYS, which blocks Redis)."""
        if not self._available():
            return 0
        removed = 0
        try:
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=_glob_escape(self.prefix + prefix) + "*", count=_SCAN_COUNT):
                batch.append(key)
                if len(batch) >= _SCAN_COUNT:
                    removed += int(self._client.unlink(*batch))
                    batch = []
            if batch:
                removed += int(self._client.unlink(*batch))
        except self._error_types as exc:
            self._failed("SCAN/UNLINK", exc)
            return removed
        self._recovered()
        return removed

    def ping(self) -> bool:
        """Asks Redis even while calls are skipping it, so health checks see a recovery at once."""
        try:
            ok = bool(self._client.ping())
        except self._error_types as exc:
            self._failed("PING", exc)
            return False
        self._recovered()
        return ok

    @property
    def stats(self) -> dict[str, int | str]:
        with self._state_lock:
            skipped = self._skipped
        return {**super().stats, "skipped": skipped}

    def close(self) -> None:
        try:
            self._client.close()
        except self._error_types as exc:  # closing a dead connection is not worth a failure
            log.debug("closing redis cache: %s", exc)


def build_vector_cache(settings: Settings) -> VectorCache:
    """Redis when `settings.redis_url` is set, else an in-process LRU of `settings.cache_max_items`."""
    if settings.redis_url:
        cache: VectorCache = RedisVectorCache(settings.redis_url, settings.redis_prefix)
        log.info("vector cache: redis (prefix %r)", settings.redis_prefix)
        return cache
    log.info("vector cache: in-process LRU of %d items", settings.cache_max_items)
    return LRUVectorCache(settings.cache_max_items)
