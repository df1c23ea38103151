"""Health and Prometheus: ``/livez``, ``/readyz``, ``/metrics`` -- all async, none touching
Redis or the database on the request path, so none waits for a thread or a timeout."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from services.api import schemas as S
from services.api.deps import State, describe_served

router = APIRouter()


@router.get("/livez", tags=["health"], summary="The process is running")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["health"],
    response_model=S.ReadyResponse,
    summary="200 when a model is loaded and Redis and the database answered the last status refresh; else 503",
    responses={503: {"model": S.ReadyResponse}},
)
async def readyz(state: State) -> JSONResponse:
    """From the status cache (see ``status_cache.py``): fast, whatever Redis or the database do."""
    served = state.holder.current
    checks = {"model": S.Check(ok=served is not None, detail=describe_served(served))}
    for name, source in state.status_sources.items():
        problem = source.problem()
        checks[name] = S.Check(ok=problem is None, detail=problem or "answered the last status refresh")
    body = S.ReadyResponse(ready=all(c.ok for c in checks.values()), checks=checks)
    return JSONResponse(status_code=200 if body.ready else 503, content=body.model_dump(mode="json"))


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
