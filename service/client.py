"""Typed Python client of the public API on httpx: `GPOClient` (sync) and `AsyncGPOClient`, same methods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, Literal, TypedDict, TypeVar, Unpack

import httpx
from pydantic import BaseModel

from service.schemas import (
    ContextItemIn,
    ContextWriteRequest,
    ContextWriteResponse,
    GenerateRequest,
    GenerateResponse,
    GroupContext,
    GroupList,
    GroupOut,
    PredictRequest,
    PredictResponse,
    QuestionIn,
    ReadyResponse,
)

M = TypeVar("M", bound=BaseModel)
HttpClientT = TypeVar("HttpClientT", httpx.Client, httpx.AsyncClient)
TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)
DEFAULT_URL = "http://127.0.0.1:8000"
ContextItems = Sequence[ContextItemIn | dict[str, Any]]
Questions = Sequence[QuestionIn | dict[str, Any]]


class GPOAPIError(Exception):
    """The API answered with an error: `status_code`, FastAPI's `detail`, and `retry_after` (s) on a 503."""

    def __init__(self, status_code: int, detail: Any, retry_after: float | None = None) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after


def _raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    retry = response.headers.get("Retry-After")
    raise GPOAPIError(response.status_code, detail, float(retry) if retry else None)


def _parse(model: type[M], response: httpx.Response) -> M:
    _raise_for_status(response)
    return model.model_validate_json(response.content)


def _body(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


def _context_body(
    items: ContextItems, mode: Literal["append", "replace"], expected_version: int | None = None
) -> dict[str, Any]:
    body = {"mode": mode, "items": list(items), "expected_version": expected_version}
    return _body(ContextWriteRequest.model_validate(body))


def _predict_body(questions: Questions, group_id: str | None, context: ContextItems | None) -> dict[str, Any]:
    fields = {"group_id": group_id, "context": None if context is None else list(context), "questions": list(questions)}
    return _body(PredictRequest.model_validate(fields))


class GenerateOptions(TypedDict, total=False):
    """The sampling options of `generate` (keyword arguments of both clients); None or absent: the API's default."""

    n: int | None
    max_new_tokens: int | None
    temperature: float | None
    seed: int | None


def _generate_body(group_id: str, prompt: str, options: GenerateOptions) -> dict[str, Any]:
    # An option the API does not know fails validation here (GenerateRequest forbids extra fields).
    fields = {k: v for k, v in options.items() if v is not None}
    return _body(GenerateRequest.model_validate({"group_id": group_id, "prompt": prompt, **fields}))


def _ready(response: httpx.Response) -> ReadyResponse:
    if response.status_code != 503:  # a 503 carries the same body as a 200: which checks failed
        _raise_for_status(response)
    return ReadyResponse.model_validate_json(response.content)


class _ClientBase(Generic[HttpClientT, TransportT]):
    """What both clients hold: an httpx client (made here and closed with the client, unless `http_client` is
    passed in) and the Authorization header of `api_key`."""

    _http_class: type[HttpClientT]

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        transport: TransportT | None = None,
        http_client: HttpClientT | None = None,
    ) -> None:
        self._owned = http_client is None
        self._http = http_client or self._http_class(base_url=base_url, timeout=timeout_s, transport=transport)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}


class GPOClient(_ClientBase[httpx.Client, httpx.BaseTransport]):
    """Blocking client. Pass `http_client` to reuse an httpx.Client (e.g. FastAPI's TestClient), else one is made.

    Requests are validated with the API's own models before they are sent: a malformed one raises
    pydantic's ValidationError locally; errors of the server raise GPOAPIError.
    """

    _http_class = httpx.Client

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._http.request(method, path, headers=self._headers, **kwargs)

    def register_context(
        self,
        group_id: str,
        items: ContextItems,
        mode: Literal["append", "replace"] = "append",
        expected_version: int | None = None,
    ) -> ContextWriteResponse:
        """Append or replace; with `expected_version`, 409 (GPOAPIError) unless the group is at that version."""
        body = _context_body(items, mode, expected_version)
        return _parse(ContextWriteResponse, self._call("POST", f"/groups/{group_id}/context", json=body))

    def list_groups(self, limit: int = 100, offset: int = 0) -> GroupList:
        return _parse(GroupList, self._call("GET", "/groups", params={"limit": limit, "offset": offset}))

    def get_group(self, group_id: str) -> GroupOut:
        return _parse(GroupOut, self._call("GET", f"/groups/{group_id}"))

    def get_context(self, group_id: str) -> GroupContext:
        return _parse(GroupContext, self._call("GET", f"/groups/{group_id}/context"))

    def delete_group(self, group_id: str) -> None:
        _raise_for_status(self._call("DELETE", f"/groups/{group_id}"))

    def delete_item(self, group_id: str, item_id: int) -> ContextWriteResponse:
        return _parse(ContextWriteResponse, self._call("DELETE", f"/groups/{group_id}/context/{item_id}"))

    def predict(
        self, questions: Questions, *, group_id: str | None = None, context: ContextItems | None = None
    ) -> PredictResponse:
        body = _predict_body(questions, group_id, context)
        return _parse(PredictResponse, self._call("POST", "/predict", json=body))

    def generate(self, group_id: str, prompt: str, **options: Unpack[GenerateOptions]) -> GenerateResponse:
        body = _generate_body(group_id, prompt, options)
        return _parse(GenerateResponse, self._call("POST", "/generate", json=body))

    def healthz(self) -> bool:
        return self._call("GET", "/healthz").status_code == 200

    def readyz(self) -> ReadyResponse:
        return _ready(self._call("GET", "/readyz"))

    def close(self) -> None:
        if self._owned:
            self._http.close()

    def __enter__(self) -> GPOClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncGPOClient(_ClientBase[httpx.AsyncClient, httpx.AsyncBaseTransport]):
    """The same client for asyncio/anyio code, on an httpx.AsyncClient (`transport`: e.g. httpx.ASGITransport)."""

    _http_class = httpx.AsyncClient

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self._http.request(method, path, headers=self._headers, **kwargs)

    async def register_context(
        self,
        group_id: str,
        items: ContextItems,
        mode: Literal["append", "replace"] = "append",
        expected_version: int | None = None,
    ) -> ContextWriteResponse:
        """Append or replace; with `expected_version`, 409 (GPOAPIError) unless the group is at that version."""
        body = _context_body(items, mode, expected_version)
        return _parse(ContextWriteResponse, await self._call("POST", f"/groups/{group_id}/context", json=body))

    async def list_groups(self, limit: int = 100, offset: int = 0) -> GroupList:
        return _parse(GroupList, await self._call("GET", "/groups", params={"limit": limit, "offset": offset}))

    async def get_group(self, group_id: str) -> GroupOut:
        return _parse(GroupOut, await self._call("GET", f"/groups/{group_id}"))

    async def get_context(self, group_id: str) -> GroupContext:
        return _parse(GroupContext, await self._call("GET", f"/groups/{group_id}/context"))

    async def delete_group(self, group_id: str) -> None:
        _raise_for_status(await self._call("DELETE", f"/groups/{group_id}"))

    async def delete_item(self, group_id: str, item_id: int) -> ContextWriteResponse:
        return _parse(ContextWriteResponse, await self._call("DELETE", f"/groups/{group_id}/context/{item_id}"))

    async def predict(
        self, questions: Questions, *, group_id: str | None = None, context: ContextItems | None = None
    ) -> PredictResponse:
        body = _predict_body(questions, group_id, context)
        return _parse(PredictResponse, await self._call("POST", "/predict", json=body))

    async def generate(self, group_id: str, prompt: str, **options: Unpack[GenerateOptions]) -> GenerateResponse:
        body = _generate_body(group_id, prompt, options)
        return _parse(GenerateResponse, await self._call("POST", "/generate", json=body))

    async def healthz(self) -> bool:
        return (await self._call("GET", "/healthz")).status_code == 200

    async def readyz(self) -> ReadyResponse:
        return _ready(await self._call("GET", "/readyz"))

    async def aclose(self) -> None:
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncGPOClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
