"""The HTTP API service (ARCHITECTURE §7), laid out like FastAPI's full-stack template:

* ``app.py`` (this file): :func:`create_app` -- the factory, its lifespan, the request
  metrics middleware and the 422 format; ``limits.py``: the body size limit (413);
* ``deps.py``: the shared state (registry, Redis, served model, best-model watcher) and
  the dependencies the routes declare (registry, Redis, auth);
* ``routes/``: one ``APIRouter`` per concern -- ``health`` (``/livez``, ``/readyz``,
  ``/metrics``), ``status``, ``registry`` (checkpoints, validations, promote),
  ``inference`` (``/v1/act``, ``/v1/act/batch``), ``sessions`` (``/v1/sessions``),
  ``pages`` (the status page at ``/``, ``/docs`` and ``/redoc`` from installed files:
  they work offline);
* ``schemas.py``: the pydantic request/response models; ``inference.py``: the served
  model's holder and the batched inference thread over the library's ``shared.serving``.

Decisions:
* Endpoints reading the registry are sync functions (FastAPI runs them in its
  threadpool); ``/v1/act``, ``/status`` and the health checks are async and never
  wait on Redis or the database: status comes from a cache refreshed in the background
  (``status_cache.py``), observations are built on the API's own threads.
* Non-finite numbers in outputs follow ``shared.jsonsafe`` ("inf"/"-inf", NaN as null).
* Every request is counted in ``microzero_api_requests_total{method,route,status}``
  by its route *template* (``/checkpoints/{checkpoint_id}``), never the raw path;
  unmatched paths count as ``<unmatched>``.
* Promotion goes through ``shared.checkpoint_store.promote``, the validator's path.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.api.deps import ApiState
from services.api.limits import BodySizeLimit
from services.api.routes import health, inference, pages, sessions, status
from services.api.routes import registry as registry_routes
from shared.config import Config
from shared.device import pick_device
from shared.observability import API_LATENCY, API_REQUESTS
from shared.serving.observation import ObservationError
from shared.transport.keys import RedisKeys

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def create_app(
    config: Config,
    *,
    registry: Any = None,
    redis: Any = None,
    keys: RedisKeys | None = None,
    poll_interval_s: float = 5.0,
    device: str | torch.device | None = None,
    max_batch: int = 32,
    torch_threads: int | None = 1,
) -> FastAPI:
    """The API app. `registry`/`redis` given here are used as-is and not closed on shutdown.

    `keys` renames the Redis keys read (tests use prefixed ones); `poll_interval_s` is
    the registry fallback poll of the best-model watcher; `max_batch` caps the requests
    answered by one batched search; `torch_threads` sets the inference thread's torch
    intra-op threads (None: torch's default).
    """
    state = ApiState(
        config,
        registry,
        redis,
        keys or RedisKeys.from_config(config),
        poll_interval_s,
        pick_device(device),
        max_batch,
        torch_threads,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(state.open)
        # What startup made (imported modules, mostly) stays for the life of the process:
        # freeze it out of the garbage collector's reach. Otherwise the first full collection
        # under load scans it all and stalls every request in flight (~170 ms, 8 clients on
        # 2 cores). A model swapped out later is still freed (by reference counting).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            try:
                await run_in_threadpool(state.close)
            finally:
                # For an app stopped inside a longer-lived process (tests); process-wide, so
                # it also unfreezes what another app froze: that costs only speed.
                gc.unfreeze()

    app = FastAPI(
        title="microzero API",
        version="0.1.0",
        description="Status of the microzero pipeline, its checkpoint registry, and greedy-search inference "
        "with the best validated checkpoint.",
        lifespan=lifespan,
        docs_url=None,  # served by routes/pages.py from installed files, not a CDN
        redoc_url=None,
    )
    app.state.api = state
    # Added first, so it runs inside MetricsMiddleware: refusals are counted too.
    app.add_middleware(BodySizeLimit, max_bytes=config.pipeline.api_max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    app.add_exception_handler(RequestValidationError, on_request_validation_error)
    app.add_exception_handler(ObservationError, on_observation_error)
    for module in (health, status, registry_routes, inference, sessions, pages):
        app.include_router(module.router)
    pages.mount_assets(app)
    return app


async def on_request_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_response(list(exc.errors()))


async def on_observation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ObservationError)
    return validation_response([{"loc": ("body", *exc.loc), "msg": exc.msg, "type": "value_error"}])


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            method = scope.get("method", "GET")
            method = method if method in _METHODS else "OTHER"
            API_REQUESTS.labels(method, route, str(status[0])).inc()
            API_LATENCY.labels(method, route).observe(time.perf_counter() - start)


def _loc(loc: tuple | list) -> str:
    """("body", "bars", 5, "high") -> "bars[5].high"."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
    detail = []
    for e in errors[:50]:
        loc, msg = list(e["loc"]), e["msg"]
        if e["type"] == "json_invalid":  # loc is ("body", character offset)
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            msg, loc = f"the body is not valid JSON{where}: {(e.get('ctx') or {}).get('error', msg)}", ["body"]
        elif e["type"] == "model_attributes_type" and loc == ["body"]:
            msg += " (send a JSON object with Content-Type: application/json)"
        detail.append({"loc": loc, "msg": msg, "type": e["type"]})
    message = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in detail[:10])
    if len(errors) > 10:
        message += f"; ... ({len(errors)} errors)"
    return JSONResponse(status_code=422, content={"message": message, "detail": detail})
