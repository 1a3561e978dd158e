"""Registering, reading, listing and deleting groups; validation errors name the field and store nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import SettingsFactory, authed_client, context_item

BASE = [context_item(0), context_item(1)]


def test_append_and_replace_move_the_version(client: TestClient) -> None:
    assert client.post("/groups/a/context", json={"items": BASE}).json() == {"group_id": "a", "version": 1, "size": 2}
    appended = client.post("/groups/a/context", json={"mode": "append", "items": [context_item(2)]})
    assert appended.json() == {"group_id": "a", "version": 2, "size": 3}
    replaced = client.post("/groups/a/context", json={"mode": "replace", "items": [context_item(3)]})
    assert replaced.json() == {"group_id": "a", "version": 3, "size": 1}
    emptied = client.post("/groups/a/context", json={"mode": "replace", "items": []})
    assert emptied.json() == {"group_id": "a", "version": 4, "size": 0}

    group = client.get("/groups/a").json()
    assert (group["group_id"], group["kind"], group["size"], group["version"]) == ("a", "choice", 0, 4)
    assert group["created_at"] <= group["updated_at"]


def test_context_lists_items_without_embeddings(client: TestClient) -> None:
    client.post("/groups/a/context", json={"items": [{**BASE[0], "ordinals": [1, 2]}, BASE[1]]})
    context = client.get("/groups/a/context").json()
    assert (context["group_id"], context["version"], context["size"]) == ("a", 1, 2)
    first, second = context["items"]
    assert set(first) == {"id", "kind", "question", "options", "distribution", "ordinals", "score", "scale"}
    assert (first["kind"], first["score"], first["scale"]) == ("choice", None, None)
    assert (first["question"], first["options"], first["ordinals"]) == (BASE[0]["question"], BASE[0]["options"], [1, 2])
    assert first["distribution"] == pytest.approx(BASE[0]["distribution"], abs=1e-12)
    assert second["ordinals"] is None and second["id"] > first["id"]


def test_counts_are_normalised_and_distributions_renormalised(client: TestClient) -> None:
    items = [
        {"question": "Q1?", "options": ["a", "b", "c"], "counts": [1, 3, 0]},
        {"question": "Q2?", "options": ["a", "b"], "distribution": [0.6004, 0.4]},  # off by 4e-4: accepted
    ]
    assert client.post("/groups/c/context", json={"items": items}).status_code == 200
    first, second = client.get("/groups/c/context").json()["items"]
    assert first["distribution"] == [0.25, 0.75, 0.0]
    assert second["distribution"] == pytest.approx([0.6004 / 1.0004, 0.4 / 1.0004], abs=1e-12)
    assert sum(second["distribution"]) == pytest.approx(1.0, abs=1e-12)


def test_list_pages_by_group_id(client: TestClient) -> None:
    for name in ("b", "a", "c"):
        client.post(f"/groups/{name}/context", json={"items": BASE[:1]})
    page = client.get("/groups", params={"limit": 2, "offset": 1}).json()
    assert [g["group_id"] for g in page["groups"]] == ["b", "c"]
    assert (page["limit"], page["offset"]) == (2, 1)
    assert [g["group_id"] for g in client.get("/groups").json()["groups"]] == ["a", "b", "c"]
    assert client.get("/groups", params={"limit": 0}).status_code == 422


def test_delete_group_and_item(client: TestClient) -> None:
    client.post("/groups/d/context", json={"items": BASE})
    first_id = client.get("/groups/d/context").json()["items"][0]["id"]
    assert client.delete(f"/groups/d/context/{first_id}").json() == {"group_id": "d", "version": 2, "size": 1}
    remaining = client.get("/groups/d/context").json()["items"]
    assert [it["question"] for it in remaining] == [BASE[1]["question"]]
    missing = client.delete(f"/groups/d/context/{first_id}")
    assert (missing.status_code, missing.json()) == (404, {"detail": f"item {first_id} not found in group 'd'"})

    assert client.delete("/groups/d").status_code == 204
    for method, path in [
        ("GET", "/groups/d"),
        ("GET", "/groups/d/context"),
        ("DELETE", "/groups/d"),
        ("DELETE", f"/groups/d/context/{first_id}"),
    ]:
        answer = client.request(method, path)
        assert (answer.status_code, answer.json()) == (404, {"detail": "group 'd' not found"}), (method, path)
    assert client.get("/groups").json()["groups"] == []


# ---------------------------------------------------------------------------------------------- validation


def _item(**changes: Any) -> dict[str, Any]:
    item = {"question": "Is it?", "options": ["yes", "no"], "distribution": [0.5, 0.5]}
    item.update(changes)
    return {k: v for k, v in item.items() if v is not None}


# (body, the field the error must name). Each is refused with 422 and stores nothing.
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "no items key": ({"mode": "append"}, "items"),
    "empty append": ({"items": []}, "items"),
    "bad mode": ({"mode": "merge", "items": [_item()]}, "mode"),
    "empty options": ({"items": [_item(options=[], distribution=[])]}, "options"),
    "blank option": ({"items": [_item(options=["yes", "  "])]}, "options"),
    "duplicate options": ({"items": [_item(options=["yes", " yes"])]}, "options"),
    "empty question": ({"items": [_item(question=" ")]}, "question"),
    "short distribution": ({"items": [_item(distribution=[1.0])]}, "distribution"),
    "negative": ({"items": [_item(distribution=[1.5, -0.5])]}, "distribution"),
    "not summing to 1": ({"items": [_item(distribution=[0.5, 0.4])]}, "distribution"),
    "infinite count": ({"items": [_item(distribution=None, counts=[1, "Infinity"])]}, "counts"),
    "zero counts": ({"items": [_item(distribution=None, counts=[0, 0])]}, "counts"),
    "both": ({"items": [_item(counts=[1, 1])]}, "counts"),
    "neither": ({"items": [_item(distribution=None)]}, "distribution"),
    "ordinals length": ({"items": [_item(ordinals=[1, 2, 3])]}, "ordinals"),
    "unknown field": ({"items": [_item(weights=[1, 2])]}, "weights"),
    "one bad item of two": ({"items": [_item(), _item(distribution=[0.9, 0.9])]}, "distribution"),
}


@pytest.fixture(scope="module")
def module_client(
    model_store: Any, tiny_lm_path: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """One app for the validation cases (they change nothing, so they can share it)."""
    from service.config import Settings
    from service.db.migrate import upgrade_database

    from .conftest import CHECKPOINT

    url = f"sqlite:///{tmp_path_factory.mktemp('validation') / 'gpo.sqlite3'}"
    upgrade_database(url)
    settings = Settings(
        embedder=str(tiny_lm_path),
        device="cpu",
        cache_dir=tmp_path_factory.mktemp("vcache"),
        model_store=model_store,
        checkpoint=CHECKPOINT,
        database_url=url,
        max_text_chars=50,
        max_options=3,
        max_items_per_request=3,
        max_context_items=4,
    )
    with authed_client(settings) as c:
        assert c.post("/groups/v/context", json={"items": BASE}).status_code == 200
        yield c


LIMITS: dict[str, tuple[dict[str, Any], str]] = {
    "too many items": ({"items": [_item()] * 4}, "items"),
    "too many options": ({"items": [_item(options=list("abcd"), distribution=[0.25] * 4)]}, "options"),
    "question too long": ({"items": [_item(question="x" * 51)]}, "question"),
    "option too long": ({"items": [_item(options=["yes", "n" * 51])]}, "options"),
}


def _names(detail: Any, field: str) -> bool:
    """Whether a 422 detail names `field` (in an error's location or message)."""
    return any(field in map(str, err["loc"]) or field in err["msg"] for err in detail)


@pytest.mark.parametrize("case", [*INVALID, *LIMITS])
def test_invalid_context_is_refused_and_stores_nothing(module_client: TestClient, case: str) -> None:
    body, field = INVALID.get(case) or LIMITS[case]
    before = module_client.get("/groups/v/context").json()
    answer = module_client.post("/groups/v/context", json=body)
    assert answer.status_code == 422, answer.text
    assert _names(answer.json()["detail"], field), answer.json()
    assert module_client.get("/groups/v/context").json() == before
    created = module_client.post("/groups/new-one/context", json=body)
    assert created.status_code == 422 and module_client.get("/groups/new-one").status_code == 404


def test_a_group_holds_at_most_max_context_items(module_client: TestClient) -> None:
    before = module_client.get("/groups/v/context").json()
    body = {"items": [_item(question=f"q{i}") for i in range(3)]}  # 2 + 3 > 4
    answer = module_client.post("/groups/v/context", json=body)
    assert answer.status_code == 422 and _names(answer.json()["detail"], "items"), answer.text
    assert "at most 4 items" in answer.json()["detail"][0]["msg"]
    assert module_client.get("/groups/v/context").json() == before
    replaced = module_client.post("/groups/v/context", json={"mode": "replace", **body})
    assert replaced.json() == {"group_id": "v", "version": before["version"] + 1, "size": 3}
    module_client.post("/groups/v/context", json={"mode": "replace", "items": BASE})


@pytest.mark.parametrize("group_id", ["has space", "slash%2Fed", "x" * 129, "é"])
def test_group_id_pattern(module_client: TestClient, group_id: str) -> None:
    answer = module_client.post(f"/groups/{group_id}/context", json={"items": BASE})
    assert answer.status_code in (404, 422), answer.text  # an encoded slash may not even reach the route
    if answer.status_code == 422:
        assert answer.json()["detail"][0]["loc"] == ["path", "group_id"]
    assert [g["group_id"] for g in module_client.get("/groups").json()["groups"]] == ["v"]


def test_group_ids_may_use_the_documented_punctuation(client: TestClient) -> None:
    name = "Org_1.team:a-b"
    assert client.post(f"/groups/{name}/context", json={"items": BASE}).json()["group_id"] == name
    assert client.get(f"/groups/{name}").json()["group_id"] == name


def test_the_embedded_default_settings_need_nothing(make_settings: SettingsFactory, tmp_path: Any) -> None:
    """A database file in a folder that does not exist yet is created and migrated at start-up."""
    settings = make_settings(f"sqlite:///{tmp_path / 'fresh' / 'var' / 'gpo.sqlite3'}")
    with authed_client(settings) as c:
        assert c.post("/groups/a/context", json={"items": BASE}).status_code == 200


def test_text_the_base_llm_cannot_take_is_refused(client: TestClient) -> None:
    """Within max_text_chars but past the LLM's context: the worker's reason comes back as a 422."""
    body = {"items": [BASE[0], _item(question="word " * 700)]}
    answer = client.post("/groups/long/context", json=body)
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["msg"].startswith("the base LLM refused the input: ") and "at most 512" in error["msg"]
    assert client.get("/groups/long").status_code == 404
