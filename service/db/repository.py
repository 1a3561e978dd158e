"""Repository functions over groups and their context items; every query is scoped to one tenant.

The functions take a `Session` and never commit: the caller owns one transaction per request and commits
(or rolls back) it. Writers to a group serialise on its row (SELECT ... FOR UPDATE on Postgres, the
database write lock on SQLite), so concurrent appends lose no update and versions move by exactly one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, Select, and_, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from service.db.models import DEFAULT_TENANT, GROUP_NAME_MAX_LEN, ApiKey, ContextItem, Group, utcnow

logger = logging.getLogger(__name__)

WriteMode = Literal["append", "replace"]
FLOAT32_BYTES = 4


class RepositoryError(Exception):
    """Base of the storage layer's domain errors."""


class GroupNotFound(RepositoryError):
    def __init__(self, tenant: str, name: str) -> None:
        super().__init__(f"group {name!r} not found")
        self.tenant = tenant
        self.name = name


class ItemNotFound(RepositoryError):
    def __init__(self, name: str, item_id: int) -> None:
        super().__init__(f"item {item_id} not found in group {name!r}")
        self.name = name
        self.item_id = item_id


class VersionConflict(RepositoryError):
    def __init__(self, name: str, expected: int, actual: int) -> None:
        super().__init__(f"group {name!r} is at version {actual}, expected {expected}")
        self.name = name
        self.expected = expected
        self.actual = actual


class GroupKindMismatch(RepositoryError):
    """A write of items of another kind than the group holds (a group holds one kind)."""

    def __init__(self, name: str, group_kind: str, kind: str) -> None:
        super().__init__(f"group {name!r} holds {group_kind} items; this write has {kind} items")
        self.name = name
        self.group_kind = group_kind
        self.kind = kind


@dataclass(frozen=True, slots=True)
class NewItem:
    """A context item to store. `embeddings`: float32 bytes of a [len(options), dim] array, row-major."""

    question: str
    options: list[str]
    distribution: list[float]
    ordinals: list[float] | None = None
    kind: str = "choice"
    payload: dict[str, Any] | None = None
    embedder_key: str | None = None
    embeddings: bytes | None = None

    def __post_init__(self) -> None:
        # The API validates requests too; these checks keep malformed rows out whoever the caller is.
        n = len(self.options)
        if n == 0:
            raise ValueError("an item needs at least one option")
        if len(self.distribution) != n:
            raise ValueError(f"distribution has {len(self.distribution)} values for {n} options")
        if not all(math.isfinite(p) for p in self.distribution):
            raise ValueError("distribution values must be finite")
        if self.ordinals is not None and len(self.ordinals) != n:
            raise ValueError(f"ordinals has {len(self.ordinals)} values for {n} options")
        if self.embeddings is not None:
            if self.embedder_key is None:
                raise ValueError("embeddings without embedder_key cannot be checked against the embedder")
            if len(self.embeddings) == 0 or len(self.embeddings) % (FLOAT32_BYTES * n) != 0:
                raise ValueError(f"embeddings of {len(self.embeddings)} bytes are not float32 [{n}, dim]")


@dataclass(frozen=True, slots=True)
class GroupInfo:
    name: str
    kind: str
    version: int
    size: int  # number of context items
    created_at: datetime
    updated_at: datetime
    id: int  # database row id: never reused, so (id, version) names one context exactly


@dataclass(frozen=True, slots=True)
class StoredItem:
    id: int
    position: int
    kind: str
    question: str
    options: list[str]
    distribution: list[float]
    ordinals: list[float] | None
    payload: dict[str, Any] | None
    embedder_key: str | None
    embeddings: bytes | None
    created_at: datetime


# ---------------------------------------------------------------------------------------------- helpers


def _size_of(group_id: Any) -> Any:
    """Scalar subquery: the number of items of a group (read in the same statement, so it matches the row)."""
    return select(func.count(ContextItem.id)).where(ContextItem.group_id == group_id).scalar_subquery().label("size")


def _info(group: Group, size: int) -> GroupInfo:
    return GroupInfo(
        name=group.name,
        kind=group.kind,
        version=group.version,
        size=int(size),
        created_at=group.created_at,
        updated_at=group.updated_at,
        id=group.id,
    )


def _stored(item: ContextItem) -> StoredItem:
    return StoredItem(
        id=item.id,
        position=item.position,
        kind=item.kind,
        question=item.question,
        options=list(item.options),
        distribution=list(item.distribution),
        ordinals=None if item.ordinals is None else list(item.ordinals),
        payload=item.payload,
        embedder_key=item.embedder_key,
        embeddings=None if item.embeddings is None else bytes(item.embeddings),
        created_at=item.created_at,
    )


def _group_query(tenant: str, name: str) -> Select[Any]:
    # populate_existing: a Group already in the session's identity map would otherwise keep stale values.
    return select(Group).where(Group.tenant == tenant, Group.name == name).execution_options(populate_existing=True)


def _insert_group_if_missing(session: Session, tenant: str, name: str, kind: str) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: two sessions creating the same group both succeed, neither raises."""
    dialect = session.get_bind().dialect.name
    now = utcnow()
    values = dict(tenant=tenant, name=name, kind=kind, version=0, created_at=now, updated_at=now)
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(Group).values(**values).on_conflict_do_nothing(index_elements=["tenant", "name"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(Group).values(**values).on_conflict_do_nothing(index_elements=["tenant", "name"])
    else:
        raise NotImplementedError(f"database {dialect!r} is not supported (use SQLite or PostgreSQL)")
    session.execute(stmt)


def _lock_group(session: Session, tenant: str, name: str, *, create_kind: str | None = None) -> Group | None:
    """The group row, locked against other writers until the transaction ends; created first if `create_kind`.

    Postgres: SELECT ... FOR UPDATE. SQLite has no row locks but one write lock per database, and pysqlite
    opens the transaction just before the first write: so the first statement here is a write, which takes
    the lock (waiting for the busy timeout), and every read after it sees the latest commit.
    """
    if session.get_bind().dialect.name == "sqlite":
        if create_kind is not None:
            _insert_group_if_missing(session, tenant, name, create_kind)
        else:
            # A self-assignment changes nothing but takes the write lock (even when no row matches).
            session.execute(
                update(Group)
                .where(Group.tenant == tenant, Group.name == name)
                .values(version=Group.version)
                .execution_options(synchronize_session=False)
            )
        return session.scalars(_group_query(tenant, name)).one_or_none()

    group = session.scalars(_group_query(tenant, name).with_for_update()).one_or_none()
    if group is None and create_kind is not None:
        # Selecting first spares the sequence a value per write (ON CONFLICT consumes one even when it skips).
        _insert_group_if_missing(session, tenant, name, create_kind)
        group = session.scalars(_group_query(tenant, name).with_for_update()).one()
    return group


def _count_items(session: Session, group_id: int) -> int:
    return int(session.scalar(select(func.count(ContextItem.id)).where(ContextItem.group_id == group_id)) or 0)


# ---------------------------------------------------------------------------------------------- writes


def write_context(
    session: Session,
    tenant: str,
    name: str,
    items: list[NewItem],
    mode: WriteMode,
    expected_version: int | None = None,
    *,
    kind: str = "choice",
) -> GroupInfo:
    """Append `items` to a group's context or replace it; creates the group (of `kind`) when missing.

    The version moves by exactly one per call, even for an empty append. `expected_version` (optimistic
    concurrency): raise `VersionConflict` unless the group is at that version (0 for a group not yet created).
    """
    if mode not in ("append", "replace"):
        raise ValueError(f"mode must be 'append' or 'replace', not {mode!r}")
    if not name or len(name) > GROUP_NAME_MAX_LEN:
        # Checked here: Postgres would refuse a longer name but SQLite would store it silently.
        raise ValueError(f"group name must have 1 to {GROUP_NAME_MAX_LEN} characters")

    group = _lock_group(session, tenant, name, create_kind=kind)
    assert group is not None, "the group was just created"
    if expected_version is not None and group.version != expected_version:
        raise VersionConflict(name, expected_version, group.version)
    if items and group.kind != kind:
        raise GroupKindMismatch(name, group.kind, kind)
    if any(item.kind != kind for item in items):
        raise ValueError(f"every item of a {kind} write must be of kind {kind}")

    if mode == "replace":
        session.execute(delete(ContextItem).where(ContextItem.group_id == group.id))
        next_position = 0
    else:
        last = session.scalar(select(func.max(ContextItem.position)).where(ContextItem.group_id == group.id))
        next_position = 0 if last is None else last + 1

    now = utcnow()
    session.add_all(
        ContextItem(
            group_id=group.id,
            position=next_position + i,
            kind=item.kind,
            question=item.question,
            options=list(item.options),
            distribution=[float(p) for p in item.distribution],
            ordinals=None if item.ordinals is None else [float(o) for o in item.ordinals],
            payload=item.payload,
            embedder_key=item.embedder_key,
            embeddings=item.embeddings,
            created_at=now,
        )
        for i, item in enumerate(items)
    )
    group.version += 1
    group.updated_at = now
    session.flush()
    size = _count_items(session, group.id)
    logger.debug("group %s/%s: %s %d items -> version %d", tenant, name, mode, len(items), group.version)
    return _info(group, size)


def delete_group(session: Session, tenant: str, name: str) -> None:
    """Delete a group; the database deletes its items (ON DELETE CASCADE)."""
    result = session.execute(
        delete(Group).where(Group.tenant == tenant, Group.name == name).execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise GroupNotFound(tenant, name)
    logger.debug("group %s/%s deleted", tenant, name)


def delete_item(session: Session, tenant: str, name: str, item_id: int) -> GroupInfo:
    """Delete one item of a group (the others keep their positions) and bump the group's version."""
    group = _lock_group(session, tenant, name)
    if group is None:
        raise GroupNotFound(tenant, name)
    result = session.execute(delete(ContextItem).where(ContextItem.id == item_id, ContextItem.group_id == group.id))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise ItemNotFound(name, item_id)
    group.version += 1
    group.updated_at = utcnow()
    session.flush()
    return _info(group, _count_items(session, group.id))


def set_item_embeddings(session: Session, item_ids_to_bytes: dict[int, bytes], embedder_key: str) -> int:
    """Store re-computed embeddings (after an embedder change); the version does not move: the context is the same.

    Items deleted meanwhile (a replace or delete racing the re-embedding) are skipped. Returns the number of
    items updated. Ids come from `get_context`, which already checked the tenant. Raises ValueError when a
    blob is not float32 [n_options, dim] for its item.
    """
    if not item_ids_to_bytes:
        return 0
    found = session.execute(
        select(ContextItem.id, ContextItem.options).where(ContextItem.id.in_(list(item_ids_to_bytes)))
    )
    n_options = {item_id: len(options) for item_id, options in found}
    rows = []
    for item_id, blob in item_ids_to_bytes.items():
        if item_id not in n_options:
            continue
        if len(blob) == 0 or len(blob) % (FLOAT32_BYTES * n_options[item_id]) != 0:
            raise ValueError(
                f"embeddings of item {item_id}: {len(blob)} bytes are not float32 [{n_options[item_id]}, dim]"
            )
        rows.append({"id": item_id, "embeddings": blob, "embedder_key": embedder_key})
    if rows:
        # ORM bulk UPDATE by primary key: one executemany.
        session.execute(update(ContextItem), rows)
    skipped = len(item_ids_to_bytes) - len(rows)
    if skipped:
        logger.info("set_item_embeddings: %d items no longer exist, skipped", skipped)
    return len(rows)


# ---------------------------------------------------------------------------------------------- reads


def get_group(session: Session, tenant: str, name: str) -> GroupInfo:
    row = session.execute(
        select(Group, _size_of(Group.id))
        .where(Group.tenant == tenant, Group.name == name)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:
        raise GroupNotFound(tenant, name)
    return _info(row[0], row[1])


# The prediction fast path's reads, built once: constructing a statement costs more than running it on SQLite
# (about 220 of 280 us per call, measured), and these run on every /predict.
_GROUP_VERSION = select(Group.id, Group.version, Group.kind).where(
    Group.tenant == bindparam("tenant"), Group.name == bindparam("name")
)
_first = aliased(ContextItem)
_FIRST_POSITION = (
    select(func.min(_first.position)).where(_first.group_id == Group.id).correlate(Group).scalar_subquery()
)
_GROUP_VERSION_AND_FIRST_PAYLOAD = (
    select(Group.id, Group.version, Group.kind, ContextItem.payload)
    .outerjoin(ContextItem, and_(ContextItem.group_id == Group.id, ContextItem.position == _FIRST_POSITION))
    .where(Group.tenant == bindparam("tenant"), Group.name == bindparam("name"))
)


def group_version(connection: Connection | Session, tenant: str, name: str) -> tuple[int, int, str]:
    """(row id, context version, kind) of a group: the one-row read the prediction fast path makes per request."""
    row = connection.execute(_GROUP_VERSION, {"tenant": tenant, "name": name}).one_or_none()
    if row is None:
        raise GroupNotFound(tenant, name)
    return int(row[0]), int(row[1]), str(row[2])


def group_version_and_first_payload(
    connection: Connection | Session, tenant: str, name: str
) -> tuple[int, int, str, dict[str, Any] | None]:
    """(row id, context version, kind, payload of the first item or None) in one statement: the rating fast path's
    read (the first item's scale is the group's answer scale), consistent with the version it returns."""
    row = connection.execute(_GROUP_VERSION_AND_FIRST_PAYLOAD, {"tenant": tenant, "name": name}).one_or_none()
    if row is None:
        raise GroupNotFound(tenant, name)
    return int(row[0]), int(row[1]), str(row[2]), row[3]


def list_groups(session: Session, tenant: str, limit: int = 100, offset: int = 0) -> list[GroupInfo]:
    """A page of the tenant's groups, ordered by name (stable across pages).

    The page's groups are picked first and only they are counted: with the count in the paged select itself, Postgres
    counted the items of every group the offset skips (at 100,000 groups the last page took 873 ms, the first 8 ms;
    benchmarks/scale.py)."""
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must be >= 0")
    page = select(Group.id).where(Group.tenant == tenant).order_by(Group.name).limit(limit).offset(offset).subquery()
    rows = session.execute(
        select(Group, _size_of(Group.id))
        .join(page, page.c.id == Group.id)
        .order_by(Group.name)
        .execution_options(populate_existing=True)
    ).all()
    return [_info(group, size) for group, size in rows]


def get_context(session: Session, tenant: str, name: str) -> tuple[GroupInfo, list[StoredItem]]:
    """A group and its items in position order.

    One statement (group LEFT JOIN items): the version returned always describes exactly these items, even
    without a transaction snapshot (pysqlite reads outside transactions; Postgres is READ COMMITTED).
    """
    rows = session.execute(
        select(Group, ContextItem)
        .outerjoin(ContextItem, ContextItem.group_id == Group.id)
        .where(Group.tenant == tenant, Group.name == name)
        .order_by(ContextItem.position)
        .execution_options(populate_existing=True)
    ).all()
    if not rows:
        raise GroupNotFound(tenant, name)
    items = [_stored(item) for _, item in rows if item is not None]
    return _info(rows[0][0], len(items)), items


# ---------------------------------------------------------------------------------------------- API keys


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    id: int
    tenant: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


def _key_info(key: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(id=key.id, tenant=key.tenant, name=key.name, created_at=key.created_at, revoked_at=key.revoked_at)


def add_api_key(session: Session, tenant: str, name: str, key_hash: str) -> ApiKeyInfo:
    """Store a new key of `tenant` by its digest (the secret itself is never stored)."""
    key = ApiKey(tenant=tenant, name=name, key_hash=key_hash, created_at=utcnow())
    session.add(key)
    session.flush()
    return _key_info(key)


def list_api_keys(session: Session, tenant: str | None = None) -> list[ApiKeyInfo]:
    """Keys (all tenants', or one tenant's), oldest first, revoked ones included."""
    query = select(ApiKey).order_by(ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return [_key_info(k) for k in session.scalars(query)]


def revoke_api_key(session: Session, key_id: int) -> ApiKeyInfo | None:
    """Revoke a key (kept, with its revocation time); None when no key has that id. Revoking twice is a no-op."""
    key = session.get(ApiKey, key_id)
    if key is None:
        return None
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return _key_info(key)


def tenant_of_key(session: Session, key_hash: str) -> str | None:
    """The tenant of the unrevoked key with this digest, or None."""
    return session.scalar(select(ApiKey.tenant).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))


__all__ = [
    "DEFAULT_TENANT",
    "ApiKeyInfo",
    "GroupInfo",
    "GroupKindMismatch",
    "GroupNotFound",
    "ItemNotFound",
    "NewItem",
    "RepositoryError",
    "StoredItem",
    "VersionConflict",
    "WriteMode",
    "add_api_key",
    "delete_group",
    "delete_item",
    "get_context",
    "get_group",
    "group_version",
    "list_api_keys",
    "list_groups",
    "revoke_api_key",
    "set_item_embeddings",
    "tenant_of_key",
    "write_context",
]
