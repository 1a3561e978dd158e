"""Concurrent clients writing one group's context over real HTTP: no lost update, and a clean 409 on a stale version."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from service.config import Settings

from .conftest import SettingsFactory, api_key, bearer, served_app

THREADS = 8
WRITES_PER_THREAD = 4


def item(name: str) -> dict:
    return {"question": f"{name}?", "options": ["yes", "no"], "distribution": [0.3, 0.7]}


@pytest.fixture
def api(make_settings: SettingsFactory, database_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    settings: Settings = make_settings(database_url)
    with served_app(settings) as url:
        yield url, bearer(api_key(database_url))


def run_threads(target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(t: int) -> None:
        try:
            target(t)
        except BaseException as exc:  # an assertion in a thread would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors


def test_concurrent_appends_lose_no_update(api: tuple[str, dict[str, str]]) -> None:
    url, headers = api
    barrier = threading.Barrier(THREADS)
    versions: list[int] = []

    def writer(t: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            barrier.wait()  # every thread races to create the group at once
            for w in range(WRITES_PER_THREAD):
                answer = http.post(
                    "/groups/shared/context", json={"items": [item(f"t{t}-w{w}-a"), item(f"t{t}-w{w}-b")]}
                )
                assert answer.status_code == 200, answer.text
                versions.append(answer.json()["version"])

    run_threads(writer)
    total = THREADS * WRITES_PER_THREAD
    assert sorted(versions) == list(range(1, total + 1))  # each write acknowledged with its own version
    context = httpx.get(f"{url}/groups/shared/context", headers=headers).json()
    assert (context["version"], context["size"]) == (total, 2 * total)
    questions = [i["question"] for i in context["items"]]
    assert sorted(questions) == sorted(
        f"t{t}-w{w}-{s}?" for t in range(THREADS) for w in range(WRITES_PER_THREAD) for s in "ab"
    )
    for t in range(THREADS):  # each client's writes in its order, each write's items together
        mine = [q for q in questions if q.startswith(f"t{t}-")]
        assert mine == [f"t{t}-w{w}-{s}?" for w in range(WRITES_PER_THREAD) for s in "ab"]


def test_stale_expected_version_gets_409_and_stores_nothing(api: tuple[str, dict[str, str]]) -> None:
    """Compare-and-set: all clients read version v and write with expected_version=v at once; one wins, the others
    get 409 and store nothing; retrying with the new version, every client's write lands exactly once."""
    url, headers = api
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        assert (
            http.post("/groups/cas/context", json={"items": [item("seed")], "expected_version": 0}).status_code == 200
        )
        stale = http.post("/groups/cas/context", json={"items": [item("late")], "expected_version": 0})
        assert stale.status_code == 409 and stale.json() == {"detail": "group 'cas' is at version 1, expected 0"}
        missing = http.post("/groups/new-one/context", json={"items": [item("x")], "expected_version": 3})
        assert missing.status_code == 409 and http.get("/groups/new-one").status_code == 404  # not created
    barrier = threading.Barrier(THREADS)
    first_round: list[int] = []
    conflicts: list[int] = []

    def writer(t: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            version = http.get("/groups/cas").json()["version"]
            barrier.wait()
            attempt = 0
            while True:
                answer = http.post(
                    "/groups/cas/context", json={"items": [item(f"cas-{t}")], "expected_version": version}
                )
                if answer.status_code == 200:
                    if attempt == 0:
                        first_round.append(t)
                    return
                assert answer.status_code == 409, answer.text
                conflicts.append(t)
                attempt += 1
                version = http.get("/groups/cas").json()["version"]

    run_threads(writer)
    assert len(first_round) == 1  # all read version 1 before any wrote: exactly one write could land with it
    assert len(conflicts) >= THREADS - 1
    context = httpx.get(f"{url}/groups/cas/context", headers=headers).json()
    questions = [i["question"] for i in context["items"]]
    assert questions[0] == "seed?" and sorted(questions[1:]) == sorted(f"cas-{t}?" for t in range(THREADS))
    assert context["version"] == 1 + THREADS  # a refused write never moved the version
