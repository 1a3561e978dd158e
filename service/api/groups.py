"""Routes of groups and their context: register (append / replace), read, list, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from service.api.deps import MAX_ROW_ID, ContextWriteBody, GroupIdPath, ItemIdPath, ServicesDep, TenantDep, get_tenant
from service.api.errors import CONFLICT, NOT_FOUND, REFUSED_BY_LLM, TOO_LARGE, UNAUTHORIZED, UNAVAILABLE
from service.api.strict_json import StrictJSONRoute
from service.schemas import ContextWriteResponse, GroupContext, GroupList, GroupOut
from service.serving import groups as serving

router = APIRouter(
    prefix="/groups",
    tags=["groups"],
    dependencies=[Depends(get_tenant)],
    responses={**UNAUTHORIZED, **TOO_LARGE},
    route_class=StrictJSONRoute,
)

# Sync routes run in FastAPI's thread pool: their database calls block a thread, never the event loop.


@router.post("/{group_id}/context", responses={**REFUSED_BY_LLM, **CONFLICT, **UNAVAILABLE})
async def write_context(
    group_id: GroupIdPath, body: ContextWriteBody, services: ServicesDep, tenant: TenantDep
) -> ContextWriteResponse:
    """Append items to the group's context or replace it (the group is created on its first write).

    Every option of every item is embedded now, so predictions never wait for the LLM on context items.
    """
    return await serving.register_context(services, tenant, group_id, body)


@router.get("", responses=UNAVAILABLE)
def list_groups(
    services: ServicesDep,
    tenant: TenantDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> GroupList:
    """A page of groups, ordered by group id (name)."""
    return serving.list_groups(services, tenant, limit, offset)


@router.get("/{group_id}", responses={**NOT_FOUND, **UNAVAILABLE})
def get_group(group_id: GroupIdPath, services: ServicesDep, tenant: TenantDep) -> GroupOut:
    return serving.get_group(services, tenant, group_id)


@router.get("/{group_id}/context", responses={**NOT_FOUND, **UNAVAILABLE})
def get_context(group_id: GroupIdPath, services: ServicesDep, tenant: TenantDep) -> GroupContext:
    """The group's context items in order, with their ids (embeddings are not returned)."""
    return serving.get_context(services, tenant, group_id)


@router.delete("/{group_id}", status_code=204, response_class=Response, responses={**NOT_FOUND, **UNAVAILABLE})
def delete_group(group_id: GroupIdPath, services: ServicesDep, tenant: TenantDep) -> Response:
    """Delete the group and its context."""
    serving.delete_group(services, tenant, group_id)
    return Response(status_code=204)


@router.delete("/{group_id}/context/{item_id}", responses={**NOT_FOUND, **UNAVAILABLE})
def delete_item(
    group_id: GroupIdPath, item_id: ItemIdPath, services: ServicesDep, tenant: TenantDep
) -> ContextWriteResponse:
    """Delete one context item; the group's version moves on."""
    return serving.delete_item(services, tenant, group_id, item_id)
