"""The services every request uses, opened once by the app's lifespan (see service.app): the database, the vector
and context caches, the embedding worker, one model per served kind, and the micro-batcher of GPO forwards."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from service.auth import KeyResolver
from service.batching import MicroBatcher
from service.db.session import session_scope
from service.embedder.client import (
    GenerationNotConfigured,
    LocalWorker,
    NoGenerator,
    WorkerModelChanged,
    WorkerUnavailable,
)
from service.embedder.engine import EngineUnavailable
from service.embedder.generate import RESPONSE_POOLED_TEMPLATE_VERSION, chat_text
from service.embedder.loading import load_tokenizer
from service.limits import Limits
from service.serving.context_cache import build_context_cache
from service.serving.embeddings import ItemEmbeddings
from service.serving.kinds import KINDS, KindModel, check_served

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from service.cache import VectorCache
    from service.config import Settings
    from service.embedder.client import Worker
    from service.gpo.model import ContextState
    from service.metrics import Metrics
    from service.serving.predictor import Item, Predictor

log = logging.getLogger(__name__)

T = TypeVar("T")

# One call of the micro-batcher: the kind whose model answers it, an encoded context and its targets.
ForwardCall = tuple[str, "ContextState", "list[Item]"]


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking work (database, cache, torch) in a worker thread, off the event loop. A cancelled caller (its
    request's deadline passed) returns at once: the thread finishes its work on its own, unanswered (a database
    transaction commits or rolls back as it would have), instead of holding the answer until it is done."""
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


class Services:
    """Everything the routes use. `models` holds one predictor per served kind; "choice" is always served."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        sessions: sessionmaker[Session],
        cache: VectorCache,
        worker: Worker,
        models: Mapping[str, Predictor],
        metrics: Metrics,
        *,
        generator: Worker | NoGenerator | None = None,
    ) -> None:
        assert "choice" in models, "a deployment always serves multiple-choice groups"
        self.settings = settings
        self.engine = engine
        self.sessions = sessions
        self.cache = cache
        self.worker = worker  # item vectors (/v1/embeddings)
        self.generator = worker if generator is None else generator  # samples of /generate (/v1/completions)
        self.metrics = metrics
        self._tokenizer: Any = None  # the base LLM's, for its chat template (see chat_prompt)
        self.kinds: dict[str, KindModel] = {name: KindModel(KINDS[name], p) for name, p in models.items()}
        self.limits = Limits.from_settings(settings)
        self.keys = KeyResolver(sessions, ttl_s=settings.auth_cache_s)
        self.embeddings = ItemEmbeddings(cache, worker, metrics)
        self.contexts = build_context_cache(settings, self.predictor)
        self.batcher: MicroBatcher[ForwardCall, list[Any]] = MicroBatcher(
            self._forward_batch,
            name="predict",
            max_batch=settings.batch_max_requests,
            max_queue=settings.batch_max_queue,
            max_wait_s=settings.batch_wait_ms / 1000,
            retry_after_s=1,
            observe=metrics.batch_requests.observe,
            max_wait_estimate_s=settings.request_timeout_s,
        )
        self.response_key: str | None = None  # sampled responses' vectors, pooled in the sampling pass
        self._keys_checked = False
        self._keys_lock = anyio.Lock()

    @property
    def predictor(self) -> Predictor:
        """The multiple-choice model (the deployment's main checkpoint)."""
        return self.kinds["choice"].predictor

    def model(self, group_id: str, group_kind: str, asked: str) -> KindModel:
        """The model that answers `asked` targets for a group of `group_kind` (KindNotServed otherwise)."""
        return check_served(self.kinds, group_id, group_kind, asked)

    def _forward_batch(self, calls: list[ForwardCall]) -> list[list[Any]]:
        """One GPO forward per kind for the targets of several requests, each against its own encoded context:
        item predictions (choice, rating) or P(a preferred) of each pair (comparison)."""
        t0 = time.perf_counter()
        out: list[list[Any]] = [[] for _ in calls]
        for kind in dict.fromkeys(k for k, _, _ in calls):
            idx = [i for i, (k, _, _) in enumerate(calls) if k == kind]
            predictor = self.kinds[kind].predictor
            requests = [(calls[i][1], calls[i][2]) for i in idx]
            forward = predictor.predict_pairs_many if kind == "comparison" else predictor.predict_encoded
            for i, result in zip(idx, forward(requests), strict=True):
                out[i] = result
        self.metrics.forward_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch_questions.observe(sum(len(targets) for _, _, targets in calls))
        return out

    async def forward(self, kind: str, state: ContextState, targets: list[Item]) -> list[Any]:
        """The predictions of `targets` against an encoded context, through the micro-batcher (429 when full)."""
        return await self.batcher.submit((kind, state, targets))

    async def aclose(self) -> None:
        await self.batcher.aclose()
        self.contexts.close()

    async def embedder_keys(self) -> dict[str, KindModel]:
        """The served kinds, each with its embedder key: checked against the worker on first use (and after a model
        change). Raises WorkerUnavailable while the worker cannot say what it serves, EmbedderMismatch when it
        serves another embedder than a checkpoint was trained on."""
        if self._keys_checked:
            return self.kinds
        async with self._keys_lock:
            if not self._keys_checked:
                info = await self.worker.info()
                if info.dim is None:
                    raise WorkerUnavailable("the worker has not loaded its model yet (embedding size unknown)")
                for model in self.kinds.values():
                    key = info.key_prefix(model.predictor.template_version)
                    model.predictor.check_embedder(key, info.dim)
                    model.embedder_key = key
                self.response_key = info.key_prefix(RESPONSE_POOLED_TEMPLATE_VERSION)
                self._keys_checked = True
                log.info(
                    "embedder %s matches checkpoint %s", self.kinds["choice"].embedder_key, self.predictor.model_version
                )
        return self.kinds

    async def embedder_key(self, kind: str) -> str:
        """The key prefix of the vectors of `kind`'s items (checked against the checkpoint, see embedder_keys)."""
        key = (await self.embedder_keys())[kind].embedder_key
        assert key is not None, "set by embedder_keys"
        return key

    async def chat_prompt(self, prompt: str) -> str:
        """The plain text the completions server is sent for a user prompt: the base LLM's chat template applied here,
        on the API side, so that any OpenAI-compatible engine samples exactly what our worker would."""
        if isinstance(self.generator, NoGenerator):
            raise GenerationNotConfigured(self.generator.reason)
        if self._tokenizer is None:
            self._tokenizer = await in_thread(self._load_tokenizer)
        return chat_text(self._tokenizer, prompt)

    def _load_tokenizer(self) -> Any:
        if isinstance(self.generator, LocalWorker):  # the LLM runs here anyway: its own tokenizer
            try:
                return self.generator.engine.tokenizer()
            except EngineUnavailable as exc:
                raise WorkerUnavailable(str(exc)) from exc
        s = self.settings
        if s.generate_tokenizer is not None:
            return load_tokenizer(s.generate_tokenizer, cache_dir=s.cache_dir)
        return load_tokenizer(s.embedder, revision=s.embedder_revision, cache_dir=s.cache_dir)

    async def sample_vectors(self, prompt_text: str, responses: Sequence[str], max_new_tokens: int) -> np.ndarray:
        """[n, D] vectors of sampled responses from the embeddings server, one batched call, when the completions
        server cannot return them: each pooled over the chat-templated prompt and the response, the tokens the
        sampling pass reads (RESPONSE_POOLED_TEMPLATE_VERSION). A response cut at `max_new_tokens` loses its last
        token, which the sampling pass samples but never reads; then both paths pool the same tokens (equal vectors,
        tested on SmolLM2)."""
        if self._tokenizer is None:
            self._tokenizer = await in_thread(self._load_tokenizer)
        tok = self._tokenizer

        def as_read(response: str) -> str:
            ids = tok(response, add_special_tokens=False)["input_ids"]
            return tok.decode(ids[:-1]) if len(ids) >= max_new_tokens else response

        return await self.worker.embed([prompt_text + as_read(r) for r in responses])

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One database transaction: committed when the block ends, rolled back when it raises."""
        with session_scope(self.sessions) as session:
            yield session

    async def embed(self, texts: Sequence[str], key_prefix: str) -> np.ndarray:
        try:
            return await self.embeddings.embed(texts, key_prefix)
        except WorkerModelChanged:
            # The worker was redeployed with other weights: check it against the checkpoints again next time.
            self._keys_checked = False
            raise
