"""The base LLM of the embedding worker: pooled embeddings and sampled completions, micro-batched; no web imports."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from service.batching import MicroBatcher
from service.embedder.embed import Embedder, build_embedder, make_key_prefix
from service.embedder.generate import is_greedy, sample_responses, sample_responses_many, text_ids
from service.embedder.loading import BaseLM, LMIdentity
from service.embedder.prompts import TEMPLATE_VERSION
from service.embedder.protocol import FinishReason, SamplingParams

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
WARMUP_TEXT = "Answer the following question by picking ONE of the given options"


class EngineUnavailable(RuntimeError):
    """The base LLM could not be loaded: the worker cannot serve (HTTP 503)."""


class InputTooLong(ValueError):
    """A text or prompt (plus the tokens to generate) exceeds the model's context (HTTP 422)."""


class ModelNotServed(LookupError):
    """A request named a model this worker does not serve (HTTP 404)."""


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: np.ndarray  # [N, D] float32, one row per input text, in order
    prompt_tokens: int


@dataclass(frozen=True)
class CompletionCall:
    params: SamplingParams
    vectors: bool = False  # also each sample's vector pooled in the sampling pass

    @property
    def shareable(self) -> bool:
        """Unseeded sampling: may share a generate call with others of the same settings."""
        return self.params.seed is None and not is_greedy(self.params.temperature)


@dataclass(frozen=True)
class CompletionResult:
    texts: list[str]
    prompt_tokens: int
    completion_tokens: list[int]  # per sample, counted on the returned (stripped) text
    finish_reasons: list[FinishReason]  # "length" when a sample used all max_tokens, else "stop"
    vectors: np.ndarray | None = None  # [n, D] pooled in the sampling pass (RESPONSE_POOLED_TEMPLATE_VERSION)


# Texts one merged embedding forward holds at most (a larger request runs alone): the model runs texts in batches of
# its own (Embedder.batch_size), so merging more gains no throughput, while every request of a merged forward waits
# for all of it (on CPU a forward of 200 texts outlasted a 15 s deadline, so every request was cut, again and again).
MAX_BATCH_TEXTS = 64


class WorkerEngine:
    """The base LLM of one worker: pooled embeddings of raw texts and sampled completions.

    Wraps an `Embedder` (vectors equal `Embedder.embed` of the same model and pooling). A separate worker
    process keeps no cache (the API owns caching); the in-process worker of the embedded default may share
    the on-disk cache of `gpo embed`/`gpo train`: its keys are model id@revision|pooling|template|text, and a
    text's vector depends only on the model and pooling, so a hit is always the right vector. The model is
    loaded lazily (or by `load()`), and every model call holds one lock. The async variants go through
    micro-batchers (one runner each, in a worker thread): concurrent embedding requests share one forward
    pass, concurrent unseeded sampling requests with the same settings share one generate call.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        aliases: tuple[str, ...] = (),
        max_wait_estimate_s: float | None = None,
        max_batch_texts: int = MAX_BATCH_TEXTS,
    ) -> None:
        self._embedder = embedder
        self.aliases = aliases  # other names clients may use for the model (e.g. the settings value)
        self.created = int(time.time())
        self.load_error: str | None = None
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)
        self._warmed = False
        # Concurrent requests merged into one model call each (see service.batching): embeddings of several
        # requests in one forward pass, unseeded samples with the same settings in one generate call.
        self._embed_batcher: MicroBatcher[list[str], EmbeddingResult | Exception] = MicroBatcher(
            self._embed_batch,
            name="embeddings",
            max_batch=32,
            max_queue=512,
            max_wait_s=0.002,
            max_wait_estimate_s=max_wait_estimate_s,  # work that could not start before its deadline: refused
            size=len,  # texts: the model runs them in batches anyway, so one forward merges at most max_batch_texts
            max_batch_size=max_batch_texts,
        )
        self._complete_batcher: MicroBatcher[CompletionCall, CompletionResult | Exception] = MicroBatcher(
            self._complete_batch,
            name="completions",
            max_batch=8,
            max_queue=128,
            max_wait_s=0.002,
            max_wait_estimate_s=max_wait_estimate_s,
        )
        self.embed_batches: list[int] = []  # requests per embedding forward (most recent 1000), for tests/metrics
        self.complete_batches: list[int] = []

    @classmethod
    def from_lm(
        cls, lm: BaseLM, *, pooling: str = "mean", batch_size: int = 16, identity: LMIdentity | None = None
    ) -> WorkerEngine:
        """An engine over an already loaded LM (`identity` overrides the one the LM reports)."""
        return cls(Embedder(lm, pooling=pooling, batch_size=batch_size, identity=identity))

    @classmethod
    def from_settings(cls, settings: Settings, *, disk_cache: bool = False) -> WorkerEngine:
        """The LM of `settings` (loaded on first use or by `load()`): 8-bit on CUDA, fp32 on CPU.

        `disk_cache`: read and fill the on-disk embedding cache of settings.cache_dir (the one `gpo embed` and
        `gpo train` fill), keyed by model, revision, pooling and text. The in-process worker of the embedded
        default uses it, so a restart or a text seen in training costs no LLM forward.
        """
        return cls(
            build_embedder(settings, use_cache=disk_cache),
            aliases=(settings.embedder,),
            max_wait_estimate_s=settings.request_timeout_s,
        )

    # -- identity ------------------------------------------------------------------------------------

    @property
    def identity(self) -> LMIdentity:
        return self._embedder.identity

    @property
    def model_id(self) -> str:
        return self.identity.model_id

    @property
    def revision(self) -> str:
        return self.identity.revision

    @property
    def pooling(self) -> str:
        return self._embedder.pooling

    @property
    def is_loaded(self) -> bool:
        return self._embedder.is_loaded

    @property
    def hidden_size(self) -> int | None:
        """Hidden size of the LM; None while it is unknown without loading the model."""
        if self._embedder.is_loaded:
            return self._embedder.lm.hidden_size
        return self.identity.hidden_size

    @property
    def dim(self) -> int | None:
        """Width of the vectors; None while unknown without loading the model."""
        return None if self.hidden_size is None else self._embedder.dim

    def key_prefix(self, template_version: str = TEMPLATE_VERSION) -> str:
        """Cache key prefix of the vectors of texts formatted with `template_version` (as `Embedder.key_prefix`)."""
        return make_key_prefix(self.identity, self.pooling, template_version)

    def serves(self, model: str | None) -> bool:
        """Whether a request naming `model` (None: any) is for this worker's model."""
        return model is None or model in {self.model_id, str(self.identity), *self.aliases}

    # -- model calls (blocking; thread-safe) ----------------------------------------------------------

    def tokenizer(self):  # noqa: ANN201 - a transformers tokenizer (imported lazily)
        """The LM's tokenizer (loads the LM when it is not loaded yet: it runs in this process anyway)."""
        return self._lm().tokenizer

    def _lm(self) -> BaseLM:
        try:
            lm = self._embedder.lm
        except Exception as exc:
            self.load_error = type(exc).__name__
            log.exception("base LLM %s failed to load", self.identity)
            raise EngineUnavailable(f"base LLM {self.model_id} failed to load ({type(exc).__name__})") from exc
        self.load_error = None
        return lm

    def _max_positions(self, lm: BaseLM) -> int | None:
        return getattr(lm.model.config.get_text_config(), "max_position_embeddings", None)

    def load(self) -> None:
        """Load the model and run one forward pass, so the first request pays no start-up cost."""
        with self._lock:
            lm = self._lm()
            if not self._warmed:
                t0 = time.perf_counter()
                self._embedder.embed([WARMUP_TEXT])
                self._warmed = True
                log.info("worker model %s warm on %s in %.2f s", self.identity, lm.device, time.perf_counter() - t0)

    def embed_with_usage(self, texts: list[str]) -> EmbeddingResult:
        """Pooled vectors [N, D] of raw `texts` (the caller formats prompts) and their token count."""
        with self._lock:
            lm = self._lm()
            if not texts:
                return EmbeddingResult(np.zeros((0, self._embedder.dim), dtype=np.float32), 0)
            # Counted as Embedder tokenises (special tokens included, no truncation).
            lengths = [len(ids) for ids in lm.tokenizer(texts, add_special_tokens=True)["input_ids"]]
            limit = self._max_positions(lm)
            if limit is not None and max(lengths) > limit:
                worst = int(np.argmax(lengths))
                raise InputTooLong(f"input {worst} has {lengths[worst]} tokens; the model takes at most {limit}")
            if min(lengths) == 0:
                raise InputTooLong(f"input {int(np.argmin(lengths))} has no tokens")
            vectors = self._embedder.embed(texts)
        return EmbeddingResult(np.asarray(vectors, dtype=np.float32), int(sum(lengths)))

    def embed(self, texts: list[str]) -> np.ndarray:
        """Pooled vectors [N, D] float32 of raw `texts`, in order."""
        return self.embed_with_usage(texts).vectors

    def complete_with_usage(self, params: SamplingParams, *, vectors: bool = False) -> CompletionResult:
        """n samples from one batched `generate` call (see `sample_responses`), with token counts; with
        `vectors`, each sample's vector pooled in the same pass."""
        max_tokens = params.max_new_tokens
        with self._lock:
            lm = self._lm()
            # Plain text, read as it is (the API applied the chat template): the ids sample_responses builds
            prompt_tokens = int(text_ids(lm, params.prompt).shape[1])
            limit = self._max_positions(lm)
            if limit is not None and prompt_tokens + max_tokens > limit:
                raise InputTooLong(
                    f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the model's {limit}"
                )
            out = sample_responses(
                lm,
                params.prompt,
                params.n,
                max_new_tokens=max_tokens,
                temperature=params.temperature,
                seed=params.seed,
                top_p=params.top_p,
                use_chat_template=False,
                pooling=self.pooling if vectors else None,
            )
            texts, pooled = out if isinstance(out, tuple) else (out, None)
            counts = [len(ids) for ids in lm.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        finish: list[FinishReason] = ["length" if c >= max_tokens else "stop" for c in counts]
        return CompletionResult(texts, prompt_tokens, counts, finish, pooled)

    def complete(self, params: SamplingParams) -> list[str]:
        """n sampled continuations of the prompt; a fixed seed repeats exactly."""
        return self.complete_with_usage(params).texts

    # -- the same, off the event loop ---------------------------------------------------------------

    async def _in_thread(self, fn: Callable[[], T], *, abandon_on_cancel: bool = False) -> T:
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=abandon_on_cancel, limiter=self._limiter)

    async def aload(self) -> None:
        # A cancelled start-up (shutdown during loading) must not wait for the load to finish.
        await self._in_thread(self.load, abandon_on_cancel=True)

    async def aembed_with_usage(self, texts: list[str]) -> EmbeddingResult:
        out = await self._embed_batcher.submit(list(texts))
        if isinstance(out, Exception):
            raise out
        return out

    async def aembed(self, texts: list[str]) -> np.ndarray:
        return (await self.aembed_with_usage(texts)).vectors

    async def acomplete_with_usage(self, params: SamplingParams, *, vectors: bool = False) -> CompletionResult:
        out = await self._complete_batcher.submit(CompletionCall(params, vectors))
        if isinstance(out, Exception):
            raise out
        return out

    async def acomplete(self, params: SamplingParams) -> list[str]:
        return (await self.acomplete_with_usage(params)).texts

    async def aclose(self) -> None:
        await self._embed_batcher.aclose()
        await self._complete_batcher.aclose()

    # -- batched model calls (run by the batchers in a worker thread) --------------------------------

    @staticmethod
    def _record(sizes: list[int], n: int) -> None:
        sizes.append(n)
        del sizes[:-1000]

    def _embed_batch(self, requests: list[list[str]]) -> list[EmbeddingResult | Exception]:
        """Every request's texts in one embed call (each distinct text once); on a refused input, each request
        runs alone so only the request that holds it fails."""
        self._record(self.embed_batches, len(requests))
        if len(requests) > 1:
            unique = list(dict.fromkeys(t for texts in requests for t in texts))
            try:
                joined = self.embed_with_usage(unique)
            except InputTooLong:
                pass
            except EngineUnavailable as exc:
                return [exc] * len(requests)
            else:
                row = {t: i for i, t in enumerate(unique)}
                with self._lock:
                    tok = self._lm().tokenizer
                    ids = tok(unique, add_special_tokens=True)["input_ids"]
                    lengths = {t: len(i) for t, i in zip(unique, ids, strict=True)}
                return [
                    EmbeddingResult(
                        joined.vectors[[row[t] for t in texts]].reshape(len(texts), -1), sum(lengths[t] for t in texts)
                    )
                    for texts in requests
                ]
        out: list[EmbeddingResult | Exception] = []
        for texts in requests:
            try:
                out.append(self.embed_with_usage(texts))
            except (InputTooLong, EngineUnavailable) as exc:
                out.append(exc)
        return out

    def _complete_batch(self, calls: list[CompletionCall]) -> list[CompletionResult | Exception]:
        """Unseeded calls with the same settings share one generate call; seeded or greedy ones run alone."""
        self._record(self.complete_batches, len(calls))
        out: list[CompletionResult | Exception | None] = [None] * len(calls)
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(calls):
            if c.shareable:
                sampling_key = (c.params.max_new_tokens, c.params.temperature, c.params.top_p, c.vectors)
                groups.setdefault(sampling_key, []).append(i)
        for (max_tokens, temperature, top_p, want_vectors), idx in groups.items():
            if len(idx) < 2:
                continue
            try:
                with self._lock:
                    lm = self._lm()
                    prompts = [calls[i].params.prompt for i in idx]
                    prompt_tokens = [int(text_ids(lm, prompt).shape[1]) for prompt in prompts]
                    limit = self._max_positions(lm)
                    if limit is not None and max(prompt_tokens) + max_tokens > limit:
                        continue  # each runs alone below and the long one gets its own error
                    many = sample_responses_many(
                        lm,
                        prompts,
                        [calls[i].params.n for i in idx],
                        max_new_tokens=max_tokens,
                        temperature=temperature,
                        top_p=top_p,
                        use_chat_template=False,
                        pooling=self.pooling if want_vectors else None,
                    )
                    for i, pt, got in zip(idx, prompt_tokens, many, strict=True):
                        t, vec = got if isinstance(got, tuple) else (got, None)
                        counts = (
                            [len(ids) for ids in lm.tokenizer(t, add_special_tokens=False)["input_ids"]] if t else []
                        )
                        finish: list[FinishReason] = ["length" if c >= max_tokens else "stop" for c in counts]
                        out[i] = CompletionResult(t, pt, counts, finish, vec)
            except EngineUnavailable as exc:
                for i in idx:
                    out[i] = exc
        for i, c in enumerate(calls):
            if out[i] is None:
                try:
                    out[i] = self.complete_with_usage(c.params, vectors=c.vectors)
                except (InputTooLong, EngineUnavailable) as exc:
                    out[i] = exc
        return out  # type: ignore[return-value]
