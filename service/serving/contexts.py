"""A group's context as a model sees it: the stored items with their vectors (re-embedded and stored back when
their embedder changed), encoded once per context version and cached here and, through Redis, for other replicas."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from service.db import repository as repo
from service.serving.context_cache import StateKey
from service.serving.predictor import AnsweredItem
from service.serving.services import in_thread

if TYPE_CHECKING:
    from service.gpo.model import ContextState
    from service.serving.kinds import KindModel
    from service.serving.predictor import Predictor
    from service.serving.services import Services

log = logging.getLogger(__name__)

EMBEDDING_DTYPE = np.dtype("<f4")  # the stored layout: little-endian float32 [n_options, dim], row-major


class EmptyContext(Exception):
    """A group without context items cannot condition a prediction (HTTP 422)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"group {name!r} has no context items")
        self.name = name


def vectors_to_bytes(vectors: np.ndarray) -> bytes:
    return np.ascontiguousarray(vectors, dtype=EMBEDDING_DTYPE).tobytes()


def vectors_from_bytes(blob: bytes | None, n_options: int, dim: int) -> np.ndarray | None:
    """The stored [n_options, dim] array, or None when absent or of another size (then it is recomputed)."""
    if blob is None or len(blob) != n_options * dim * EMBEDDING_DTYPE.itemsize:
        return None
    return np.frombuffer(blob, dtype=EMBEDDING_DTYPE).reshape(n_options, dim).astype(np.float32)


async def embed_items(
    services: Services, model: KindModel, items: Sequence[tuple[str, Sequence[str]]]
) -> list[np.ndarray | None]:
    """The vectors [n_options, D] of each (question or prompt, options or responses) item, in the template of the
    model's kind, in one worker call (None for each item when the checkpoint uses no embedding)."""
    predictor = model.predictor
    if not predictor.uses_embedding:
        return [None] * len(items)
    texts = [predictor.item_texts(question, options) for question, options in items]
    vectors = await services.embed(
        [t for item_texts in texts for t in item_texts], await services.embedder_key(model.kind.name)
    )
    bounds = np.cumsum([0, *(len(t) for t in texts)])
    return [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclass(frozen=True)
class GroupState:
    """A group's context as a model's targets attend to it."""

    version: int  # the group's context version
    state: ContextState  # its encoded context
    payload: dict[str, Any] | None  # the first item's payload (a rating group's scale); only read for ratings


async def group_state(services: Services, tenant: str, group_id: str, kind: str) -> GroupState:
    """The group's context version and its encoded context for the model of `kind` (the targets the request sent):
    from the context cache when this version was encoded before (here or, through Redis, on another replica), else
    read from the database and encoded (and cached)."""
    kinds = await services.embedder_keys()
    assert kind in kinds, f"this deployment serves {kind} groups"
    model = kinds[kind]
    if services.contexts.enabled:
        found = await in_thread(_cached_state, services, tenant, group_id, model)
        if found is not None:
            return found
    info, context, stored = await _stored_context(services, tenant, group_id, model)
    state = await in_thread(encode, services, context, model.predictor)
    if services.contexts.enabled:
        key = StateKey(model.predictor.model_version, model.state_embedder, info.id, info.version)
        await in_thread(services.contexts.put, key, state, model.predictor)
    return GroupState(info.version, state, stored[0].payload)


def _cached_state(services: Services, tenant: str, group_id: str, model: KindModel) -> GroupState | None:
    """One row read for the version (with the first item's payload for a rating group), then the context cache."""
    payload = None
    with services.engine.connect() as connection:
        if model.kind.name == "rating":
            row, version, group_kind, payload = repo.group_version_and_first_payload(connection, tenant, group_id)
        else:
            row, version, group_kind = repo.group_version(connection, tenant, group_id)
    services.model(group_id, group_kind, asked=model.kind.name)
    key = StateKey(model.predictor.model_version, model.state_embedder, row, version)
    state, where = services.contexts.get(key, model.predictor)
    services.metrics.context_states.labels(where).inc()
    return None if state is None else GroupState(version, state, payload)


async def _stored_context(
    services: Services, tenant: str, group_id: str, model: KindModel
) -> tuple[repo.GroupInfo, list[AnsweredItem], list[repo.StoredItem]]:
    """The group's context items with their stored vectors; items embedded by another embedder (or not at all) are
    embedded again and stored back, so the next prediction finds them."""
    info, stored = await in_thread(_read_context, services, tenant, group_id)
    services.model(group_id, info.kind, asked=model.kind.name)
    if not stored:
        raise EmptyContext(group_id)
    predictor = model.predictor
    context = [AnsweredItem(s.question, s.options, None, np.asarray(s.distribution, dtype=np.float32)) for s in stored]
    if not predictor.uses_embedding:
        return info, context, stored
    key = await services.embedder_key(model.kind.name)
    dim = predictor.spec.emb_dim
    stale: list[int] = []
    for i, s in enumerate(stored):
        context[i].embeddings = vectors_from_bytes(s.embeddings, len(s.options), dim) if s.embedder_key == key else None
        if context[i].embeddings is None:
            stale.append(i)
    if stale:
        blocks = await embed_items(services, model, [(stored[i].question, stored[i].options) for i in stale])
        for i, block in zip(stale, blocks, strict=True):
            context[i].embeddings = block

        def store_back() -> int:
            with services.transaction() as session:
                return repo.set_item_embeddings(
                    session, {stored[i].id: vectors_to_bytes(context[i].embeddings) for i in stale}, key
                )

        updated = await in_thread(store_back)
        services.metrics.reembedded_items.inc(updated)
        log.info("group %s/%s: %d context items re-embedded with %s", tenant, group_id, updated, key)
    return info, context, stored


def _read_context(services: Services, tenant: str, group_id: str) -> tuple[repo.GroupInfo, list[repo.StoredItem]]:
    with services.transaction() as session:
        return repo.get_context(session, tenant, group_id)


def encode(services: Services, context: Sequence[AnsweredItem], predictor: Predictor) -> ContextState:
    """The context encoded by `predictor` (timed and counted)."""
    t0 = time.perf_counter()
    state = predictor.encode(context)
    services.metrics.encode_seconds.observe(time.perf_counter() - t0)
    services.metrics.context_items.observe(len(context))
    return state
