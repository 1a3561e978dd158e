"""Repository functions against real SQLite and Postgres databases: versions, order, tenants, deletes, embeddings."""

from __future__ import annotations

from datetime import UTC, timedelta

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import ContextItem, Group
from service.db.repository import (
    GroupKindMismatch,
    GroupNotFound,
    ItemNotFound,
    NewItem,
    VersionConflict,
    delete_group,
    delete_item,
    get_context,
    get_group,
    group_version,
    group_version_and_first_payload,
    list_groups,
    set_item_embeddings,
    write_context,
)

T = "default"


def new_item(tag: str, n_options: int = 3, *, dim: int | None = None, seed: int = 0) -> NewItem:
    """An item whose question is `q-<tag>`; with `dim`, random float32 embeddings [n_options, dim]."""
    embeddings = None
    if dim is not None:
        embeddings = np.random.default_rng(seed).standard_normal((n_options, dim)).astype(np.float32).tobytes()
    return NewItem(
        question=f"q-{tag}",
        options=[f"o{j}" for j in range(n_options)],
        distribution=[1.0 / n_options] * n_options,
        embedder_key="tiny:rev1:mean" if dim is not None else None,
        embeddings=embeddings,
    )


def questions(session: Session, tenant: str, name: str) -> list[str]:
    return [item.question for item in get_context(session, tenant, name)[1]]


def item_rows(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ContextItem))


def test_append_creates_the_group_then_adds_after_existing_items(session: Session) -> None:
    info = write_context(session, T, "g", [new_item("a"), new_item("b")], "append")
    assert (info.name, info.kind, info.version, info.size) == ("g", "choice", 1, 2)
    info = write_context(session, T, "g", [new_item("c"), new_item("d"), new_item("e")], "append")
    assert (info.version, info.size) == (2, 5)

    group, items = get_context(session, T, "g")
    assert group == info
    assert [i.question for i in items] == ["q-a", "q-b", "q-c", "q-d", "q-e"]
    assert [i.position for i in items] == [0, 1, 2, 3, 4]
    assert items[0].options == ["o0", "o1", "o2"]
    assert items[0].distribution == [1 / 3, 1 / 3, 1 / 3]
    assert (items[0].kind, items[0].ordinals, items[0].payload, items[0].embeddings) == ("choice", None, None, None)


def test_replace_drops_existing_items_and_restarts_positions(session: Session) -> None:
    write_context(session, T, "g", [new_item("a"), new_item("b"), new_item("c")], "append")
    info = write_context(session, T, "g", [new_item("x"), new_item("y")], "replace")
    assert (info.version, info.size) == (2, 2)
    _, items = get_context(session, T, "g")
    assert [(i.question, i.position) for i in items] == [("q-x", 0), ("q-y", 1)]
    assert item_rows(session) == 2

    info = write_context(session, T, "g", [], "replace")
    assert (info.version, info.size) == (3, 0)
    assert get_context(session, T, "g") == (info, [])


def test_every_write_bumps_the_version_by_one_even_when_empty(session: Session) -> None:
    versions = [write_context(session, T, "g", [], "append").version for _ in range(3)]
    assert versions == [1, 2, 3]
    assert get_group(session, T, "g").size == 0


def test_replace_on_a_new_group_creates_it(session: Session) -> None:
    info = write_context(session, T, "fresh", [new_item("a")], "replace")
    assert (info.version, info.size) == (1, 1)


def test_timestamps_are_utc_and_updated_at_moves(session: Session) -> None:
    first = write_context(session, T, "g", [new_item("a")], "append")
    assert first.created_at.utcoffset() == timedelta(0)
    assert first.updated_at.utcoffset() == timedelta(0)
    assert first.updated_at >= first.created_at
    session.commit()

    second = write_context(session, T, "g", [new_item("b")], "append")
    session.commit()
    stored = get_group(session, T, "g")
    assert stored.created_at == first.created_at
    assert stored.updated_at == second.updated_at
    assert stored.updated_at > first.updated_at
    assert stored.created_at.tzinfo == UTC


def test_get_group_and_list_groups(session: Session) -> None:
    write_context(session, T, "b", [new_item("1")], "append")
    write_context(session, T, "a", [new_item("1"), new_item("2")], "append")
    write_context(session, T, "c", [], "append")
    write_context(session, "other", "d", [new_item("1")], "append")

    assert [(g.name, g.size, g.version) for g in list_groups(session, T, limit=10, offset=0)] == [
        ("a", 2, 1),
        ("b", 1, 1),
        ("c", 0, 1),
    ]
    assert [g.name for g in list_groups(session, T, limit=2, offset=0)] == ["a", "b"]
    assert [g.name for g in list_groups(session, T, limit=2, offset=2)] == ["c"]
    assert list_groups(session, T, limit=2, offset=3) == []
    assert get_group(session, T, "a") == list_groups(session, T, limit=1, offset=0)[0]
    with pytest.raises(GroupNotFound):
        get_group(session, T, "missing")


def test_another_tenant_sees_nothing_and_touches_nothing(session: Session) -> None:
    write_context(session, "acme", "g", [new_item("a"), new_item("b")], "append")
    item_id = get_context(session, "acme", "g")[1][0].id

    with pytest.raises(GroupNotFound):
        get_group(session, "globex", "g")
    with pytest.raises(GroupNotFound):
        get_context(session, "globex", "g")
    with pytest.raises(GroupNotFound):
        delete_group(session, "globex", "g")
    with pytest.raises(GroupNotFound):
        delete_item(session, "globex", "g", item_id)
    assert list_groups(session, "globex", limit=10, offset=0) == []

    # The same name in another tenant is another group.
    other = write_context(session, "globex", "g", [new_item("z")], "append")
    assert (other.version, other.size) == (1, 1)
    acme = get_group(session, "acme", "g")
    assert (acme.version, acme.size) == (1, 2)
    assert questions(session, "acme", "g") == ["q-a", "q-b"]
    assert questions(session, "globex", "g") == ["q-z"]


def test_delete_group_cascades_to_its_items(session: Session) -> None:
    write_context(session, T, "g", [new_item("a"), new_item("b")], "append")
    write_context(session, T, "keep", [new_item("k")], "append")
    assert item_rows(session) == 3

    delete_group(session, T, "g")
    session.commit()
    assert item_rows(session) == 1  # the database deleted them (ON DELETE CASCADE), not the ORM
    assert session.scalar(select(func.count()).select_from(Group)) == 1
    with pytest.raises(GroupNotFound):
        get_group(session, T, "g")
    with pytest.raises(GroupNotFound):
        delete_group(session, T, "g")
    assert questions(session, T, "keep") == ["q-k"]


def test_delete_item_bumps_the_version_and_keeps_the_order(session: Session) -> None:
    write_context(session, T, "g", [new_item("a"), new_item("b"), new_item("c")], "append")
    write_context(session, T, "other", [new_item("o")], "append")
    items = get_context(session, T, "g")[1]

    info = delete_item(session, T, "g", items[1].id)
    assert (info.version, info.size) == (2, 2)
    assert [(i.question, i.position) for i in get_context(session, T, "g")[1]] == [("q-a", 0), ("q-c", 2)]

    with pytest.raises(ItemNotFound):
        delete_item(session, T, "g", items[1].id)  # already gone
    other_item = get_context(session, T, "other")[1][0]
    with pytest.raises(ItemNotFound):
        delete_item(session, T, "g", other_item.id)  # belongs to another group
    with pytest.raises(GroupNotFound):
        delete_item(session, T, "missing", items[0].id)

    # An append after a delete goes after the last remaining item.
    write_context(session, T, "g", [new_item("d")], "append")
    assert [(i.question, i.position) for i in get_context(session, T, "g")[1]] == [
        ("q-a", 0),
        ("q-c", 2),
        ("q-d", 3),
    ]
    assert get_group(session, T, "g").version == 3


def test_expected_version_guards_writes(session: Session) -> None:
    assert write_context(session, T, "g", [new_item("a")], "append", expected_version=0).version == 1
    session.commit()

    with pytest.raises(VersionConflict) as conflict:
        write_context(session, T, "g", [new_item("b")], "append", expected_version=0)
    assert (conflict.value.expected, conflict.value.actual) == (0, 1)
    session.rollback()

    assert write_context(session, T, "g", [new_item("b")], "replace", expected_version=1).version == 2
    session.commit()
    info, items = get_context(session, T, "g")
    assert (info.version, [i.question for i in items]) == (2, ["q-b"])

    # A group that does not exist is at version 0: anything else conflicts, and nothing is created.
    with pytest.raises(VersionConflict):
        write_context(session, T, "new", [new_item("a")], "append", expected_version=3)
    session.rollback()
    with pytest.raises(GroupNotFound):
        get_group(session, T, "new")


def test_nothing_is_committed_by_the_repository(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        write_context(session, T, "g", [new_item("a")], "append")
        session.rollback()
    with session_factory() as session:
        with pytest.raises(GroupNotFound):
            get_group(session, T, "g")
        write_context(session, T, "g", [new_item("a")], "append")
        session.commit()
    with session_factory() as session:
        assert get_group(session, T, "g").size == 1


def test_fields_and_embeddings_round_trip_exactly(session: Session) -> None:
    rng = np.random.default_rng(7)
    embeddings = rng.standard_normal((4, 16)).astype(np.float32)
    item = NewItem(
        question="How much do you trust science?\nPick one.",
        options=["A great deal", "Some", "Not much", "Ünïcode ✓"],
        distribution=[0.1, 0.2, 0.3000000000000001, 0.4],
        ordinals=[1.0, 2.0, 3.0, 4.0],
        payload={"source": "opinionqa", "wave": 34, "tags": ["x", "y"]},
        embedder_key="smollm2:abc123:mean",
        embeddings=embeddings.tobytes(),
    )
    write_context(session, T, "g", [item, new_item("plain")], "append")
    session.commit()
    session.expunge_all()  # read back from the database, not from the identity map

    _, (stored, plain) = get_context(session, T, "g")
    assert stored.question == item.question
    assert stored.options == item.options
    assert stored.distribution == item.distribution
    assert stored.ordinals == item.ordinals
    assert stored.payload == item.payload
    assert stored.embedder_key == "smollm2:abc123:mean"
    assert isinstance(stored.embeddings, bytes)
    assert stored.embeddings == embeddings.tobytes()
    np.testing.assert_array_equal(np.frombuffer(stored.embeddings, dtype=np.float32).reshape(4, 16), embeddings)
    assert stored.created_at.utcoffset() == timedelta(0)
    assert (plain.embeddings, plain.embedder_key) == (None, None)


def test_set_item_embeddings_rewrites_vectors_without_a_new_version(session: Session) -> None:
    write_context(session, T, "g", [new_item("a", dim=8, seed=1), new_item("b", dim=8, seed=2)], "append")
    session.commit()
    items = get_context(session, T, "g")[1]
    new_vectors = {
        item.id: np.full((3, 4), float(k), dtype=np.float32).tobytes() for k, item in enumerate(items, start=1)
    }
    deleted_id = items[-1].id + 1000
    updated = set_item_embeddings(session, {**new_vectors, deleted_id: b"\0" * 48}, "other-model:rev2:last")
    session.commit()
    session.expunge_all()

    assert updated == 2
    info, stored = get_context(session, T, "g")
    assert info.version == 1
    assert [s.embedder_key for s in stored] == ["other-model:rev2:last"] * 2
    assert [s.embeddings for s in stored] == [new_vectors[s.id] for s in stored]
    assert set_item_embeddings(session, {}, "k") == 0
    with pytest.raises(ValueError, match="not float32"):
        set_item_embeddings(session, {stored[0].id: b"\0" * 20}, "k")  # 3 options: a multiple of 12 bytes


def test_ids_are_not_reused_after_a_replace(session: Session) -> None:
    """An id read before a concurrent replace must never name a new item (SQLite needs AUTOINCREMENT for this)."""
    write_context(session, T, "g", [new_item("a"), new_item("b")], "append")
    old_ids = {i.id for i in get_context(session, T, "g")[1]}
    write_context(session, T, "g", [new_item("c"), new_item("d")], "replace")
    session.commit()
    new_ids = {i.id for i in get_context(session, T, "g")[1]}
    assert old_ids.isdisjoint(new_ids)


def test_invalid_writes_are_refused(session: Session) -> None:
    with pytest.raises(ValueError, match="1 to 128 characters"):
        write_context(session, T, "x" * 129, [], "append")
    with pytest.raises(ValueError, match="1 to 128 characters"):
        write_context(session, T, "", [], "append")
    with pytest.raises(ValueError, match="mode"):
        write_context(session, T, "g", [], "merge")  # type: ignore[arg-type]
    assert write_context(session, T, "x" * 128, [], "append").name == "x" * 128


def test_new_item_checks_its_shapes() -> None:
    with pytest.raises(ValueError, match="at least one option"):
        NewItem(question="q", options=[], distribution=[])
    with pytest.raises(ValueError, match="distribution has 1 values for 2 options"):
        NewItem(question="q", options=["a", "b"], distribution=[1.0])
    with pytest.raises(ValueError, match="finite"):
        NewItem(question="q", options=["a", "b"], distribution=[float("nan"), 1.0])
    with pytest.raises(ValueError, match="ordinals has 3 values"):
        NewItem(question="q", options=["a", "b"], distribution=[0.5, 0.5], ordinals=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="without embedder_key"):
        NewItem(question="q", options=["a", "b"], distribution=[0.5, 0.5], embeddings=b"\0" * 16)
    with pytest.raises(ValueError, match="not float32"):
        NewItem(question="q", options=["a", "b"], distribution=[0.5, 0.5], embedder_key="k", embeddings=b"\0" * 12)


def test_a_group_keeps_its_kind(session: Session) -> None:
    rating = NewItem(question="Rate it.", options=["reply"], distribution=[0.75], kind="rating", payload={"score": 4})
    info = write_context(session, T, "r", [rating], "append", kind="rating")
    assert info.kind == "rating" and group_version(session, T, "r")[2] == "rating"
    with pytest.raises(GroupKindMismatch, match="group 'r' holds rating items; this write has choice items"):
        write_context(session, T, "r", [new_item("x")], "append")
    with pytest.raises(ValueError, match="must be of kind rating"):
        write_context(session, T, "r", [new_item("x")], "append", kind="rating")
    assert write_context(session, T, "r", [], "replace", kind="choice").kind == "rating"  # emptying keeps the kind
    assert get_group(session, T, "r").size == 0
    write_context(session, T, "r", [rating], "append", kind="rating")
    (stored,) = get_context(session, T, "r")[1]
    assert (stored.kind, stored.options, stored.distribution, stored.payload) == (
        "rating",
        ["reply"],
        [0.75],
        {"score": 4},
    )


def test_the_rating_fast_path_reads_the_version_with_the_first_items_payload(session: Session) -> None:
    def rating(score: float, scale: list[float]) -> NewItem:
        return NewItem(
            question="Rate it.",
            options=[f"reply {score}"],
            distribution=[0.5],
            kind="rating",
            payload={"score": score, "scale": scale},
        )

    write_context(session, T, "r", [rating(2, [1, 5]), rating(3, [0, 10])], "append", kind="rating")
    row, version, kind, payload = group_version_and_first_payload(session, T, "r")
    assert (row, version, kind) == group_version(session, T, "r") and payload == {"score": 2, "scale": [1, 5]}
    first_id = get_context(session, T, "r")[1][0].id
    delete_item(session, T, "r", first_id)  # the next item by position is now the first
    assert group_version_and_first_payload(session, T, "r")[1:] == (2, "rating", {"score": 3, "scale": [0, 10]})
    write_context(session, T, "r", [], "replace", kind="rating")
    assert group_version_and_first_payload(session, T, "r")[3] is None  # no items: no payload, still the version
    with pytest.raises(GroupNotFound):
        group_version_and_first_payload(session, T, "nobody")
    with pytest.raises(GroupNotFound):
        group_version_and_first_payload(session, "globex", "r")  # another tenant's group
