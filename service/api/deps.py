"""Dependencies of the routes: the opened services, the caller's tenant, path parameters, request limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Unauthorized
from service.db.models import DEFAULT_TENANT
from service.schemas import GROUP_ID_PATTERN, ContextWriteRequest, GenerateRequest, PredictRequest
from service.serving.services import Services, in_thread


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


bearer = HTTPBearer(auto_error=False, description="an API key made by `gpo keys create TENANT`")


async def get_tenant(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """The caller's tenant, from its API key: every repository call is scoped to it.

    With GPO_AUTH=false (embedded SQLite only) every caller is the default tenant.
    """
    if not services.settings.auth:
        return DEFAULT_TENANT
    if credentials is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' (create one with `gpo keys create`)")
    found, tenant = services.keys.cached(credentials.credentials)
    if not found:
        tenant = await in_thread(services.keys.tenant, credentials.credentials)
    if tenant is None:
        raise Unauthorized("invalid or revoked API key")
    return tenant


TenantDep = Annotated[str, Depends(get_tenant)]

GroupIdPath = Annotated[
    str, Path(pattern=GROUP_ID_PATTERN, description='letters, digits and _ . : - (1 to 128); not "." or ".."')
]
MAX_ROW_ID = 2**31 - 1  # ids are 32-bit integers in the database
ItemIdPath = Annotated[
    int, Path(ge=1, le=MAX_ROW_ID, description="id of a context item, as GET /groups/{group_id}/context lists it")
]


# The limits come from settings, so they are checked after pydantic's (static) validation; a request past one
# gets the same 422 shape, naming the field.


async def valid_context_write(body: ContextWriteRequest, services: ServicesDep) -> ContextWriteRequest:
    services.limits.check_context_write(body)
    return body


async def valid_predict(body: PredictRequest, services: ServicesDep) -> PredictRequest:
    services.limits.check_predict(body)
    return body


async def valid_generate(body: GenerateRequest, services: ServicesDep) -> GenerateRequest:
    services.limits.check_generate(body)
    return body


ContextWriteBody = Annotated[ContextWriteRequest, Depends(valid_context_write)]
PredictBody = Annotated[PredictRequest, Depends(valid_predict)]
GenerateBody = Annotated[GenerateRequest, Depends(valid_generate)]
