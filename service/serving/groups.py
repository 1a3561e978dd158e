"""Groups and their stored context: register (append or replace, embedding choice items first), read, list,
delete. Every write moves the group's version on and drops this replica's encoded contexts of the group."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from service.db import repository as repo
from service.schemas import (
    AnyContextItem,
    ComparisonItemIn,
    ContextItemOut,
    ContextWriteRequest,
    ContextWriteResponse,
    GroupContext,
    GroupList,
    GroupOut,
    RatingItemIn,
)
from service.serving.contexts import embed_items, vectors_to_bytes
from service.serving.services import in_thread

if TYPE_CHECKING:
    from service.serving.services import Services

log = logging.getLogger(__name__)


def _group_out(info: repo.GroupInfo) -> GroupOut:
    return GroupOut(
        group_id=info.name,
        kind=info.kind,
        size=info.size,
        version=info.version,
        created_at=info.created_at,
        updated_at=info.updated_at,
    )


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
        embeddings=None if block is None else vectors_to_bytes(block),
    )


async def register_context(
    services: Services, tenant: str, group_id: str, body: ContextWriteRequest
) -> ContextWriteResponse:
    """Embed every option of every item (cache, then worker), then store the items in one transaction."""
    kind = body.kind or "choice"
    embedder_key: str | None = None
    blocks: list[np.ndarray | None] = [None] * len(body.items)
    if kind == "choice" and body.items:
        model = services.kinds["choice"]
        blocks = await embed_items(services, model, [(item.question, item.options) for item in body.items])
        embedder_key = model.embedder_key
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
