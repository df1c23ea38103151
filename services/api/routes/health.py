"""Health and Prometheus: ``/livez``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from services.api import schemas as S
from services.api.deps import State, describe_served

router = APIRouter()


@router.get("/livez", tags=["health"], summary="The process is running")
def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["health"],
    response_model=S.ReadyResponse,
    summary="200 when a model is loaded and Redis and the database answer; else 503",
    responses={503: {"model": S.ReadyResponse}},
)
def readyz(state: State) -> JSONResponse:
    checks: dict[str, S.Check] = {}
    served = state.holder.current
    checks["model"] = S.Check(ok=served is not None, detail=describe_served(served))
    if state.redis is None:
        checks["redis"] = S.Check(ok=False, detail="not configured (set pipeline.redis_url or REDIS_URL)")
    else:
        try:
            checks["redis"] = S.Check(ok=bool(state.redis.ping()), detail="ping ok")
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = S.Check(ok=False, detail=f"{type(exc).__name__}: {exc}")
    reg = state.ensure_registry()
    if reg is None:
        checks["database"] = S.Check(ok=False, detail=f"cannot open: {state.registry_error}")
    else:
        try:
            ok = reg.ping() is not False
            checks["database"] = S.Check(ok=ok, detail="ping ok" if ok else "ping failed")
        except Exception as exc:  # noqa: BLE001
            checks["database"] = S.Check(ok=False, detail=f"{type(exc).__name__}: {exc}")
    body = S.ReadyResponse(ready=all(c.ok for c in checks.values()), checks=checks)
    return JSONResponse(status_code=200 if body.ready else 503, content=body.model_dump(mode="json"))


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
