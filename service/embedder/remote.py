"""Offline embedding through an OpenAI-compatible embeddings server (GPO_EMBED_API=openai): what `gpo embed`,
`gpo train` and `gpo eval` use when the vectors the API will be served come from such a server (Infinity, TEI,
vLLM), so a checkpoint is trained on exactly those vectors.

Such a server cannot say which weights it serves, so the embedder key (model, revision, pooling) is declared in
settings, as the API declares it (`WorkerClient` with `declared`); the prompt template is applied here, on our side,
as always. Vectors are cached on disk under that key like the in-process embedder's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from service.embedder.embed import Commit, Embedder, EmbeddingCache
from service.embedder.loading import BaseLM, LMIdentity
from service.embedder.prompts import TEMPLATE_VERSION
from service.embedder.protocol import decode_base64
from service.progress import progress_bar

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

REMOTE_BATCH = 64  # texts per request


class RemoteEmbeddingError(RuntimeError):
    """The embeddings server failed or answered something that is not an embeddings answer for the texts sent."""


class RemoteEmbedder(Embedder):
    """An `Embedder` whose vectors come from POST {base_url}/v1/embeddings (`model` = `model_name`), keyed by the
    declared `identity` and `pooling`. No LLM is loaded in this process."""

    def __init__(
        self,
        base_url: str,
        model_name: str,
        *,
        identity: LMIdentity,
        pooling: str = "mean",
        batch_size: int = REMOTE_BATCH,
        cache: EmbeddingCache | None = None,
        template_version: str = TEMPLATE_VERSION,
        timeout_s: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            self._no_local_model,
            pooling=pooling,
            batch_size=batch_size,
            cache=cache,
            template_version=template_version,
            identity=identity,
        )
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self._http = httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)), transport=transport
        )
        self._dim: int | None = None

    @staticmethod
    def _no_local_model() -> BaseLM:
        raise RuntimeError("a remote embedder loads no model in this process")

    @property
    def is_loaded(self) -> bool:
        return True

    @property
    def dim(self) -> int:
        """The server's vector size (one probe text, once)."""
        if self._dim is None:
            self._dim = int(self._request(["dimension probe"]).shape[1])
        return self._dim

    def _request(self, texts: list[str]) -> np.ndarray:
        body: dict[str, Any] = {"input": texts, "model": self.model_name, "encoding_format": "base64"}
        try:
            response = self._http.post("/v1/embeddings", json=body)
        except httpx.HTTPError as exc:
            raise RemoteEmbeddingError(f"embeddings server at {self.base_url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise RemoteEmbeddingError(
                f"embeddings server at {self.base_url} answered {response.status_code}: {response.text[:300]}"
            )
        try:
            answer = response.json()
            data = sorted(answer["data"], key=lambda d: d["index"])
            vectors = np.stack([_vector(d["embedding"]) for d in data]).astype(np.float32)
            model = answer.get("model")
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteEmbeddingError(f"embeddings server at {self.base_url} sent a malformed answer") from exc
        if len(vectors) != len(texts):
            raise RemoteEmbeddingError(f"embeddings server sent {len(vectors)} vectors for {len(texts)} texts")
        if model is not None and model != self.model_name:
            raise RemoteEmbeddingError(f"embeddings server answered with {model!r}, not {self.model_name!r}")
        if self._dim is not None and vectors.shape[1] != self._dim:
            raise RemoteEmbeddingError(f"embeddings server sent {vectors.shape[1]}-dim vectors, not {self._dim}")
        return vectors

    def _compute(self, texts: list[str], commit: Commit, progress: bool) -> None:
        if progress:
            log.info("embedding %d texts not in the cache through %s (%s)", len(texts), self.base_url, self.model_name)
        with progress_bar(len(texts), "embedding", unit="text", enabled=progress) as bar:
            for start in range(0, len(texts), self.batch_size):
                idx = list(range(start, min(start + self.batch_size, len(texts))))
                vectors = self._request([texts[i] for i in idx])
                self._dim = self._dim or int(vectors.shape[1])
                self.n_forward_batches += 1
                self.n_texts_embedded += len(idx)
                commit(idx, vectors)
                bar.update(len(idx))

    def close(self) -> None:
        self._http.close()


def _vector(embedding: str | Sequence[float]) -> np.ndarray:
    """An OpenAI embedding, base64 float32 or a list of floats."""
    if isinstance(embedding, str):
        return decode_base64(embedding)
    return np.asarray(embedding, dtype=np.float32)


def build_remote_embedder(settings: Settings, *, template_version: str = TEMPLATE_VERSION, use_cache: bool = True):
    """The RemoteEmbedder of GPO_EMBED_URL with the declared key (GPO_EMBEDDER, GPO_EMBEDDER_REVISION, GPO_POOLING)."""
    assert settings.embed_api == "openai" and settings.embed_url and settings.embedder_revision
    return RemoteEmbedder(
        settings.embed_url,
        settings.embeddings_model,
        identity=LMIdentity(settings.embedder, settings.embedder_revision, None),
        pooling=settings.pooling,
        cache=EmbeddingCache.in_cache_dir(settings.cache_dir) if use_cache else None,
        template_version=template_version,
        timeout_s=settings.worker_timeout_s,
    )
