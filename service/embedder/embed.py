"""Texts -> pooled last-hidden-state vectors, batched, with an on-disk cache that needs no model to answer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import torch

from service.embedder.array_store import ArrayStore
from service.embedder.loading import BaseLM, LMIdentity, identify_base_lm, load_base_lm
from service.embedder.pooling import check_method, pool, pooled_dim
from service.embedder.prompts import TEMPLATE_VERSION
from service.embedder.protocol import decode_base64
from service.progress import progress_bar

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)


def make_key_prefix(identity: LMIdentity, pooling: str, template_version: str) -> str:
    """What, besides the text, decides an embedding: the weights, the pooling and the prompt template."""
    return f"{identity.model_id}@{identity.revision}|{pooling}|{template_version}"


class EmbeddingCache(ArrayStore):
    """Embeddings on disk in one sqlite3 file: table embeddings (key TEXT PRIMARY KEY, dim INTEGER, vec BLOB float32).

    Keys come from `EmbeddingCache.key(key_prefix, text)` = sha256(key_prefix + "\\x00" + text), with the
    prefix of `make_key_prefix`.
    """

    FILENAME = "embeddings.sqlite3"
    CACHE_SUBDIR = "embeddings"
    TABLE = "embeddings"
    LENGTH_COLUMN = "dim"
    BLOB_COLUMN = "vec"
    DTYPE = "<f4"

    def put_many(self, keys: Sequence[str], vectors: np.ndarray | Sequence[np.ndarray]) -> None:
        """Store vectors [N, D] under `keys` (replacing any old value)."""
        vectors = np.asarray(vectors, dtype=self.DTYPE)
        assert vectors.ndim == 2 and vectors.shape[0] == len(keys), (
            f"{len(keys)} keys for vectors of shape {vectors.shape}"
        )
        super().put_many(keys, vectors)


Commit = Callable[[Sequence[int], np.ndarray], None]
"""`commit(indices, vectors)`: vectors [b, D] of the texts at `indices` of the list being computed, done."""


def embed_with_cache(
    texts: Sequence[str],
    key_prefix: str,
    cache: EmbeddingCache | None,
    compute: Callable[[list[str], Commit], None],
    on_batch: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Vectors for `texts` [N, D]: cached ones from `cache`, the rest from `compute(missing_texts, commit)`.

    `compute` is called once, with each missing text once, and only if something is missing: a fully cached call
    never touches (or loads) a model. It hands over its vectors batch by batch through `commit`, and each batch is
    written to the cache at once (its own transaction): an interrupted call keeps every batch it finished, and the
    next call computes only the rest. `on_batch(n_done, n_missing)` runs after each committed batch (a progress
    hook: an exception it raises stops the computation, with the batches so far kept).
    """
    texts = list(texts)
    keys = [EmbeddingCache.key(key_prefix, t) for t in texts] if cache is not None else []
    cached: list[np.ndarray | None] = cache.get_many(keys) if cache is not None else [None] * len(texts)
    missing = list(dict.fromkeys(t for t, v in zip(texts, cached, strict=True) if v is None))
    fresh: dict[str, np.ndarray] = {}

    def commit(indices: Sequence[int], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)  # [b, D]
        batch = [missing[i] for i in indices]
        assert vectors.shape[0] == len(batch), f"{vectors.shape[0]} vectors for {len(batch)} texts"
        if cache is not None:
            cache.put_many([EmbeddingCache.key(key_prefix, t) for t in batch], vectors)
        fresh.update(zip(batch, vectors, strict=True))
        if on_batch is not None:
            on_batch(len(fresh), len(missing))

    if missing:
        log.debug("%d of %d texts in the cache; embedding %d", len(texts) - len(missing), len(texts), len(missing))
        compute(missing, commit)
        assert len(fresh) == len(missing), f"compute committed {len(fresh)} of {len(missing)} texts"
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    rows = [v if v is not None else fresh[t] for t, v in zip(texts, cached, strict=True)]
    return np.stack(rows).astype(np.float32, copy=False)


class Embedder:
    """Embeds texts with a base LLM: pooled last hidden states, float32, one row per text.

    `lm` is a loaded `BaseLM` or a zero-argument factory returning one; with a factory, `identity` is
    required (it names the cache keys) and the model is loaded on the first cache miss only.
    Texts are batched by token length (less padding), right-padded (so positions of real tokens, hence
    the vectors, do not depend on the batch), and returned in input order.
    `max_length` truncates long texts; when set it becomes part of the cache key.
    """

    def __init__(
        self,
        lm: BaseLM | Callable[[], BaseLM],
        *,
        pooling: str = "mean",
        batch_size: int = 16,
        cache: EmbeddingCache | None = None,
        template_version: str = TEMPLATE_VERSION,
        identity: LMIdentity | None = None,
        max_length: int | None = None,
    ) -> None:
        check_method(pooling)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(lm, BaseLM):
            self._lm: BaseLM | None = lm
            self._factory: Callable[[], BaseLM] | None = None
            identity = identity or lm.identity
        else:
            if identity is None:
                raise ValueError("an Embedder built from a factory needs the identity of the weights it loads")
            self._lm, self._factory = None, lm
        self.identity = identity
        self.pooling = pooling
        self.batch_size = batch_size
        self.cache = cache
        self.template_version = template_version
        self.max_length = max_length
        self.n_forward_batches = 0  # model calls made so far (for tests and metrics)
        self.n_texts_embedded = 0  # texts those calls embedded
        self._lock = threading.Lock()  # one forward pass (or load) at a time

    # -- identity ------------------------------------------------------------------------------------

    @property
    def key_prefix(self) -> str:
        prefix = make_key_prefix(self.identity, self.pooling, self.template_version)
        return prefix if self.max_length is None else f"{prefix}|max{self.max_length}"

    @property
    def is_loaded(self) -> bool:
        return self._lm is not None

    @property
    def lm(self) -> BaseLM:
        """The base LLM, loaded now if it was not yet."""
        if self._lm is None:
            with self._lock:
                if self._lm is None:
                    assert self._factory is not None
                    lm = self._factory()
                    if (lm.model_id, lm.revision) != (self.identity.model_id, self.identity.revision):
                        raise ValueError(
                            f"factory loaded {lm.model_id}@{lm.revision}, expected {self.identity}: "
                            "cache keys would name the wrong weights"
                        )
                    self._lm = lm
        return self._lm

    @property
    def dim(self) -> int:
        """Width of the vectors (loads the model only if no config told the hidden size)."""
        hidden = self._lm.hidden_size if self._lm is not None else self.identity.hidden_size
        if hidden is None:
            hidden = self.lm.hidden_size
        return pooled_dim(hidden, self.pooling)

    # -- embedding -----------------------------------------------------------------------------------

    def embed(
        self,
        texts: Sequence[str],
        progress: bool = False,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """[N, D] float32 vectors for `texts`, from the cache where possible; each computed batch is in the cache as
        soon as it is done (`embed_with_cache`), so an interrupted call loses at most one batch."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return embed_with_cache(
            texts, self.key_prefix, self.cache, lambda m, commit: self._compute(m, commit, progress), on_batch
        )

    def _compute(self, texts: list[str], commit: Commit, progress: bool) -> None:
        if progress:
            log.info("embedding %d texts not in the cache (each batch saved as it is done)", len(texts))
        lm = self.lm
        tok = lm.tokenizer
        enc = tok(
            texts,
            add_special_tokens=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
        )
        ids: list[list[int]] = enc["input_ids"]
        # Longest first: batches of similar length waste little on padding, and an out-of-memory batch
        # fails at once rather than at the end.
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        t0 = time.perf_counter()
        with (
            self._lock,
            torch.inference_mode(),
            progress_bar(len(texts), "embedding", unit="text", enabled=progress) as bar,
        ):
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                input_ids, mask = _right_pad([ids[i] for i in idx], tok.pad_token_id, lm.device)
                hidden = last_hidden_state(lm, input_ids, mask)  # [b, T, H]
                vectors = pool(hidden.float(), mask, self.pooling).cpu().numpy()  # [b, D]
                self.n_forward_batches += 1
                self.n_texts_embedded += len(idx)
                commit(idx, vectors)
                bar.update(len(idx))
        log.debug("embedded %d texts in %.2f s", len(texts), time.perf_counter() - t0)


def _right_pad(seqs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> input_ids [B, T] and attention_mask [B, T], padded on the right."""
    T = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for row, s in enumerate(seqs):
        input_ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return input_ids.to(device), mask.to(device)


def last_hidden_state(lm: BaseLM, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final-layer hidden states [B, T, H] (after the final norm, as `hidden_states[-1]` in the paper's code).

    Runs the base model without the LM head where the architecture exposes one: the head's
    [T, vocab] logits are most of the cost for a small model with a large vocabulary.
    """
    base = lm.model.base_model
    if base is not lm.model:
        out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state
    out = lm.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1]


def build_embedder(
    settings: Settings,
    *,
    template_version: str = TEMPLATE_VERSION,
    use_cache: bool = True,
) -> Embedder:
    """An Embedder for `settings` that loads the base LLM only on its first cache miss; with GPO_EMBED_API=openai, one
    that embeds through GPO_EMBED_URL under the declared key (RemoteEmbedder below)."""
    if settings.embed_api == "openai":
        return build_remote_embedder(settings, template_version=template_version, use_cache=use_cache)
    identity = identify_base_lm(settings.embedder, revision=settings.embedder_revision, cache_dir=settings.cache_dir)

    def load() -> BaseLM:
        if settings.torch_threads is not None:
            torch.set_num_threads(settings.torch_threads)
        return load_base_lm(
            settings.embedder,
            revision=settings.embedder_revision,
            device=settings.device,
            load_in_8bit=settings.load_in_8bit,
            cache_dir=settings.cache_dir,
        )

    return Embedder(
        load,
        pooling=settings.pooling,
        batch_size=settings.embed_batch_size,
        cache=EmbeddingCache.in_cache_dir(settings.cache_dir) if use_cache else None,
        template_version=template_version,
        identity=identity,
    )


def warm(texts: Sequence[str], settings: Settings, *, template_version: str = TEMPLATE_VERSION) -> int:
    """Embed `texts` into the on-disk cache of `settings`; returns how many were not cached before."""
    emb = build_embedder(settings, template_version=template_version)
    assert emb.cache is not None
    unique = list(dict.fromkeys(texts))
    cached = emb.cache.get_many([EmbeddingCache.key(emb.key_prefix, t) for t in unique])
    n_missing = sum(v is None for v in cached)
    emb.embed(unique, progress=True)
    log.info("warmed %d texts, %d computed", len(unique), n_missing)
    return n_missing


# -- offline embedding through an OpenAI-compatible embeddings server -------------------------------------------------
# GPO_EMBED_API=openai: what `gpo embed`, `gpo train` and `gpo eval` use when the vectors the API will be served come
# from such a server (Infinity, TEI, vLLM), so a checkpoint is trained on exactly those vectors. Such a server cannot
# say which weights it serves, so the embedder key (model, revision, pooling) is declared in settings, as the API
# declares it (`WorkerClient` with `declared`); the prompt template is applied here, on our side, as always. Vectors
# are cached on disk under that key like the in-process embedder's.

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


def build_remote_embedder(
    settings: Settings, *, template_version: str = TEMPLATE_VERSION, use_cache: bool = True
) -> RemoteEmbedder:
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
