"""The typed client (sync and async) against the real app: in process, and over HTTP on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from pydantic import ValidationError

from service.app import create_app
from service.client import AsyncGPOClient, GPOAPIError, GPOClient
from service.config import Settings
from service.schemas import ContextItemIn, QuestionIn

from .conftest import NEW_QUESTION, api_key, authed_client, context_item, question, served_app


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _exercise(api: GPOClient) -> None:
    """Every public method once, with exact answers."""
    assert api.healthz()
    assert api.readyz().status == "ready"
    written = api.register_context("c1", [ContextItemIn(**context_item(0)), context_item(1, counts=True)])
    assert (written.group_id, written.version, written.size) == ("c1", 1, 2)
    assert api.register_context("c1", [context_item(2)], mode="replace").version == 2
    assert [g.group_id for g in api.list_groups().groups] == ["c1"]
    assert api.get_group("c1").size == 1
    context = api.get_context("c1")
    assert [it.question for it in context.items] == [context_item(2)["question"]]

    by_group = api.predict([QuestionIn(**question(4)), NEW_QUESTION], group_id="c1")
    assert by_group.context_version == 2 and [len(p.distribution) for p in by_group.predictions] == [
        len(question(4)["options"]),
        len(NEW_QUESTION["options"]),
    ]
    inline = api.predict([question(4)], context=[context_item(2)])
    assert inline.context_version is None
    assert inline.predictions[0].distribution == pytest.approx(by_group.predictions[0].distribution, abs=1e-6)

    ranked = api.generate("c1", "Name a colour.", n=2, max_new_tokens=4, seed=3)
    assert len(ranked.responses) == 2 and ranked.responses[0].score >= ranked.responses[1].score

    assert api.delete_item("c1", context.items[0].id).size == 0
    api.delete_group("c1")
    with pytest.raises(GPOAPIError) as missing:
        api.get_group("c1")
    assert (missing.value.status_code, missing.value.detail) == (404, "group 'c1' not found")
    with pytest.raises(ValidationError):  # refused before sending: the client validates with the API's models
        api.register_context("c1", [{"question": "q", "options": ["a", "b"], "distribution": [0.9, 0.9]}])


def test_sync_client_in_process(settings: Settings) -> None:
    with authed_client(settings) as test_client:
        _exercise(GPOClient(http_client=test_client))


@pytest.fixture
def served(settings: Settings) -> Iterator[str]:
    with served_app(settings) as url:
        yield url


def test_sync_client_over_http(served: str, settings: Settings) -> None:
    with GPOClient(served, api_key=api_key(settings.database_url)) as api:
        _exercise(api)


def test_client_without_a_key_gets_401(served: str) -> None:
    with GPOClient(served) as api, pytest.raises(GPOAPIError) as refused:
        api.list_groups()
    assert refused.value.status_code == 401 and "API key" in str(refused.value.detail)


@pytest.mark.anyio
async def test_async_client(settings: Settings) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):  # ASGITransport sends no lifespan events: run it here
        transport = httpx.ASGITransport(app=app)
        secret = api_key(settings.database_url)
        async with AsyncGPOClient("http://api", transport=transport, api_key=secret) as api:
            assert await api.healthz() and (await api.readyz()).checks["worker"] == "ok"
            written = await api.register_context("a1", [context_item(0), context_item(1)])
            assert (written.version, written.size) == (1, 2)
            assert [g.group_id for g in (await api.list_groups()).groups] == ["a1"]
            assert (await api.get_group("a1")).version == 1
            items = (await api.get_context("a1")).items
            predicted = await api.predict([question(5), question(6)], group_id="a1")
            assert predicted.context_version == 1 and len(predicted.predictions) == 2
            ranked = await api.generate("a1", "Name a fruit.", n=3, max_new_tokens=4, seed=1)
            assert [r.score for r in ranked.responses] == sorted((r.score for r in ranked.responses), reverse=True)
            assert (await api.delete_item("a1", items[1].id)).version == 2
            await api.delete_group("a1")
            with pytest.raises(GPOAPIError) as missing:
                await api.predict([question(5)], group_id="a1")
            assert missing.value.status_code == 404
