"""Route of group-aligned generation: sample n responses with the base LLM, rank them by the group's preference."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from service.api.deps import GenerateBody, ServicesDep, TenantDep, get_tenant
from service.api.errors import BUSY, NOT_FOUND, REFUSED_BY_LLM, TOO_LARGE, UNAUTHORIZED, UNAVAILABLE
from service.api.strict_json import StrictJSONRoute
from service.schemas import GenerateResponse
from service.serving import generate as serving

router = APIRouter(
    tags=["generate"],
    dependencies=[Depends(get_tenant)],
    responses={**UNAUTHORIZED, **TOO_LARGE},
    route_class=StrictJSONRoute,
)


@router.post("/generate", responses={**REFUSED_BY_LLM, **NOT_FOUND, **BUSY, **UNAVAILABLE})
async def generate(
    body: GenerateBody, services: ServicesDep, tenant: TenantDep, response: Response
) -> GenerateResponse:
    """n distinct responses to the prompt, best first; score = GPO's probability that the group prefers it.

    The responses are the options of one question scored in one GPO forward given the group's context.
    Duplicates are resampled with the next seeds (seed + 1, ...); `n_sampled` counts every sample drawn.
    The Server-Timing header says where the time went (context, sample, score).
    """
    timings: dict[str, float] = {}
    out = await serving.generate(services, tenant, body, timings)
    # Where the time went (W3C Server-Timing, milliseconds): context, sample (base LLM), score (embed + GPO).
    response.headers["Server-Timing"] = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timings.items())
    return out
