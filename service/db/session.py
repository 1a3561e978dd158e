"""Engine and session factories (nothing is created at import time), tuned per database."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

# Seconds a SQLite connection waits for the single write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30.0


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL; a bare `postgres://` / `postgresql://` gets the installed psycopg (v3) driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL; None for other databases and for in-memory SQLite."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if parsed.database.startswith("file:"):  # URI filenames (?uri=true) are the caller's business
        return None
    return Path(parsed.database)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # SQLite ignores foreign keys (and so ON DELETE CASCADE) unless asked, per connection.
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL: readers do not block the writer nor the writer readers. The mode persists in the file;
        # in-memory databases answer "memory" and stay as they are.
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """An engine for `url`: SQLite with foreign keys, WAL and a busy timeout; Postgres with pre-ping.

    `kwargs` go to `create_engine` (e.g. `poolclass=NullPool` for one-off tools such as migrations).
    """
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    pooled = "poolclass" not in kwargs and parsed.database not in (None, "", ":memory:")
    if backend in ("sqlite", "postgresql") and pooled:
        # Requests read from worker threads (up to anyio's 40 at a time): a pool this size keeps connections
        # open under load instead of opening and closing overflow ones per request.
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 30)
    if backend == "sqlite":
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
        # Sessions may be used by a thread other than the one that opened the connection (threadpool
        # endpoints, tests); the pool hands a connection to one session at a time, so this is safe.
        connect_args.setdefault("check_same_thread", False)
        engine = create_engine(parsed, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
    elif backend == "postgresql":
        # A pooled connection may have been closed by the server or a proxy while idle.
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(parsed, **kwargs)
    else:
        engine = create_engine(parsed, **kwargs)
    logger.debug("engine created for %s", parsed.render_as_string(hide_password=True))
    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Session factory. Objects stay readable after commit: responses are built after the transaction ends."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit when the block ends normally, roll back when it raises."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
