"""The sqlite array store under both disk caches: its on-disk format, and what it refuses to read back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from service.embedder.array_store import ArrayStore
from service.embedder.embed import EmbeddingCache
from service.training.lm_baselines import LMPredictionCache


def write_rows(path: Path, create: str, insert: str, rows: list[tuple[str, int, bytes]]) -> None:
    """A cache file as an earlier release wrote it: plain sqlite, no code of ours."""
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute(create)
        conn.executemany(insert, rows)
    conn.close()


def test_existing_embedding_files_still_read(tmp_path: Path) -> None:
    vec = np.array([1.5, -2.0, 3.0], dtype="<f4")
    write_rows(
        tmp_path / "embeddings" / "embeddings.sqlite3",
        "CREATE TABLE embeddings (key TEXT PRIMARY KEY, dim INTEGER, vec BLOB)",
        "INSERT INTO embeddings (key, dim, vec) VALUES (?, ?, ?)",
        [(EmbeddingCache.key("p", "a"), 3, vec.tobytes())],
    )
    with EmbeddingCache.in_cache_dir(tmp_path) as cache:
        got = cache.get_many([EmbeddingCache.key("p", "a"), EmbeddingCache.key("p", "b")])
    assert np.array_equal(got[0], vec) and got[0].dtype == np.float32 and got[1] is None


def test_existing_prediction_files_still_read(tmp_path: Path) -> None:
    dist = np.array([0.25, 0.75], dtype="<f8")
    write_rows(
        tmp_path / "lm_baselines" / "predictions.sqlite3",
        "CREATE TABLE predictions (key TEXT PRIMARY KEY, n INTEGER, probs BLOB)",
        "INSERT INTO predictions (key, n, probs) VALUES (?, ?, ?)",
        [(LMPredictionCache.key("p", "prompt"), 2, dist.tobytes())],
    )
    with LMPredictionCache.in_cache_dir(tmp_path) as cache:
        (got,) = cache.get_many([LMPredictionCache.key("p", "prompt")])
    assert got is not None and np.array_equal(got, dist) and got.dtype == np.float64
    got[0] = 1.0  # a copy: the caller may change it


class Lengths(ArrayStore):
    FILENAME = "lengths.sqlite3"
    CACHE_SUBDIR = "lengths"
    TABLE = "lengths"
    LENGTH_COLUMN = "n"
    BLOB_COLUMN = "data"
    DTYPE = "<i4"


def test_a_truncated_blob_reads_as_a_miss(tmp_path: Path) -> None:
    with Lengths.in_cache_dir(tmp_path) as store:
        store.put_many(["a", "b"], [np.arange(3), np.arange(5)])
        with sqlite3.connect(store.path) as conn:
            conn.execute("UPDATE lengths SET n = 4 WHERE key = 'b'")
        conn.close()
        a, b = store.get_many(["a", "b"])
    assert a is not None and a.tolist() == [0, 1, 2] and b is None


def test_one_array_per_key(tmp_path: Path) -> None:
    with Lengths(tmp_path) as store, pytest.raises(ValueError, match="2 keys for 1 arrays"):
        store.put_many(["a", "b"], [np.arange(3)])
