"""Vector caches: the in-process LRU, Redis (a real server on 127.0.0.1:6379), and Redis going away."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from service.cache import (
    CacheFormatError,
    LRUVectorCache,
    RedisVectorCache,
    build_vector_cache,
    decode_vector,
    encode_vector,
)
from service.config import Settings
from tests.ports import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"
CLOSED_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connections are refused at once


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal(64).astype(np.float32),
        "f16-2d": rng.standard_normal((3, 5)).astype(np.float16),
        "i64-3d": np.arange(24, dtype=np.int64).reshape(2, 3, 4),
        "bool": np.array([True, False, True]),
        "f64-big-endian": np.arange(4, dtype=">f8"),
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 64), dtype=np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((4, 3)).astype(np.float32)),
        "strided": np.arange(20, dtype=np.float32)[::3],
    }


def assert_same(got: np.ndarray | None, want: np.ndarray) -> None:
    assert got is not None
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert np.array_equal(got, want)


# ---------------------------------------------------------------------------------------------------------
# wire format


@pytest.mark.parametrize("name", list(sample_arrays()))
def test_encoding_preserves_dtype_shape_and_values(name: str) -> None:
    want = sample_arrays()[name]
    got = decode_vector(encode_vector(want))
    assert_same(got, want)
    assert not got.flags.writeable


def test_encoding_is_compact_and_refuses_non_numeric() -> None:
    vec = np.zeros(576, dtype=np.float32)
    assert len(encode_vector(vec)) - vec.nbytes == 3 + 1 + 3 + 1 + 4  # magic, dtype "<f4", ndim, one dim
    with pytest.raises(TypeError):
        encode_vector(np.array(["a", "b"], dtype=object))


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"GV1", encode_vector(np.ones(8, np.float32))[:-1], encode_vector(np.ones(8, np.float32)) + b"x"],
)
def test_decoding_refuses_bad_bytes(data: bytes) -> None:
    with pytest.raises(CacheFormatError):
        decode_vector(data)


# ---------------------------------------------------------------------------------------------------------
# in-process LRU


def test_lru_round_trip_and_stats() -> None:
    cache = LRUVectorCache(100)
    arrays = sample_arrays()
    cache.put_many(arrays)
    got = cache.get_many([*arrays, "absent"])
    for key, value in zip(arrays, got, strict=False):
        assert_same(value, arrays[key])
    assert got[-1] is None
    assert cache.get("absent") is None
    assert cache.stats == {
        "backend": "lru",
        "hits": len(arrays),
        "misses": 2,
        "errors": 0,
        "size": len(arrays),
        "evictions": 0,
    }
    assert cache.ping()


def test_lru_evicts_least_recently_used() -> None:
    cache = LRUVectorCache(2)
    cache.put("a", np.zeros(2, np.float32))
    cache.put("b", np.ones(2, np.float32))
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", np.full(2, 2.0, np.float32))
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2 and cache.stats["evictions"] == 1
    cache.put("a", np.full(2, 7.0, np.float32))  # replacing a key neither grows nor evicts
    assert len(cache) == 2 and np.array_equal(cache.get("a"), np.full(2, 7.0, np.float32))


def test_lru_values_are_isolated_from_callers() -> None:
    cache = LRUVectorCache(4)
    vec = np.zeros(3, np.float32)
    cache.put("k", vec)
    vec[0] = 9.0  # the caller's array changes after the put
    got = cache.get("k")
    assert got is not None and got[0] == 0.0
    with pytest.raises(ValueError):
        got[0] = 1.0  # read-only: one caller cannot corrupt another's vector


def test_lru_delete_prefix_and_threads() -> None:
    cache = LRUVectorCache(50)
    cache.put_many({f"m1|{i}": np.full(4, i, np.float32) for i in range(10)})
    cache.put_many({f"m2|{i}": np.full(4, i, np.float32) for i in range(5)})
    assert cache.delete_prefix("m1|") == 10
    assert len(cache) == 5

    def hammer(seed: int) -> None:
        for i in range(200):
            key = f"t{(seed * 7 + i) % 80}"
            cache.put(key, np.full(4, i, np.float32))
            cache.get_many([key, "m2|0"])

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50
    stats = cache.stats
    assert stats["hits"] + stats["misses"] == 4 * 200 * 2


# ---------------------------------------------------------------------------------------------------------
# Redis


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The local Redis, started (without persistence) when it is not running."""
    if not _redis_answers(REDIS_URL):
        if shutil.which("redis-server") is None:
            pytest.skip("no Redis on 127.0.0.1:6379 and no redis-server to start")
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379"]
            + ["--save", "", "--appendonly", "no"],
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 5
        while not _redis_answers(REDIS_URL):
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test session; every key under it is deleted at the end."""
    prefix = f"gpo-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    raw = redis.Redis.from_url(redis_url)
    keys = list(raw.scan_iter(match=prefix + "*", count=1000))
    if keys:
        raw.unlink(*keys)
    raw.close()


@pytest.fixture()
def rcache(redis_url: str, redis_prefix: str) -> Iterator[RedisVectorCache]:
    cache = RedisVectorCache(redis_url, redis_prefix + uuid.uuid4().hex[:8] + ":")
    yield cache
    cache.close()


def test_redis_round_trip_preserves_arrays_exactly(rcache: RedisVectorCache) -> None:
    arrays = sample_arrays()
    rcache.put_many(arrays)
    got = rcache.get_many([*arrays, "absent"])
    for key, value in zip(arrays, got, strict=False):
        assert_same(value, arrays[key])
    assert got[-1] is None
    stats = rcache.stats
    assert (stats["backend"], stats["hits"], stats["misses"], stats["errors"]) == ("redis", len(arrays), 1, 0)
    assert rcache.ping()
    assert rcache.get_many([]) == []


def test_redis_keys_carry_the_prefix_and_ttl(redis_url: str, redis_prefix: str) -> None:
    prefix = redis_prefix + "ttl:"
    cache = RedisVectorCache(redis_url, prefix, ttl_s=30)
    cache.put("model@rev|mean|gpo-mc-v1|abc", np.ones(4, np.float32))
    raw = redis.Redis.from_url(redis_url)
    assert raw.exists(prefix + "model@rev|mean|gpo-mc-v1|abc") == 1
    assert 0 < raw.pttl(prefix + "model@rev|mean|gpo-mc-v1|abc") <= 30_000
    cache.close()
    raw.close()


def test_redis_large_batches(rcache: RedisVectorCache) -> None:
    items = {f"k{i}": np.full(8, i, np.float32) for i in range(2500)}  # more than one MGET chunk
    rcache.put_many(items)
    got = rcache.get_many(list(items))
    assert all(np.array_equal(g, items[k]) for k, g in zip(items, got, strict=True))


def test_redis_unreadable_value_is_a_miss(rcache: RedisVectorCache, redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    raw.set(rcache.prefix + "bad", b"not a vector")
    raw.close()
    assert rcache.get("bad") is None
    assert (rcache.stats["misses"], rcache.stats["errors"]) == (1, 1)


def test_redis_delete_prefix_is_literal(rcache: RedisVectorCache) -> None:
    rcache.put_many({"a*[b]|1": np.ones(2, np.float32), "a*[b]|2": np.ones(2, np.float32)})
    rcache.put_many({"ab|1": np.ones(2, np.float32), "a*[b]x": np.ones(2, np.float32)})
    assert rcache.delete_prefix("a*[b]|") == 2  # glob characters in the prefix match only themselves
    assert [v is None for v in rcache.get_many(["a*[b]|1", "a*[b]|2", "ab|1", "a*[b]x"])] == [
        True,
        True,
        False,
        False,
    ]


def test_redis_down_degrades_to_misses(caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisVectorCache(CLOSED_URL, "x:", retry_after_s=0.0, warn_every_s=60.0)
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="service.cache"):
        assert cache.get_many(["a", "b"]) == [None, None]
        cache.put_many({"a": np.ones(3, np.float32)})  # dropped, not raised
        assert cache.get("a") is None
        assert not cache.ping()
        assert cache.delete_prefix("") == 0
    assert time.perf_counter() - t0 < 2.0
    stats = cache.stats
    assert (stats["hits"], stats["misses"], stats["errors"], stats["skipped"]) == (0, 3, 5, 0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # at most one warning per warn_every_s
    assert "serving without it" in warnings[0].getMessage()
    cache.close()


def test_redis_down_is_skipped_until_retry_time() -> None:
    cache = RedisVectorCache(CLOSED_URL, "x:", retry_after_s=60.0)
    assert cache.get("a") is None
    assert cache.get("a") is None  # within retry_after_s: Redis is not tried again
    cache.put("a", np.ones(2, np.float32))
    assert (cache.stats["errors"], cache.stats["skipped"], cache.stats["misses"]) == (1, 2, 2)
    assert not cache.ping()  # a health check always asks
    assert cache.stats["errors"] == 2


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while not _redis_answers(f"redis://127.0.0.1:{port}/0"):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"redis-server on port {port} did not start")
        time.sleep(0.02)
    return proc


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_recovers_without_restart() -> None:
    port = free_port()
    proc = _start_redis(port)
    cache = RedisVectorCache(f"redis://127.0.0.1:{port}/0", "r:", retry_after_s=0.0)
    try:
        cache.put("k", np.arange(3, dtype=np.float32))
        assert cache.get("k") is not None
        proc.terminate()
        proc.wait(5)
        assert cache.get("k") is None and not cache.ping()
        errors = cache.stats["errors"]
        assert errors >= 2
        proc = _start_redis(port)  # an empty Redis comes back on the same address
        assert cache.ping()
        cache.put("k", np.arange(3, dtype=np.float32))
        assert_same(cache.get("k"), np.arange(3, dtype=np.float32))
        assert cache.stats["errors"] == errors
    finally:
        cache.close()
        proc.terminate()
        proc.wait(5)


def test_build_vector_cache(redis_url: str, redis_prefix: str) -> None:
    lru = build_vector_cache(Settings(redis_url=None, cache_max_items=7))
    assert isinstance(lru, LRUVectorCache) and lru.max_items == 7 and lru.backend == "lru"
    remote = build_vector_cache(Settings(redis_url=redis_url, redis_prefix=redis_prefix + "built:"))
    assert isinstance(remote, RedisVectorCache)
    assert remote.backend == "redis" and remote.prefix == redis_prefix + "built:"
    assert remote.ping()
    remote.close()
