"""What the API does per request (register context, predict, best-of-n, readiness) on the services it opened."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from service.auth import KeyResolver
from service.batching import MicroBatcher
from service.context_cache import StateKey, build_context_cache
from service.db import repository as repo
from service.db.session import session_scope
from service.embedder.client import WorkerError, WorkerModelChanged, WorkerUnavailable
from service.embedder.generate import RESPONSE_POOLED_TEMPLATE_VERSION, is_greedy
from service.embedder.protocol import SamplingParams
from service.embeddings import ItemEmbeddings
from service.inference import ContextItem, EmbedderMismatch, Item, ItemPrediction
from service.schemas import (
    MAX_SEED,
    AnyContextItem,
    ComparisonItemIn,
    ContextItemIn,
    ContextItemOut,
    ContextWriteRequest,
    ContextWriteResponse,
    GenerateRequest,
    GenerateResponse,
    GroupContext,
    GroupList,
    GroupOut,
    Limits,
    PairPrediction,
    Prediction,
    PredictRequest,
    PredictResponse,
    QuestionIn,
    RatingItemIn,
    RatingPrediction,
    ScoredResponse,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from service.cache import VectorCache
    from service.config import Settings
    from service.embedder.client import Worker
    from service.gpo.model import ContextState
    from service.inference import Predictor
    from service.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
EMBEDDING_DTYPE = np.dtype("<f4")  # the stored layout: little-endian float32 [n_options, dim], row-major


class KindNotServed(Exception):
    """A group of a kind this deployment has no model for, or asked for the other kind's targets (HTTP 422)."""

    def __init__(self, name: str, kind: str, reason: str) -> None:
        super().__init__(f"group {name!r} holds {kind} items: {reason}")
        self.name = name
        self.kind = kind


TARGETS = {"choice": "questions", "rating": "responses", "comparison": "pairs"}
SETTING = {"rating": "GPO_RATING_CHECKPOINT", "comparison": "GPO_COMPARISON_CHECKPOINT"}


def _served(services: Services | None, kind: str) -> Predictor | None:
    if services is None:
        return None
    return {"choice": services.predictor, "rating": services.rating, "comparison": services.comparison}.get(kind)


def _check_served_kind(name: str, kind: str, services: Services | None = None, asked: str = "choice") -> None:
    """The group's kind must be the one asked for (`asked`: which targets the request sent) and be served."""
    if kind == asked and _served(services, kind) is not None:
        return
    if _served(services, kind) is None:
        raise KindNotServed(
            name, kind, f"this deployment serves no {kind} model (set {SETTING.get(kind, 'GPO_CHECKPOINT')})"
        )
    raise KindNotServed(name, kind, f"send '{TARGETS[kind]}' to predict it")


class EmptyContext(Exception):
    """A group without context items cannot condition a prediction (HTTP 422)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"group {name!r} has no context items")
        self.name = name


@dataclass(frozen=True)
class EmbedderKeys:
    """Key prefixes of the worker's vectors, once checked against the checkpoint."""

    choice: str  # multiple-choice items, in the checkpoint's template (stored with context items)
    response: str  # sampled responses, pooled in the sampling pass (best-of-n; vectors are not cached)
    rating: str | None = None  # rating items (prompt + response), in the rating checkpoint's template
    comparison: str | None = None  # comparison items' responses, in the comparison checkpoint's template


class Services:
    """Everything the routes use, opened once by the app's lifespan (see service.app)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        sessions: sessionmaker[Session],
        cache: VectorCache,
        worker: Worker,
        predictor: Predictor,
        metrics: Metrics,
        rating: Predictor | None = None,
        comparison: Predictor | None = None,
    ) -> None:
        self.settings = settings
        self.rating = rating  # serves rating groups (GPO_RATING_CHECKPOINT), when configured
        self.comparison = comparison  # serves comparison groups (GPO_COMPARISON_CHECKPOINT), when configured
        self.engine = engine
        self.sessions = sessions
        self.cache = cache
        self.worker = worker
        self.predictor = predictor
        self.metrics = metrics
        self.limits = Limits.from_settings(settings)
        self.keys = KeyResolver(sessions, ttl_s=settings.auth_cache_s)
        self.embeddings = ItemEmbeddings(cache, worker, metrics)
        self.contexts = build_context_cache(settings, predictor)
        self.batcher: MicroBatcher[tuple[ContextState, list[Item]], list[ItemPrediction]] = MicroBatcher(
            self._forward_batch,
            name="predict",
            max_batch=settings.batch_max_requests,
            max_queue=settings.batch_max_queue,
            max_wait_s=settings.batch_wait_ms / 1000,
            retry_after_s=1,
            observe=metrics.batch_requests.observe,
        )
        self._keys: EmbedderKeys | None = None
        self._keys_lock = anyio.Lock()

    def _forward_batch(self, calls: list[tuple[ContextState, list[Item]]]) -> list[list[ItemPrediction]]:
        """One GPO forward for the targets of several requests, each against its own encoded context."""
        t0 = time.perf_counter()
        out = self.predictor.predict_encoded(calls)
        self.metrics.forward_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch_questions.observe(sum(len(targets) for _, targets in calls))
        return out

    async def aclose(self) -> None:
        await self.batcher.aclose()
        self.contexts.close()

    async def embedder_keys(self) -> EmbedderKeys:
        """The worker's key prefixes, checked against the checkpoint on first use (and after a model change).

        Raises WorkerUnavailable while the worker cannot say what it serves, EmbedderMismatch when it serves
        another embedder than the checkpoint was trained on.
        """
        if self._keys is not None:
            return self._keys
        async with self._keys_lock:
            if self._keys is None:
                info = await self.worker.info()
                template = self.predictor.template_version
                if info.dim is None:
                    raise WorkerUnavailable("the worker has not loaded its model yet (embedding size unknown)")
                self.predictor.check_embedder(info.key_prefix(template), info.dim)
                kind_keys: dict[str, str | None] = {"rating": None, "comparison": None}
                for kind, other in (("rating", self.rating), ("comparison", self.comparison)):
                    if other is not None:
                        kind_keys[kind] = info.key_prefix(other.template_version)
                        other.check_embedder(kind_keys[kind], info.dim)
                self._keys = EmbedderKeys(
                    info.key_prefix(template), info.key_prefix(RESPONSE_POOLED_TEMPLATE_VERSION), **kind_keys
                )
                log.info("embedder %s matches checkpoint %s", self._keys.choice, self.predictor.model_version)
        return self._keys

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One database transaction: committed when the block ends, rolled back when it raises."""
        with session_scope(self.sessions) as session:
            yield session

    async def embed(self, texts: Sequence[str], key_prefix: str) -> np.ndarray:
        try:
            return await self.embeddings.embed(texts, key_prefix)
        except WorkerModelChanged:
            # The worker was redeployed with other weights: check it against the checkpoint again next time.
            self._keys = None
            raise


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking work (database, cache, torch) in a worker thread, off the event loop."""
    return await anyio.to_thread.run_sync(fn, *args)


# ---------------------------------------------------------------------------------------------- conversions


def _to_bytes(vectors: np.ndarray) -> bytes:
    return np.ascontiguousarray(vectors, dtype=EMBEDDING_DTYPE).tobytes()


def _from_bytes(blob: bytes | None, n_options: int, dim: int) -> np.ndarray | None:
    """The stored [n_options, dim] array, or None when absent or of another size (then it is recomputed)."""
    if blob is None or len(blob) != n_options * dim * EMBEDDING_DTYPE.itemsize:
        return None
    return np.frombuffer(blob, dtype=EMBEDDING_DTYPE).reshape(n_options, dim).astype(np.float32)


def _split(vectors: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Consecutive row blocks of `vectors`, one of each size."""
    bounds = np.cumsum([0, *sizes])
    return [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _group_out(info: repo.GroupInfo) -> GroupOut:
    return GroupOut(
        group_id=info.name,
        kind=info.kind,
        size=info.size,
        version=info.version,
        created_at=info.created_at,
        updated_at=info.updated_at,
    )


# ---------------------------------------------------------------------------------------------- groups


def _new_item(item: AnyContextItem, block: np.ndarray | None, embedder_key: str | None) -> repo.NewItem:
    """The stored form of a context item of any kind (see ContextItemOut for the layout)."""
    if isinstance(item, RatingItemIn):
        return repo.NewItem(
            question=item.prompt,
            options=[item.response],
            distribution=[item.normalized()],
            kind="rating",
            payload={"score": item.score, "scale": list(item.scale)},
        )
    if isinstance(item, ComparisonItemIn):
        p = item.probability()
        return repo.NewItem(
            question=item.prompt,
            options=[item.response_a, item.response_b],
            distribution=[p, 1.0 - p],
            kind="comparison",
            payload={"preferred": item.preferred} if item.preferred is not None else None,
        )
    return repo.NewItem(
        question=item.question,
        options=list(item.options),
        distribution=item.probabilities(),
        ordinals=item.ordinals,
        embedder_key=embedder_key if block is not None else None,
        embeddings=None if block is None else _to_bytes(block),
    )


async def register_context(
    services: Services, tenant: str, group_id: str, body: ContextWriteRequest
) -> ContextWriteResponse:
    """Embed every option of every item (cache, then worker), then store the items in one transaction."""
    predictor = services.predictor
    kind = body.kind or "choice"
    embedder_key: str | None = None
    blocks: list[np.ndarray | None] = [None] * len(body.items)
    if kind == "choice" and predictor.uses_embedding and body.items:
        embedder_key = (await services.embedder_keys()).choice
        texts = [predictor.choice_texts(item.question, item.options) for item in body.items]
        vectors = await services.embed([t for item_texts in texts for t in item_texts], embedder_key)
        blocks = list(_split(vectors, [len(t) for t in texts]))
    # Rating and comparison items are stored without embeddings: they are embedded (and stored back) by the
    # first prediction of a model of their kind, as items of another embedder are.
    items = [_new_item(item, block, embedder_key) for item, block in zip(body.items, blocks, strict=True)]

    def write() -> repo.GroupInfo:
        with services.transaction() as session:
            info = repo.write_context(session, tenant, group_id, items, body.mode, body.expected_version, kind=kind)
            services.limits.check_context_size(info.size)  # raising here rolls the whole write back
            return info

    info = await in_thread(write)
    services.contexts.forget_group(info.id)
    log.info("group %s/%s: %s %d items -> version %d", tenant, group_id, body.mode, len(items), info.version)
    return ContextWriteResponse(group_id=info.name, version=info.version, size=info.size)


def list_groups(services: Services, tenant: str, limit: int, offset: int) -> GroupList:
    with services.transaction() as session:
        infos = repo.list_groups(session, tenant, limit=limit, offset=offset)
    return GroupList(groups=[_group_out(i) for i in infos], limit=limit, offset=offset)


def get_group(services: Services, tenant: str, group_id: str) -> GroupOut:
    with services.transaction() as session:
        return _group_out(repo.get_group(session, tenant, group_id))


def get_context(services: Services, tenant: str, group_id: str) -> GroupContext:
    with services.transaction() as session:
        info, items = repo.get_context(session, tenant, group_id)
    return GroupContext(
        group_id=info.name,
        version=info.version,
        size=info.size,
        items=[
            ContextItemOut(
                id=i.id,
                kind=i.kind,
                question=i.question,
                options=i.options,
                distribution=i.distribution,
                ordinals=i.ordinals,
                score=(i.payload or {}).get("score"),
                scale=(i.payload or {}).get("scale"),
            )
            for i in items
        ],
    )


def delete_group(services: Services, tenant: str, group_id: str) -> None:
    with services.transaction() as session:
        repo.delete_group(session, tenant, group_id)
    log.info("group %s/%s deleted", tenant, group_id)


def delete_item(services: Services, tenant: str, group_id: str, item_id: int) -> ContextWriteResponse:
    with services.transaction() as session:
        info = repo.delete_item(session, tenant, group_id, item_id)
    services.contexts.forget_group(info.id)
    return ContextWriteResponse(group_id=info.name, version=info.version, size=info.size)


# ---------------------------------------------------------------------------------------------- prediction


async def _stored_context(
    services: Services, tenant: str, group_id: str, kind: str = "choice"
) -> tuple[repo.GroupInfo, list[ContextItem], list[repo.StoredItem]]:
    """The group's context items with their stored embeddings; items embedded by another embedder (or not at
    all) are embedded again and stored back, so the next prediction finds them. `kind`: the kind the caller
    serves (the choice checkpoint, or the rating one)."""
    info, stored = await in_thread(_read_context, services, tenant, group_id)
    _check_served_kind(group_id, info.kind, services, asked=kind)
    if not stored:
        raise EmptyContext(group_id)
    predictor = _served(services, kind)
    assert predictor is not None, "checked above"
    context = [ContextItem(s.question, s.options, None, np.asarray(s.distribution, dtype=np.float32)) for s in stored]
    if not predictor.uses_embedding:
        return info, context, stored
    keys = await services.embedder_keys()
    key = {"choice": keys.choice, "rating": keys.rating, "comparison": keys.comparison}[kind]
    assert key is not None
    dim = predictor.spec.emb_dim
    stale: list[int] = []
    for i, s in enumerate(stored):
        context[i].embeddings = _from_bytes(s.embeddings, len(s.options), dim) if s.embedder_key == key else None
        if context[i].embeddings is None:
            stale.append(i)
    if stale:
        texts = [predictor.item_texts(stored[i].question, stored[i].options) for i in stale]
        vectors = await services.embed([t for item_texts in texts for t in item_texts], key)
        blocks = _split(vectors, [len(t) for t in texts])
        for i, block in zip(stale, blocks, strict=True):
            context[i].embeddings = block

        def store_back() -> int:
            with services.transaction() as session:
                return repo.set_item_embeddings(
                    session, {stored[i].id: _to_bytes(context[i].embeddings) for i in stale}, key
                )

        updated = await in_thread(store_back)
        services.metrics.reembedded_items.inc(updated)
        log.info("group %s/%s: %d context items re-embedded with %s", tenant, group_id, updated, key)
    return info, context, stored


def _read_context(services: Services, tenant: str, group_id: str) -> tuple[repo.GroupInfo, list[repo.StoredItem]]:
    with services.transaction() as session:
        return repo.get_context(session, tenant, group_id)


async def _embedded(services: Services, questions: Sequence[QuestionIn | ContextItemIn]) -> list[np.ndarray | None]:
    """Embeddings [n_options, D] of each question's options in one worker call (None: the checkpoint uses none)."""
    predictor = services.predictor
    if not predictor.uses_embedding:
        return [None] * len(questions)
    key = (await services.embedder_keys()).choice
    texts = [predictor.choice_texts(q.question, q.options) for q in questions]
    vectors = await services.embed([t for item_texts in texts for t in item_texts], key)
    return list(_split(vectors, [len(t) for t in texts]))


def _cached_state(
    services: Services, tenant: str, group_id: str, embedder_key: str, kind: str = "choice"
) -> tuple[int, ContextState | None, dict[str, Any] | None]:
    """(context version, encoded context or None, the first item's payload for a rating group): one row read for
    the version, then the context cache."""
    predictor = _served(services, kind)
    assert predictor is not None, "the caller serves this kind"
    payload = None
    with services.engine.connect() as connection:
        if kind == "rating":
            row, version, group_kind, payload = repo.group_version_and_first_payload(connection, tenant, group_id)
        else:
            row, version, group_kind = repo.group_version(connection, tenant, group_id)
    _check_served_kind(group_id, group_kind, services, asked=kind)
    state, where = services.contexts.get(StateKey(predictor.model_version, embedder_key, row, version), predictor)
    services.metrics.context_states.labels(where).inc()
    return version, state, payload


def _encode(services: Services, context: Sequence[ContextItem], predictor: Predictor | None = None) -> ContextState:
    t0 = time.perf_counter()
    state = (predictor or services.predictor).encode(context)
    services.metrics.encode_seconds.observe(time.perf_counter() - t0)
    services.metrics.context_items.observe(len(context))
    return state


async def group_state(
    services: Services, tenant: str, group_id: str, kind: str = "choice"
) -> tuple[int, ContextState, dict[str, Any] | None]:
    """The group's context version and its encoded context: from the context cache when this version was encoded
    before (here or, through Redis, on another replica), else read from the database and encoded (and cached).
    `kind`: the model that serves the group ("choice", "rating" or "comparison"; a rating group also gets its
    first item's payload, which holds the group's scale)."""
    predictor = _served(services, kind)
    assert predictor is not None, f"this deployment serves {kind} groups"
    keys = await services.embedder_keys()
    embedder_key = ""
    if predictor.uses_embedding:
        embedder_key = {"choice": keys.choice, "rating": keys.rating, "comparison": keys.comparison}[kind] or ""
    if services.contexts.enabled:
        version, state, payload = await in_thread(_cached_state, services, tenant, group_id, embedder_key, kind)
        if state is not None:
            return version, state, payload
    info, context, stored = await _stored_context(services, tenant, group_id, kind)
    state = await in_thread(_encode, services, context, predictor)
    if services.contexts.enabled:
        key = StateKey(predictor.model_version, embedder_key, info.id, info.version)
        await in_thread(services.contexts.put, key, state, predictor)
    return info.version, state, stored[0].payload


async def rated(
    services: Services, tenant: str, group_id: str, prompt_responses: Sequence[tuple[str, str]]
) -> tuple[int, list[tuple[float, float]]]:
    """(context version, [(score, std)] on the group's scale) of each (prompt, response) for a rating group; the
    group's context is encoded once per version and cached, as a choice group's."""
    if services.rating is None:  # the group's kind decides which error: checked on the group
        info = await in_thread(_group_info, services, tenant, group_id)
        _check_served_kind(group_id, info.kind, services, asked="rating")
    version, state, payload = await group_state(services, tenant, group_id, "rating")
    rating, key = services.rating, (await services.embedder_keys()).rating
    assert rating is not None and key is not None, "checked by group_state"
    texts = [t for p, r in prompt_responses for t in rating.item_texts(p, [r])]
    vectors = await services.embed(texts, key)
    targets = [Item(p, [r], vectors[i : i + 1]) for i, (p, r) in enumerate(prompt_responses)]
    (predictions,) = await in_thread(rating.predict_encoded, [(state, targets)])
    lo, hi = (payload or {}).get("scale", (0.0, 1.0))  # the group's scale: its items'
    return version, [(lo + (hi - lo) * float(p.distribution[0]), (hi - lo) * float(p.std[0])) for p in predictions]


async def compared(
    services: Services, tenant: str, group_id: str, pairs: Sequence[tuple[str, str, str]]
) -> tuple[repo.GroupInfo, list[float]]:
    """(context version, P(a preferred)) of each (prompt, response a, response b) for a comparison group; the
    group's context is encoded once per version and cached, as a choice group's."""
    if services.comparison is None:  # the group's kind decides which error: checked on the group
        info = await in_thread(_group_info, services, tenant, group_id)
        _check_served_kind(group_id, info.kind, services, asked="comparison")
    version, state, _ = await group_state(services, tenant, group_id, "comparison")
    model, key = services.comparison, (await services.embedder_keys()).comparison
    assert model is not None and key is not None, "checked by group_state"
    texts = [t for p, a, b in pairs for t in model.item_texts(p, [a, b])]
    vectors = await services.embed(texts, key)
    targets = [Item(p, [a, b], vectors[2 * i : 2 * i + 2]) for i, (p, a, b) in enumerate(pairs)]
    return version, await in_thread(model.predict_pairs_encoded, state, targets)


def _group_info(services: Services, tenant: str, group_id: str) -> repo.GroupInfo:
    with services.transaction() as session:
        return repo.get_group(session, tenant, group_id)


async def predict(services: Services, tenant: str, body: PredictRequest) -> PredictResponse:
    """Distributions over each question's options given a stored group's context or an inline one; or, for a
    rating group, a predicted score for each response."""
    if body.pairs is not None:
        assert body.group_id is not None, "validated: pairs go with a stored group"
        version, probs = await compared(
            services, tenant, body.group_id, [(p.prompt, p.response_a, p.response_b) for p in body.pairs]
        )
        assert services.comparison is not None
        services.metrics.predictions.labels("comparison").inc(len(probs))
        return PredictResponse(
            predictions=[],
            preferences=[PairPrediction(probability_a=v) for v in probs],
            model_version=services.comparison.model_version,
            context_version=version,
        )
    if body.responses is not None:
        assert body.group_id is not None, "validated: responses go with a stored group"
        pairs = [(r.prompt, r.response) for r in body.responses]
        version, scores = await rated(services, tenant, body.group_id, pairs)
        assert services.rating is not None
        services.metrics.predictions.labels("rating").inc(len(scores))
        return PredictResponse(
            predictions=[],
            scores=[RatingPrediction(score=s, std=sd) for s, sd in scores],
            model_version=services.rating.model_version,
            context_version=version,
        )
    assert body.questions is not None, "validated: questions or responses"
    context_version: int | None = None
    if body.group_id is not None:
        context_version, state, _ = await group_state(services, tenant, body.group_id)
        embeddings = await _embedded(services, body.questions)
    else:
        assert body.context is not None, "validated: group_id or context"
        # Inline context and questions in one embeddings call.
        embedded = await _embedded(services, [*body.context, *body.questions])
        n_ctx = len(body.context)
        context = [
            ContextItem(c.question, c.options, e, np.asarray(c.probabilities(), dtype=np.float32))
            for c, e in zip(body.context, embedded[:n_ctx], strict=True)
        ]
        embeddings = embedded[n_ctx:]
        state = await in_thread(_encode, services, context)
    targets = [Item(q.question, q.options, e) for q, e in zip(body.questions, embeddings, strict=True)]
    predictions = await services.batcher.submit((state, targets))
    services.metrics.predictions.labels("stored" if context_version is not None else "inline").inc(len(targets))
    if context_version is not None:
        services.metrics.context_version.set(context_version)
    return PredictResponse(
        predictions=[Prediction(distribution=p.distribution.tolist(), std=p.std.tolist()) for p in predictions],
        model_version=services.predictor.model_version,
        context_version=context_version,
    )


# ---------------------------------------------------------------------------------------------- best-of-n


async def sample_distinct(
    services: Services, body: GenerateRequest, with_vectors: bool = False
) -> tuple[list[str], np.ndarray | None, int]:
    """Up to n distinct responses (compared without surrounding whitespace, as they are embedded), their vectors
    pooled in the sampling pass (with `with_vectors`), and the number of samples drawn.

    The first call asks the worker for n samples in one batch. When some are duplicates, up to
    `generate_sampling_rounds - 1` more calls ask for the missing ones, with seeds seed + 1, seed + 2, ... so a
    fixed seed still gives the same answer. Greedy decoding (temperature < GREEDY_BELOW) repeats itself: no second
    call.
    What is still missing after the last call is missing from the answer (len(responses) < n, n_sampled says why).
    """
    distinct: dict[str, tuple[str, np.ndarray | None]] = {}  # stripped -> the first sample with that text
    sampled = 0
    for round_ in range(services.settings.generate_sampling_rounds):
        want = body.n - len(distinct)
        seed = None if body.seed is None else (body.seed + round_) % (MAX_SEED + 1)
        params = SamplingParams(body.prompt, want, body.max_new_tokens, body.temperature, seed)
        if with_vectors:
            texts, vectors = await services.worker.complete_with_vectors(params)
        else:
            texts, vectors = await services.worker.complete(params), None
        sampled += len(texts)
        for i, t in enumerate(texts):
            distinct.setdefault(t.strip(), (t, None if vectors is None else vectors[i]))
        if len(distinct) >= body.n or is_greedy(body.temperature):
            break
    kept = list(distinct.values())[: body.n]
    services.metrics.generate_duplicates.inc(sampled - len(kept))
    responses = [t for t, _ in kept]
    return responses, (np.stack([v for _, v in kept]) if with_vectors else None), sampled


async def generate(
    services: Services, tenant: str, body: GenerateRequest, timings: dict[str, float] | None = None
) -> GenerateResponse:
    """Sample responses with the base LLM, score them as the options of one question given the group's context.

    The responses' vectors come from the sampling pass itself (the worker pools the hidden states it computed
    while sampling), so scoring costs one GPO forward and no second LLM pass. `timings` (when given) receives
    the seconds spent on "context" (the group's encoded context), "sample" (the base LLM) and "score" (GPO).
    """
    t0 = time.perf_counter()
    if services.rating is not None or services.comparison is not None:
        info = await in_thread(_group_info, services, tenant, body.group_id)  # 404 before any sampling
        if info.kind == "rating" and services.rating is not None:
            return await _generate_rated(services, tenant, body, timings)
        if info.kind == "comparison" and services.comparison is not None:
            return await _generate_compared(services, tenant, body, timings)
    context_version, state, _ = await group_state(services, tenant, body.group_id)  # 404 before any sampling
    t1 = time.perf_counter()
    predictor = services.predictor
    responses, embeddings, n_sampled = await sample_distinct(services, body, with_vectors=predictor.uses_embedding)
    t2 = time.perf_counter()
    (prediction,) = await services.batcher.submit((state, [Item(body.prompt, responses, embeddings)]))
    scores = prediction.distribution
    order = sorted(range(len(responses)), key=lambda i: -scores[i])  # stable: ties keep sampling order
    if timings is not None:
        timings.update(context=t1 - t0, sample=t2 - t1, score=time.perf_counter() - t2)
    return GenerateResponse(
        responses=[ScoredResponse(text=responses[i], score=float(scores[i])) for i in order],
        model_version=predictor.model_version,
        context_version=context_version,
        n_sampled=n_sampled,
    )


async def _generate_rated(
    services: Services, tenant: str, body: GenerateRequest, timings: dict[str, float] | None
) -> GenerateResponse:
    """Best-of-n for a rating group: the samples ranked by the group's predicted score (highest first)."""
    assert services.rating is not None
    t0 = time.perf_counter()
    responses, _, n_sampled = await sample_distinct(services, body)
    t1 = time.perf_counter()
    version, scores = await rated(services, tenant, body.group_id, [(body.prompt, r) for r in responses])
    order = sorted(range(len(responses)), key=lambda i: -scores[i][0])  # stable: ties keep sampling order
    if timings is not None:
        timings.update(sample=t1 - t0, score=time.perf_counter() - t1)
    return GenerateResponse(
        responses=[ScoredResponse(text=responses[i], score=scores[i][0]) for i in order],
        model_version=services.rating.model_version,
        context_version=version,
        n_sampled=n_sampled,
    )


async def _generate_compared(
    services: Services, tenant: str, body: GenerateRequest, timings: dict[str, float] | None
) -> GenerateResponse:
    """Best-of-n for a comparison group: every ordered pair of samples in one forward; a sample's score is its mean
    win rate against the others (each pair counted both ways, (P(i over j) + 1 - P(j over i)) / 2)."""
    assert services.comparison is not None
    t0 = time.perf_counter()
    responses, _, n_sampled = await sample_distinct(services, body)
    t1 = time.perf_counter()
    n = len(responses)
    ordered = [(i, j) for i in range(n) for j in range(n) if i != j]
    version, probs = await compared(
        services, tenant, body.group_id, [(body.prompt, responses[i], responses[j]) for i, j in ordered]
    )
    p = dict(zip(ordered, probs, strict=True))
    wins = [
        float(np.mean([(p[i, j] + 1.0 - p[j, i]) / 2 for j in range(n) if j != i])) if n > 1 else 0.5 for i in range(n)
    ]
    order = sorted(range(n), key=lambda i: -wins[i])  # stable: ties keep sampling order
    if timings is not None:
        timings.update(sample=t1 - t0, score=time.perf_counter() - t1)
    return GenerateResponse(
        responses=[ScoredResponse(text=responses[i], score=wins[i]) for i in order],
        model_version=services.comparison.model_version,
        context_version=version,
        n_sampled=n_sampled,
    )


# ---------------------------------------------------------------------------------------------- readiness


def _database_answers(services: Services) -> bool:
    try:
        with services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError as exc:
        log.warning("readiness: database check failed (%s)", type(exc).__name__)
        return False


async def _worker_check(services: Services) -> str:
    if not await services.worker.ready():
        return "unavailable"
    try:
        await services.embedder_keys()
    except EmbedderMismatch as exc:
        log.error("readiness: %s", exc)
        return "embedder mismatch"
    except WorkerError:
        return "unavailable"
    return "ok"


async def readiness(services: Services) -> tuple[bool, dict[str, str]]:
    """Each dependency checked for real; a Redis cache that fails is 'degraded' (the API answers without it)."""
    checks = {
        "database": "ok" if await in_thread(_database_answers, services) else "unavailable",
        "cache": "ok" if await in_thread(services.cache.ping) else "degraded",
        "worker": await _worker_check(services),
        "model": "ok" if services.predictor.model is not None else "not loaded",
    }
    ready = all(status == "ok" for name, status in checks.items() if name != "cache")
    return ready, checks
