"""The checks that guard tenants, revocation and refused requests can fail: each runs here against a deliberately
broken build (a monkeypatch) and must catch it, after passing on the real one.

- `snapshot()` (what a refused request must leave unchanged) sees a change to any stored column of a group or item;
- the cross-tenant test fails when tenants are merged;
- the revocation-delay test fails when a cached lookup never expires, and when there is no cache at all;
- the attack corpus fails when the 422 handler echoes its input unescaped (the issue's surrogate 500).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import JSON, LargeBinary, String, insert, select, update

from service.auth import KeyResolver
from service.config import Settings
from service.db.models import ContextItem, Group
from service.db.session import make_engine, make_sessionmaker, session_scope

from . import test_attack_corpus as corpus
from . import test_tenants as tenants
from .conftest import SettingsFactory, authed_client, context_item

limited_settings = corpus.limited_settings  # the corpus's fixtures (test_validation's small limits, group g)
limited_client = corpus.limited_client
tenant_settings = tenants.tenant_settings
app_client = tenants.app_client


def changed(column: Any, value: Any, other_group_id: int) -> Any:
    """A value of `column`'s type that differs from `value`."""
    if column.foreign_keys:
        return other_group_id
    if isinstance(column.type, LargeBinary):
        return (value or b"") + b"\x01"
    if isinstance(column.type, JSON):
        return {"changed": 1} if value is None or isinstance(value, list) else [1.0]
    if value is None and isinstance(column.type, String):
        return "changed"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("y" if value.endswith("x") else "x")
    if hasattr(value, "tzinfo"):
        return value + timedelta(seconds=1)
    raise AssertionError(f"no changed value for {column.name} = {value!r}")


def test_a_snapshot_sees_a_change_to_any_stored_column(make_settings: SettingsFactory, database_url: str) -> None:
    settings = make_settings(database_url)
    with authed_client(settings) as client:
        assert client.post("/groups/g/context", json={"items": [context_item(0)]}).status_code == 200
    engine = make_engine(database_url)
    try:
        sessions = make_sessionmaker(engine)
        with session_scope(sessions) as s:
            g_id = s.scalar(select(Group.id).where(Group.name == "g"))
            h_id = s.scalar(insert(Group).values(tenant="default", name="h").returning(Group.id))  # an empty group
            item_id = s.scalar(select(ContextItem.id).where(ContextItem.group_id == g_id))
        before = tenants.snapshot(database_url)
        checked = []
        for model, row_id in ((Group, g_id), (ContextItem, item_id)):
            table = model.__table__
            for column in table.columns:
                if column.primary_key:
                    continue
                with session_scope(sessions) as s:
                    old = s.execute(select(column).where(table.c.id == row_id)).scalar_one()
                    s.execute(
                        update(table).where(table.c.id == row_id).values({column.name: changed(column, old, h_id)})
                    )
                assert tenants.snapshot(database_url) != before, f"{table.name}.{column.name} changed unseen"
                with session_scope(sessions) as s:
                    s.execute(update(table).where(table.c.id == row_id).values({column.name: old}))
                assert tenants.snapshot(database_url) == before, f"{table.name}.{column.name} not restored"
                checked.append(f"{table.name}.{column.name}")
        assert {"context_items.embeddings", "context_items.payload", "context_items.distribution"} <= set(checked)
    finally:
        engine.dispose()


def merge_tenants(monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken build: every valid key resolves to one tenant."""
    tenant, cached = KeyResolver.tenant, KeyResolver.cached

    def one_tenant(self: KeyResolver, secret: str) -> str | None:
        return None if tenant(self, secret) is None else "merged"

    def one_cached(self: KeyResolver, secret: str) -> tuple[bool, str | None]:
        found, name = cached(self, secret)
        return found, None if name is None else "merged"

    monkeypatch.setattr(KeyResolver, "tenant", one_tenant)
    monkeypatch.setattr(KeyResolver, "cached", one_cached)


def test_the_cross_tenant_check_fails_when_tenants_are_merged(
    make_settings: SettingsFactory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(database_url, auth_cache_s=0.0)
    merge_tenants(monkeypatch)
    with TestClient(tenants.create_app(settings)) as client, pytest.raises(AssertionError):
        tenants.test_cross_tenant_access_is_impossible(client, settings)


def cache_for(monkeypatch: pytest.MonkeyPatch, ttl_s: float) -> None:
    """A broken build: the key cache keeps lookups `ttl_s` seconds, whatever GPO_AUTH_CACHE_S says."""
    init = KeyResolver.__init__

    def fixed_ttl(self: KeyResolver, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._ttl_s = ttl_s

    monkeypatch.setattr(KeyResolver, "__init__", fixed_ttl)


@pytest.mark.parametrize("ttl_s", [float("inf"), 0.0], ids=["never-expires", "no-cache"])
def test_the_revocation_delay_check_fails_when_the_cache_ignores_its_setting(
    make_settings: SettingsFactory, database_url: str, monkeypatch: pytest.MonkeyPatch, ttl_s: float
) -> None:
    cache_for(monkeypatch, ttl_s)
    with pytest.raises(AssertionError):
        tenants.test_a_revoked_key_works_for_at_most_the_configured_cache_time(make_settings, database_url)


SURROGATE = next(a for a in corpus.CASES if a.name == "reversed surrogate pair")


def test_the_attack_corpus_fails_when_the_422_handler_echoes_raw_input(
    limited_client: TestClient, limited_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus.test_attack_is_answered_as_it_should_be(limited_client, limited_settings, SURROGATE)  # the real build
    from service.api import errors

    monkeypatch.setattr(errors, "_json_safe", lambda value, *a, **k: value)
    with pytest.raises((AssertionError, UnicodeEncodeError)):
        corpus.test_attack_is_answered_as_it_should_be(limited_client, limited_settings, SURROGATE)
