"""How the API reaches the base LLM: over HTTP to the embedding worker, or in process (same async interface)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import numpy as np
from pydantic import ValidationError

from service.batching import QueueFull
from service.embedder.embed import make_key_prefix
from service.embedder.engine import EngineUnavailable, InputTooLong, WorkerEngine
from service.embedder.loading import LMIdentity
from service.embedder.prompts import TEMPLATE_VERSION
from service.embedder.protocol import (
    MAX_INPUTS,
    CompletionsRequest,
    EmbeddingsRequest,
    ModelCard,
    SamplingParams,
    decode_base64,
)

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 256  # texts per embeddings request: bounded bodies, and other callers get turns in between


class WorkerError(Exception):
    """A call to the embedding worker failed."""


class WorkerUnavailable(WorkerError):
    """The worker cannot answer now (unreachable, timed out, 5xx, model not loadable): HTTP 503 upstream."""


class WorkerModelChanged(WorkerUnavailable):
    """The worker now serves other weights than the ones `info()` reported: vectors would get stale keys."""


class GenerationNotConfigured(WorkerError):
    """No completions server is configured (an OpenAI-compatible embeddings server cannot sample): /generate needs
    GPO_GENERATE_URL. Nothing heals it but the operator."""


class WorkerBusy(QueueFull):
    """The worker (or the server behind GPO_EMBED_URL / GPO_GENERATE_URL) answered 429: its queue is full or the work
    cannot start before the deadline. Upstream it is the API's own 429 with the worker's Retry-After, never a 400."""

    def __init__(self, detail: Any, retry_after_s: int) -> None:
        Exception.__init__(self, f"the embedding worker is busy ({detail}); retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


def _retry_after_s(response: httpx.Response, default: int = 1) -> int:
    try:
        return max(1, int(float(response.headers["retry-after"])))
    except (KeyError, ValueError, OverflowError):
        return default


class WorkerRequestError(WorkerError):
    """The worker refused the request (4xx); `detail` is its reason (FastAPI's `detail`)."""

    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"worker refused the request ({status_code}): {detail}")
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True)
class WorkerInfo:
    """What names the worker's vectors (and so the API's cache keys)."""

    model_id: str
    revision: str
    hidden_size: int | None
    dim: int | None
    pooling: str
    loaded: bool

    @property
    def identity(self) -> LMIdentity:
        return LMIdentity(self.model_id, self.revision, self.hidden_size)

    def key_prefix(self, template_version: str = TEMPLATE_VERSION) -> str:
        """Cache key prefix for texts formatted with `template_version` (equals `Embedder.key_prefix`)."""
        return make_key_prefix(self.identity, self.pooling, template_version)

    @classmethod
    def from_card(cls, card: ModelCard) -> WorkerInfo:
        return cls(card.model_id, card.revision, card.hidden_size, card.dim, card.pooling, card.loaded)

    @classmethod
    def from_engine(cls, engine: WorkerEngine) -> WorkerInfo:
        """What the engine's model card would report, without the wire model."""
        return cls(engine.model_id, engine.revision, engine.hidden_size, engine.dim, engine.pooling, engine.is_loaded)


class Worker(Protocol):
    """The async interface of `WorkerClient` and `LocalWorker`."""

    async def info(self) -> WorkerInfo: ...

    async def ready(self) -> bool: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def complete(self, params: SamplingParams) -> list[str]: ...

    async def complete_with_vectors(self, params: SamplingParams) -> tuple[list[str], np.ndarray]:
        """`complete`, plus each sample's vector [n, D] pooled in the sampling pass (no second LLM pass)."""
        ...

    async def aclose(self) -> None: ...


def _validated(model: type[EmbeddingsRequest] | type[CompletionsRequest], **fields: Any) -> Any:
    """The request as the worker would validate it: the same bounds in process and over HTTP."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise WorkerRequestError(422, exc.errors(include_url=False)) from exc


class WorkerClient:
    """Async HTTP client of the embedding worker (`gpo worker`, or any server with the same wire API), or of any
    OpenAI-compatible embeddings server when `declared` says what it serves (GPO_EMBED_API=openai).

    Embeddings travel as base64 float32 and large inputs are sent in chunks of `chunk_size` texts.
    Connection errors, timeouts and 5xx raise `WorkerUnavailable`; 4xx raise `WorkerRequestError`.
    After `info()`, each embeddings answer is checked against the model and revision it reported (a declared
    server: against the model name it is sent).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 120.0,
        chunk_size: int = DEFAULT_CHUNK,
        transport: httpx.AsyncBaseTransport | None = None,
        completions_model: str | None = None,
        declared: WorkerInfo | None = None,
        embed_model: str | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.base_url = base_url.rstrip("/")
        self.chunk_size = chunk_size
        # Connecting should be quick even when a call may legitimately take long (a cold model).
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0))
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)
        self._info: WorkerInfo | None = None
        self.completions_model = completions_model  # sent as `model` to /v1/completions (servers that require it)
        # An OpenAI-compatible embeddings server: what it serves is declared (settings), `embed_model` is the `model`
        # sent with each request; its vector size is read from one probe embedding.
        if declared is not None and not embed_model:
            raise ValueError("a declared embeddings server needs the model name to send (embed_model)")
        self.declared = declared
        self.embed_model = embed_model

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerClient:
        """A client of the embeddings server (GPO_EMBED_URL, else GPO_WORKER_URL)."""
        url = settings.embeddings_url
        assert url, "WorkerClient needs GPO_EMBED_URL or GPO_WORKER_URL"
        if settings.embed_api == "openai":
            declared = WorkerInfo(
                settings.embedder, settings.embedder_revision or "", None, None, settings.pooling, loaded=True
            )
            return cls(
                url, timeout_s=settings.worker_timeout_s, declared=declared, embed_model=settings.embeddings_model
            )
        return cls(url, timeout_s=settings.worker_timeout_s)

    async def _request(self, method: str, path: str, json: dict[str, Any] | None = None) -> Any:
        try:
            response = await self._http.request(method, path, json=json)
        except httpx.TransportError as exc:  # refused, reset, DNS, timeouts
            raise WorkerUnavailable(f"worker at {self.base_url} unreachable ({type(exc).__name__}: {exc})") from exc
        if response.status_code >= 500:
            raise WorkerUnavailable(
                f"worker at {self.base_url} answered {response.status_code} to {path}: {_detail(response)}"
            )
        if response.status_code == 429:
            raise WorkerBusy(_detail(response), _retry_after_s(response))
        if response.status_code >= 400:
            raise WorkerRequestError(response.status_code, _detail(response))
        try:
            return response.json()
        except ValueError as exc:
            raise WorkerUnavailable(f"worker at {self.base_url} answered {path} with invalid JSON") from exc

    async def info(self) -> WorkerInfo:
        """The worker's model (GET /v1/models); later embeddings are checked against it. A declared server: the
        declared key, once /v1/models lists the model sent and one probe text gave the vector size."""
        body = await self._request("GET", "/v1/models")
        if self.declared is not None:
            return await self._declared_info(body)
        try:
            card = ModelCard.model_validate(body["data"][0])
        except (KeyError, IndexError, TypeError, ValidationError) as exc:
            raise WorkerUnavailable(
                f"worker at {self.base_url} does not describe its model as gpo-serve's worker does "
                "(model_id, revision, pooling in /v1/models)"
            ) from exc
        self._info = WorkerInfo.from_card(card)
        return self._info

    async def _declared_info(self, models: Any) -> WorkerInfo:
        assert self.declared is not None
        try:
            served = [str(m["id"]) for m in models["data"]]
        except (KeyError, TypeError) as exc:
            raise WorkerUnavailable(f"embeddings server at {self.base_url} sent a malformed /v1/models") from exc
        if self.embed_model not in served:
            raise WorkerUnavailable(
                f"embeddings server at {self.base_url} serves {served}, not {self.embed_model!r} (GPO_EMBED_MODEL)"
            )
        if self._info is None:
            body = await self._request("POST", "/v1/embeddings", self._embeddings_body(["dimension probe"]))
            dim = int(self._parse_embeddings(body, 1).shape[1])
            self._info = WorkerInfo(
                self.declared.model_id, self.declared.revision, None, dim, self.declared.pooling, loaded=True
            )
        return self._info

    def _embeddings_body(self, texts: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"input": texts, "encoding_format": "base64"}
        if self.embed_model is not None:
            body["model"] = self.embed_model
        return body

    async def ready(self) -> bool:
        """Whether the worker answers and has its model loaded (a declared server: lists its models); never
        raises."""
        try:
            response = await self._http.get("/readyz" if self.declared is None else "/v1/models")
            if self.declared is None or response.status_code != 200:
                return response.status_code == 200
            return self.embed_model in {str(m.get("id")) for m in response.json()["data"]}
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return False

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[N, D] float32 pooled vectors of raw `texts`, in order."""
        texts = list(texts)
        if not texts:
            info = self._info or await self.info()
            return np.zeros((0, info.dim or 0), dtype=np.float32)
        parts: list[np.ndarray] = []
        for start in range(0, len(texts), self.chunk_size):
            chunk = texts[start : start + self.chunk_size]
            body = await self._request("POST", "/v1/embeddings", self._embeddings_body(chunk))
            parts.append(self._parse_embeddings(body, len(chunk)))
        return np.concatenate(parts, axis=0)

    def _parse_embeddings(self, body: Any, n: int) -> np.ndarray:
        try:
            data = sorted(body["data"], key=lambda d: d["index"])
            vectors = np.stack([decode_base64(d["embedding"]) for d in data])  # [n, D]
            model, revision = body["model"], body.get("revision")
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkerUnavailable(f"worker at {self.base_url} sent a malformed embeddings answer") from exc
        if vectors.shape[0] != n:
            raise WorkerUnavailable(f"worker at {self.base_url} sent {vectors.shape[0]} vectors for {n} texts")
        if self.declared is not None:
            if model != self.embed_model:
                raise WorkerModelChanged(
                    f"embeddings server at {self.base_url} answered with {model!r}, not {self.embed_model!r}"
                )
            if self._info is not None and self._info.dim is not None and vectors.shape[1] != self._info.dim:
                raise WorkerModelChanged(
                    f"embeddings server at {self.base_url} now sends {vectors.shape[1]}-dim vectors, not "
                    f"{self._info.dim}: it serves other weights than declared"
                )
            return vectors
        if self._info is not None and (model, revision) != (self._info.model_id, self._info.revision):
            raise WorkerModelChanged(
                f"worker at {self.base_url} now serves {model}@{revision}, not {self._info.model_id}@"
                f"{self._info.revision}: re-read info() (and its key prefix) before embedding"
            )
        return vectors

    async def complete(self, params: SamplingParams) -> list[str]:
        """n sampled continuations of the prompt (one batched generate on the worker)."""
        return (await self._complete(params, False))[0]

    async def complete_with_vectors(self, params: SamplingParams) -> tuple[list[str], np.ndarray]:
        texts, vectors = await self._complete(params, True)
        assert vectors is not None
        return texts, vectors

    async def _complete(self, params: SamplingParams, vectors: bool) -> tuple[list[str], np.ndarray | None]:
        body = params.completions_body(return_embeddings=vectors)
        if self.completions_model is not None:
            body["model"] = self.completions_model
        body = await self._request("POST", "/v1/completions", body)
        try:
            choices = sorted(body["choices"], key=lambda c: c["index"])
            texts = [c["text"] for c in choices]
            if not vectors:
                return texts, None
            return texts, np.stack([decode_base64(c["embedding"]) for c in choices])
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkerUnavailable(f"worker at {self.base_url} sent a malformed completions answer") from exc

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> WorkerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


class LocalWorker:
    """The worker's interface over an in-process `WorkerEngine` (the embedded default: no second process).

    Requests are validated with the worker's own request models and engine errors map to the same
    exceptions as `WorkerClient`'s, so callers handle both alike.
    """

    def __init__(self, engine: WorkerEngine, *, chunk_size: int = DEFAULT_CHUNK) -> None:
        if not 1 <= chunk_size <= MAX_INPUTS:
            raise ValueError(f"chunk_size must be in 1..{MAX_INPUTS}, got {chunk_size}")
        self.engine = engine
        self.chunk_size = chunk_size

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalWorker:
        return cls(WorkerEngine.from_settings(settings, disk_cache=True))

    async def load(self) -> None:
        """Load and warm the model now (otherwise the first call does)."""
        try:
            await self.engine.aload()
        except EngineUnavailable as exc:
            raise WorkerUnavailable(str(exc)) from exc

    async def info(self) -> WorkerInfo:
        return WorkerInfo.from_engine(self.engine)

    async def ready(self) -> bool:
        return self.engine.is_loaded

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.engine.dim or 0), dtype=np.float32)
        parts: list[np.ndarray] = []
        # In chunks, as WorkerClient sends them: any number of texts, and completions get turns in between.
        for start in range(0, len(texts), self.chunk_size):
            chunk = texts[start : start + self.chunk_size]
            _validated(EmbeddingsRequest, input=chunk)
            try:
                parts.append(await self.engine.aembed(chunk))
            except EngineUnavailable as exc:
                raise WorkerUnavailable(str(exc)) from exc
            except InputTooLong as exc:
                raise WorkerRequestError(422, str(exc)) from exc
        return np.concatenate(parts, axis=0)

    async def complete(self, params: SamplingParams) -> list[str]:
        return (await self._complete(params, False))[0]

    async def complete_with_vectors(self, params: SamplingParams) -> tuple[list[str], np.ndarray]:
        texts, vectors = await self._complete(params, True)
        assert vectors is not None
        return texts, vectors

    async def _complete(self, params: SamplingParams, vectors: bool) -> tuple[list[str], np.ndarray | None]:
        # Validated as the worker would validate the same body, so both workers refuse the same requests.
        req = _validated(CompletionsRequest, **params.completions_body(return_embeddings=vectors))
        try:
            result = await self.engine.acomplete_with_usage(req.sampling_params(), vectors=vectors)
        except EngineUnavailable as exc:
            raise WorkerUnavailable(str(exc)) from exc
        except InputTooLong as exc:
            raise WorkerRequestError(422, str(exc)) from exc
        return result.texts, result.vectors

    async def aclose(self) -> None:
        """Stop the engine's batchers (the model itself lives as long as the process)."""
        await self.engine.aclose()


def build_worker(settings: Settings) -> WorkerClient | LocalWorker:
    """Where item vectors come from: an HTTP client of GPO_EMBED_URL (else GPO_WORKER_URL) when set, else the LLM in
    this process (loaded lazily)."""
    if settings.embeddings_url:
        log.info("embeddings: %s", settings.embeddings_url)
        return WorkerClient.from_settings(settings)
    log.info("embedding worker: in process (%s)", settings.embedder)
    return LocalWorker.from_settings(settings)


class NoGenerator:
    """The generator when none is configured: every sampling call raises GenerationNotConfigured."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def complete(self, params: SamplingParams) -> list[str]:
        raise GenerationNotConfigured(self.reason)

    async def complete_with_vectors(self, params: SamplingParams) -> tuple[list[str], np.ndarray]:
        raise GenerationNotConfigured(self.reason)

    async def aclose(self) -> None:
        return None


def build_generator(settings: Settings, worker: WorkerClient | LocalWorker) -> WorkerClient | LocalWorker | NoGenerator:
    """Where /generate samples: `worker` itself when GPO_GENERATE_URL is unset or names the same server, else an HTTP
    client of that OpenAI-compatible completions server (only its /v1/completions is used). An OpenAI-compatible
    embeddings server (GPO_EMBED_API=openai) does not sample: without another completions server, none."""
    url = settings.completions_url
    if settings.embed_api == "openai" and (url is None or url == settings.embeddings_url):
        return NoGenerator(
            "/generate needs a completions server: GPO_EMBED_URL is an embeddings-only server (GPO_EMBED_API=openai); "
            "set GPO_GENERATE_URL (and GPO_GENERATE_TOKENIZER when its LLM is not GPO_EMBEDDER)"
        )
    if url is None or url == settings.embeddings_url:
        return worker
    log.info("completions: %s (vectors of the samples: %s)", url, settings.sampling_returns_vectors)
    return WorkerClient(url, timeout_s=settings.worker_timeout_s, completions_model=settings.generate_model)
