"""One sqlite3 file of 1-D arrays keyed by hashed text: the store under the embedding and LM-prediction caches."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Self

import numpy as np

_KEYS_PER_QUERY = 500  # keys per IN (...) query; well under sqlite's bound-variable limit


class ArrayStore:
    """1-D arrays on disk in one sqlite3 file: table (key TEXT PRIMARY KEY, <length> INTEGER, <blob> BLOB).

    A subclass names the file, its folder under the cache dir, the table, its two columns and the dtype;
    those names are the on-disk format, so existing files keep reading. Keys come from
    `key(key_prefix, text)` = sha256(key_prefix + "\\x00" + text). Safe to share between threads (one
    connection behind a lock) and processes (sqlite WAL, busy timeout).
    """

    FILENAME: ClassVar[str]
    CACHE_SUBDIR: ClassVar[str]  # the folder under Settings.cache_dir
    TABLE: ClassVar[str]
    LENGTH_COLUMN: ClassVar[str]  # the array's length, stored beside its bytes
    BLOB_COLUMN: ClassVar[str]
    DTYPE: ClassVar[str]  # little-endian, so a file reads the same on any machine

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.FILENAME
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    def in_cache_dir(cls, cache_dir: Path) -> Self:
        """The store at `cache_dir/<CACHE_SUBDIR>/` (the layout Settings.cache_dir implies)."""
        return cls(Path(cache_dir) / cls.CACHE_SUBDIR)

    @staticmethod
    def key(key_prefix: str, text: str) -> str:
        return hashlib.sha256(f"{key_prefix}\x00{text}".encode()).hexdigest()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.TABLE} "
                f"(key TEXT PRIMARY KEY, {self.LENGTH_COLUMN} INTEGER, {self.BLOB_COLUMN} BLOB)"
            )
            conn.commit()
            self._conn = conn
        return self._conn

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """Arrays for `keys` in order (read-only, on the stored bytes), None where absent."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        select = f"SELECT key, {self.LENGTH_COLUMN}, {self.BLOB_COLUMN} FROM {self.TABLE} WHERE key IN "
        with self._lock:
            conn = self._connect()
            for i in range(0, len(unique), _KEYS_PER_QUERY):
                chunk = unique[i : i + _KEYS_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                for key, length, blob in conn.execute(f"{select}({marks})", chunk):
                    array = np.frombuffer(blob, dtype=self.DTYPE)
                    if array.shape[0] == length:  # a truncated blob is a miss, never a wrong array
                        found[key] = array
        return [found.get(k) for k in keys]

    def put_many(self, keys: Sequence[str], arrays: np.ndarray | Sequence[np.ndarray]) -> None:
        """Store one array per key (a sequence, or the rows of a 2-D array), replacing any old value."""
        if len(keys) != len(arrays):
            raise ValueError(f"{len(keys)} keys for {len(arrays)} arrays")
        rows = []
        for k, a in zip(keys, arrays, strict=True):
            array = np.asarray(a, dtype=self.DTYPE)
            rows.append((k, int(array.shape[0]), array.tobytes()))
        insert = f"INSERT OR REPLACE INTO {self.TABLE} (key, {self.LENGTH_COLUMN}, {self.BLOB_COLUMN}) VALUES (?, ?, ?)"
        with self._lock:
            conn = self._connect()
            with conn:  # one transaction
                conn.executemany(insert, rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._connect().execute(f"SELECT COUNT(*) FROM {self.TABLE}").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
