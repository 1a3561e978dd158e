"""API keys and tenants: secrets are generated here, stored as sha256 digests, and resolved to their tenant.

A key is `gpo_` + 43 url-safe characters (256 random bits). Only its digest is stored, so a leaked database
leaks no usable key. Lookups are cached for `ttl_s` seconds per process: a revoked key stops working on every
replica within that time (0 turns the cache off).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.db import repository as repo
from service.db.models import TENANT_MAX_LEN
from service.db.session import session_scope

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

KEY_PREFIX = "gpo_"
TENANT_PATTERN = rf"^[A-Za-z0-9_.:-]{{1,{TENANT_MAX_LEN}}}$"
KEY_NAME_MAX_LEN = 128
_KEY_SHAPE = re.compile(r"^gpo_[A-Za-z0-9_-]{43}$")


class InvalidTenant(ValueError):
    pass


class Unauthorized(Exception):
    """No key, or a key that is unknown or revoked (HTTP 401)."""


def new_secret() -> str:
    """A fresh API key (shown once to whoever creates it)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(secret: str) -> str:
    """The stored form of a key: sha256, hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_tenant(tenant: str) -> str:
    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise InvalidTenant(f"tenant {tenant!r}: use 1 to {TENANT_MAX_LEN} letters, digits or _ . : -")
    return tenant


def create_key(sessions: sessionmaker[Session], tenant: str, name: str = "") -> tuple[repo.ApiKeyInfo, str]:
    """Create a key of `tenant`; returns its record and the secret (which is not stored anywhere)."""
    check_tenant(tenant)
    if len(name) > KEY_NAME_MAX_LEN:
        raise ValueError(f"key name: at most {KEY_NAME_MAX_LEN} characters")
    secret = new_secret()
    with session_scope(sessions) as session:
        info = repo.add_api_key(session, tenant, name, key_digest(secret))
    return info, secret


class KeyResolver:
    """secret -> tenant (None for an unknown or revoked key), with a small per-process TTL cache."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        ttl_s: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, secret: str) -> tuple[bool, str | None]:
        """(found, tenant) from the cache alone: never touches the database (callable on the event loop)."""
        if self._ttl_s <= 0:
            return False, None
        digest = key_digest(secret)
        with self._lock:
            hit = self._cache.get(digest)
            if hit is None or hit[0] <= self._clock():
                return False, None
            return True, hit[1]

    def tenant(self, secret: str) -> str | None:
        """The key's tenant; reads the database on a cache miss (blocking: call it off the event loop)."""
        found, tenant = self.cached(secret)
        if found:
            return tenant
        if not _KEY_SHAPE.fullmatch(secret):
            return None  # not one of ours: no database read, nothing cached
        digest = key_digest(secret)
        with session_scope(self._sessions) as session:
            tenant = repo.tenant_of_key(session, digest)
        if self._ttl_s > 0:
            with self._lock:
                self._cache[digest] = (self._clock() + self._ttl_s, tenant)
                self._cache.move_to_end(digest)
                while len(self._cache) > self._max_entries:
                    self._cache.popitem(last=False)
        return tenant
