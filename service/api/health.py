"""Routes for operators: liveness, readiness of each dependency, Prometheus metrics (no tenant data)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from service.api.deps import ServicesDep
from service.schemas import HealthResponse, ReadyResponse
from service.serving import health as serving

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> HealthResponse:
    """The process answers (no dependency is asked)."""
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "a dependency is not ready"}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """200 when the database, the worker and the model are ready (a failing Redis cache only degrades); else 503."""
    ready, checks = await serving.readiness(services)
    body = ReadyResponse(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=services.metrics.content_type)
