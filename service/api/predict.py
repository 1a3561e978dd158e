"""Route of preference prediction: a group's answer distribution over each question's options."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.deps import PredictBody, ServicesDep, TenantDep, get_tenant
from service.api.errors import BUSY, NOT_FOUND, REFUSED_BY_LLM, TOO_LARGE, UNAUTHORIZED, UNAVAILABLE
from service.api.strict_json import StrictJSONRoute
from service.schemas import PredictResponse
from service.serving import predict as serving

router = APIRouter(
    tags=["predict"],
    dependencies=[Depends(get_tenant)],
    responses={**UNAUTHORIZED, **TOO_LARGE},
    route_class=StrictJSONRoute,
)


@router.post("/predict", responses={**REFUSED_BY_LLM, **NOT_FOUND, **BUSY, **UNAVAILABLE})
async def predict(body: PredictBody, services: ServicesDep, tenant: TenantDep) -> PredictResponse:
    """Per question, in order: the predicted distribution over its options (sums to 1) and its std.

    The context is a stored group (`group_id`) or given inline (`context`); all questions go through one
    GPO forward, against the group's context encoded once per context version (cached), and concurrent
    requests share forwards. 429 with Retry-After when too many requests are waiting.
    """
    return await serving.predict(services, tenant, body)
