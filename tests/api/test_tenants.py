"""API keys and tenants through the real app and database: a key sees and changes only its tenant's groups."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from service.app import create_app
from service.auth import key_digest
from service.config import Settings
from service.db.models import ApiKey, ContextItem, Group
from service.db.session import make_engine, make_sessionmaker, session_scope

from .conftest import SettingsFactory, api_key, bearer, context_item, question

TENANT_ROUTES = [
    ("GET", "/groups", None),
    ("GET", "/groups/g", None),
    ("GET", "/groups/g/context", None),
    ("POST", "/groups/g/context", {"items": [context_item(0)]}),
    ("DELETE", "/groups/g", None),
    ("DELETE", "/groups/g/context/1", None),
    ("POST", "/predict", {"group_id": "g", "questions": [question(1)]}),
    ("POST", "/predict", {"context": [context_item(0)], "questions": [question(1)]}),
    ("POST", "/generate", {"group_id": "g", "prompt": "Say hi.", "n": 2, "max_new_tokens": 4, "seed": 1}),
]


@pytest.fixture
def tenant_settings(make_settings: SettingsFactory, database_url: str) -> Settings:
    return make_settings(database_url, auth_cache_s=0.0)  # no lookup cache: a revocation acts at once


@pytest.fixture
def app_client(tenant_settings: Settings) -> Iterator[TestClient]:
    """A client with no default key: each request says whose it is."""
    with TestClient(create_app(tenant_settings)) as c:
        yield c


def snapshot(database_url: str) -> list[tuple]:
    """Every column of every group and item row (what a refused request must leave unchanged): names, versions,
    questions, options, distributions, payloads, embeddings, timestamps."""
    engine = make_engine(database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as s:
            rows = []
            for model in (Group, ContextItem):
                columns = list(model.__table__.columns)
                rows += [("table", model.__tablename__, [c.name for c in columns])]
                rows += [tuple(r) for r in s.execute(select(*columns).order_by(model.__table__.c.id)).all()]
            return rows
    finally:
        engine.dispose()


def test_every_tenant_route_needs_a_valid_key(app_client: TestClient, tenant_settings: Settings) -> None:
    app_client.post(
        "/groups/g/context", json={"items": [context_item(0)]}, headers=bearer(api_key(tenant_settings.database_url))
    )
    before = snapshot(tenant_settings.database_url)
    bad_headers = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        bearer("not-a-key"),
        bearer("gpo_" + "A" * 43),  # well formed, never issued
    ]
    for method, path, body in TENANT_ROUTES:
        for headers in bad_headers:
            answer = app_client.request(method, path, json=body, headers=headers)
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers["WWW-Authenticate"] == "Bearer"
            assert "API key" in answer.json()["detail"]
    assert snapshot(tenant_settings.database_url) == before  # nothing refused was stored


def test_health_and_metrics_need_no_key_and_show_no_tenant_data(
    app_client: TestClient, tenant_settings: Settings
) -> None:
    key = bearer(api_key(tenant_settings.database_url, "tenant-secret-name"))
    app_client.post("/groups/group-secret-name/context", json={"items": [context_item(0)]}, headers=key)
    app_client.post("/predict", json={"group_id": "group-secret-name", "questions": [question(1)]}, headers=key)
    assert app_client.get("/healthz").status_code == 200
    assert app_client.get("/readyz").status_code == 200
    metrics = app_client.get("/metrics")
    assert metrics.status_code == 200
    assert "secret-name" not in metrics.text


def test_cross_tenant_access_is_impossible(app_client: TestClient, tenant_settings: Settings) -> None:
    url = tenant_settings.database_url
    a, b = bearer(api_key(url, "acme")), bearer(api_key(url, "globex"))
    written = app_client.post("/groups/g/context", json={"items": [context_item(0), context_item(1)]}, headers=a)
    assert written.status_code == 200
    a_context = app_client.get("/groups/g/context", headers=a).json()
    a_item = a_context["items"][0]["id"]
    a_prediction = app_client.post("/predict", json={"group_id": "g", "questions": [question(5)]}, headers=a).json()

    # read, list, predict, generate, delete: 404 (never 403), as for a group that does not exist
    not_found = "group 'g' not found"
    for method, path, body in [
        ("GET", "/groups/g", None),
        ("GET", "/groups/g/context", None),
        ("DELETE", f"/groups/g/context/{a_item}", None),
        ("DELETE", "/groups/g", None),
        ("POST", "/predict", {"group_id": "g", "questions": [question(5)]}),
        ("POST", "/generate", {"group_id": "g", "prompt": "Say hi.", "n": 2, "max_new_tokens": 4, "seed": 1}),
    ]:
        answer = app_client.request(method, path, json=body, headers=b)
        assert (answer.status_code, answer.json().get("detail")) == (404, not_found), (method, path, answer.text)
        nobody = path.replace("/groups/g", "/groups/nope")
        assert nobody != path or path in ("/predict", "/generate")
        unknown = app_client.request(method, nobody, json=body and {**body, "group_id": "nope"}, headers=b)
        # the same answer as for a name nobody uses (only the name differs)
        assert (unknown.status_code, unknown.json().get("detail")) == (404, "group 'nope' not found"), (method, nobody)
    assert app_client.get("/groups", headers=b).json()["groups"] == []

    # write: B's write to the same name makes B's own group; A's is untouched
    b_write = app_client.post("/groups/g/context", json={"mode": "replace", "items": [context_item(7)]}, headers=b)
    assert (b_write.status_code, b_write.json()["version"], b_write.json()["size"]) == (200, 1, 1)
    assert app_client.get("/groups/g/context", headers=a).json() == a_context
    assert (
        app_client.post("/predict", json={"group_id": "g", "questions": [question(5)]}, headers=a).json()
        == a_prediction
    )
    # B cannot delete A's item through its own group of the same name either
    assert app_client.delete(f"/groups/g/context/{a_item}", headers=b).status_code == 404
    assert app_client.get("/groups/g", headers=a).json()["version"] == 1
    b_prediction = app_client.post("/predict", json={"group_id": "g", "questions": [question(5)]}, headers=b).json()
    assert b_prediction["predictions"] != a_prediction["predictions"]  # each tenant's context, not the other's
    assert [g["group_id"] for g in app_client.get("/groups", headers=a).json()["groups"]] == ["g"]
    assert app_client.delete("/groups/g", headers=b).status_code == 204
    assert app_client.get("/groups/g", headers=a).status_code == 200  # B deleted its own group only


def test_a_revoked_key_stops_working(app_client: TestClient, tenant_settings: Settings) -> None:
    url = tenant_settings.database_url
    secret = api_key(url, "acme")
    assert app_client.get("/groups", headers=bearer(secret)).status_code == 200
    engine = make_engine(url)
    try:
        from service.db import repository as repo

        with session_scope(make_sessionmaker(engine)) as s:
            ((key_id, stored),) = s.execute(select(ApiKey.id, ApiKey.key_hash).where(ApiKey.tenant == "acme")).all()
            assert stored == key_digest(secret) != secret  # only the digest is stored
            repo.revoke_api_key(s, key_id)
    finally:
        engine.dispose()
    refused = app_client.get("/groups", headers=bearer(secret))
    assert (refused.status_code, refused.json().get("detail")) == (401, "invalid or revoked API key")


def test_auth_off_is_only_for_the_embedded_sqlite_default(make_settings: SettingsFactory, sqlite_url: str) -> None:
    with pytest.raises(ValidationError, match="GPO_AUTH=false is only allowed with the embedded SQLite database"):
        make_settings("postgresql+psycopg://postgres@127.0.0.1:5432/test", auth=False)
    with TestClient(create_app(make_settings(sqlite_url, auth=False))) as open_client:
        assert open_client.post("/groups/g/context", json={"items": [context_item(0)]}).status_code == 200
        assert open_client.get("/groups").json()["groups"][0]["group_id"] == "g"


def test_a_revoked_key_works_for_at_most_the_configured_cache_time(
    make_settings: SettingsFactory, database_url: str
) -> None:
    """GPO_AUTH_CACHE_S is the documented revocation delay: a revoked key is still accepted while its lookup is
    cached, and refused once the cache time has passed (here 3 s)."""
    settings = make_settings(database_url, auth_cache_s=3.0)
    secret = api_key(database_url, "acme")
    with TestClient(create_app(settings)) as client:
        # The lookup is cached for 3 s from a moment between sent and answered: the revoked key must still work
        # before sent + 3 s, and must be refused after answered + 3 s.
        sent = time.monotonic()
        assert client.get("/groups", headers=bearer(secret)).status_code == 200  # looked up, cached for 3 s
        answered = time.monotonic()
        engine = make_engine(database_url)
        try:
            from service.db import repository as repo

            with session_scope(make_sessionmaker(engine)) as s:
                ((key_id,),) = s.execute(select(ApiKey.id).where(ApiKey.tenant == "acme")).all()
                repo.revoke_api_key(s, key_id)
        finally:
            engine.dispose()
        still = client.get("/groups", headers=bearer(secret))
        assert time.monotonic() - sent < 3.0, "the machine stalled past the cache time; the check means nothing"
        assert still.status_code == 200  # within the delay: the cached lookup
        time.sleep(max(0.0, 3.0 - (time.monotonic() - answered)) + 0.2)
        refused = client.get("/groups", headers=bearer(secret))
        assert (refused.status_code, refused.json().get("detail")) == (401, "invalid or revoked API key")
