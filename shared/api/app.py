"""The HTTP API (ARCHITECTURE §7): health, pipeline status, the registry, inference.

``create_app(config)`` returns a FastAPI app whose lifespan opens the SQL registry
and Redis, loads the best checkpoint, and starts two threads:

* the inference thread (:class:`shared.api.inference.InferenceEngine`), the only one
  that runs the model;
* the best-model watcher: subscribed to the ``mz:best`` channel (the validator
  publishes ``{checkpoint_id, path}`` there) and, as a fallback for missed messages or
  a Redis outage, polling ``registry.best_checkpoint()`` every ``poll_interval_s``.
  A new best is verified and loaded *before* the swap; a corrupt file is logged and
  the old model kept.

The API starts even when Redis or the database is unreachable; ``/readyz`` then says
which dependency is missing (503), and the watcher reconnects on its own.

Decisions (see also :mod:`shared.api.schemas` and :mod:`shared.api.inference`):
* Endpoints touching Redis or the registry are sync functions (FastAPI runs them in
  its threadpool); ``/v1/act`` is async: it builds the observation in the threadpool
  and awaits the inference thread's future, so waiting requests hold no thread.
* Non-finite numbers in outputs are sent as "inf"/"-inf" (NaN as null), the registry's convention.
* Every request is counted in ``microzero_api_requests_total{method,route,status}``
  by its route *template* (``/checkpoints/{checkpoint_id}``), never the raw path;
  unmatched paths count as ``<unmatched>``.
* Promotion copies the verified checkpoint bytes to ``best_dir/best.pt`` (with its
  ``.sha256`` sidecar, both atomically), records it with ``registry.set_best``,
  swaps the served model, and publishes on ``mz:best`` so other replicas follow.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from shared.api import schemas as S
from shared.api.inference import (
    InferenceEngine,
    ModelHolder,
    NoModelError,
    ObservationError,
    OverloadedError,
    ServedModel,
    act_names,
    bars_needed,
    default_device,
    load_served_model,
    observation_from_bars,
    observation_from_window,
)
from shared.config import Config
from shared.data.bars import Bars
from shared.learning.checkpoint import CheckpointError, write_checkpoint_bytes
from shared.observability import API_LATENCY, API_REQUESTS
from shared.pipeline.redis_conn import connect

log = logging.getLogger(__name__)

_REGISTRY_RETRY_S = 2.0
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class RedisKeys:
    """The Redis names the API reads; tests pass prefixed ones to share a server safely."""

    trainer_status: str = "mz:trainer:status"
    collector_prefix: str = "mz:collector:"
    collector_suffix: str = ":heartbeat"
    best_channel: str = "mz:best"

    @property
    def collector_pattern(self) -> str:
        return f"{self.collector_prefix}*{self.collector_suffix}"


# ----------------------------------------------------------------------------- state


class ApiState:
    """Everything the endpoints share; owned by the app's lifespan."""

    def __init__(
        self,
        config: Config,
        registry: Any,
        redis: Any,
        keys: RedisKeys,
        poll_interval_s: float,
        device: torch.device,
        max_batch: int,
        torch_threads: int | None,
    ) -> None:
        self.config, self.keys, self.poll_interval_s, self.device = config, keys, poll_interval_s, device
        self.registry, self.redis = registry, redis
        self._own_registry, self._own_redis = registry is None, redis is None
        self.registry_error: str | None = None
        self._registry_retry_at = 0.0
        self._registry_lock = threading.Lock()
        self.holder = ModelHolder()
        self.engine = InferenceEngine(self.holder, max_batch=max_batch, torch_threads=torch_threads)
        # Serialises "read the best, load, swap" (watcher) against promotion, so an
        # older best can never be swapped in after a newer one.
        self.load_lock = threading.RLock()
        self._failed: tuple | None = None  # the last (id, files) that failed to load, not retried until changed
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # ---- lifecycle
    def open(self) -> None:
        if self._own_redis:
            url = self.config.pipeline.redis_url or os.environ.get("REDIS_URL")
            if url:
                self.redis = connect(url, socket_timeout=3.0, connect_timeout=1.0)
            else:
                log.warning("no Redis configured (pipeline.redis_url / REDIS_URL); /readyz will report it")
        self.ensure_registry()
        try:
            self.refresh_best()
        except Exception:
            log.exception("could not load the best checkpoint at startup")
        self.engine.start()
        self._watcher = threading.Thread(target=self._watch, name="api-best-watcher", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5.0)
        self.engine.stop()
        if self._own_redis and self.redis is not None:
            self.redis.close()
        if self._own_registry and self.registry is not None:
            for name in ("close", "dispose"):
                if callable(getattr(self.registry, name, None)):
                    getattr(self.registry, name)()
                    break

    def ensure_registry(self) -> Any:
        """The registry, opening it if an earlier attempt failed (e.g. the DB was down).

        Attempts are at least ``_REGISTRY_RETRY_S`` apart, so a burst of requests during
        an outage does not hammer the database; a new kind of error is logged once.
        """
        if self.registry is None and self._own_registry and time.monotonic() >= self._registry_retry_at:
            with self._registry_lock:
                if self.registry is not None or time.monotonic() < self._registry_retry_at:
                    return self.registry
                try:
                    from shared.registry import Registry

                    self.registry = Registry(self.config.pipeline.database_url)
                    if self.registry_error is not None:
                        log.info("opened the registry %s", self.config.pipeline.database_url)
                    self.registry_error = None
                except Exception as exc:  # noqa: BLE001 -- reported by /readyz
                    self._registry_retry_at = time.monotonic() + _REGISTRY_RETRY_S
                    error = f"{type(exc).__name__}: {exc}"
                    if error != self.registry_error:
                        log.warning("cannot open the registry (retrying every %gs): %s", _REGISTRY_RETRY_S, error)
                    self.registry_error = error
        return self.registry

    # ---- best-model tracking
    def refresh_best(self) -> bool:
        """Load the registry's best checkpoint if it is not the one served. True if swapped."""
        registry = self.ensure_registry()
        if registry is None:
            return False
        with self.load_lock:
            record = registry.best_checkpoint()
            if record is None:
                return False
            return self._load_record(record)

    def on_best_message(self, data: bytes | str) -> bool:
        """Handle a ``mz:best`` message ``{checkpoint_id, path}``."""
        try:
            message = json.loads(data)
            checkpoint_id = int(message["checkpoint_id"])
            hint = message.get("path")
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring malformed %s message %r: %s", self.keys.best_channel, data[:200], exc)
            return False
        registry = self.ensure_registry()
        with self.load_lock:
            record = registry.get_checkpoint(checkpoint_id) if registry is not None else None
            if record is None:
                if not hint:
                    log.warning("best checkpoint %s is not in the registry", checkpoint_id)
                    return False
                return self._load_paths(checkpoint_id, [hint], None)
            return self._load_record(record, hint)

    def _load_record(self, record: Any, hint: str | None = None) -> bool:
        current = self.holder.current
        if current is not None and current.checkpoint_id == record.id:
            return False
        candidates = [hint, getattr(record, "best_path", None), record.path]
        return self._load_paths(record.id, candidates, getattr(record, "sha256", None))

    def _load_paths(self, checkpoint_id: int, candidates: list[str | None], sha256: str | None) -> bool:
        paths = list(dict.fromkeys(str(p) for p in candidates if p))
        key = (checkpoint_id, tuple(_file_key(p) for p in paths))
        if key == self._failed:
            return False  # already reported; retried when a file changes
        errors = []
        for path in paths:
            try:
                served = load_served_model(path, checkpoint_id, self.config, self.device, expected_sha256=sha256)
            except (CheckpointError, OSError) as exc:
                errors.append(str(exc))
                continue
            self.holder.swap(served)
            self._failed = None
            return True
        self._failed = key
        log.error(
            "cannot load best checkpoint %s; keeping %s: %s",
            checkpoint_id, _describe(self.holder.current), " | ".join(errors) or "no file recorded",
        )
        return False

    def _watch(self) -> None:
        pubsub = None
        next_poll = time.monotonic() + self.poll_interval_s
        while not self._stop.is_set():
            wait = max(0.05, min(1.0, next_poll - time.monotonic()))
            if pubsub is None and self.redis is not None:
                try:
                    pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.keys.best_channel)
                except Exception as exc:  # noqa: BLE001 -- Redis down: poll only, retry later
                    log.debug("cannot subscribe to %s: %s", self.keys.best_channel, exc)
                    _close_quietly(pubsub)
                    pubsub = None
            if pubsub is not None:
                try:
                    message = pubsub.get_message(timeout=wait)
                except Exception as exc:  # noqa: BLE001 -- reconnect on the next turn
                    log.warning("lost the %s subscription: %s", self.keys.best_channel, exc)
                    _close_quietly(pubsub)
                    pubsub = None
                    message = None
                    self._stop.wait(wait)
                if message and message.get("type") == "message":
                    try:
                        self.on_best_message(message["data"])
                    except Exception as exc:  # noqa: BLE001 -- e.g. the DB is down; the poll retries
                        log.warning("could not act on a %s message: %s", self.keys.best_channel, exc)
            else:
                self._stop.wait(wait)
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.poll_interval_s
                try:
                    self.refresh_best()
                except Exception as exc:  # noqa: BLE001 -- DB down: keep serving, retry
                    log.warning("polling the registry's best checkpoint failed: %s", exc)
        _close_quietly(pubsub)

    # ---- registry access for endpoints
    def require_registry(self) -> Any:
        registry = self.ensure_registry()
        if registry is None:
            raise HTTPException(503, f"the registry is unavailable: {self.registry_error}")
        return registry


def _file_key(path: str) -> tuple:
    try:
        st = os.stat(path)
        return (path, st.st_mtime_ns, st.st_size)
    except OSError:
        return (path, None, None)


def _describe(served: ServedModel | None) -> str:
    return "no model" if served is None else f"checkpoint {served.checkpoint_id} (step {served.step})"


def _close_quietly(pubsub: Any) -> None:
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception as exc:  # noqa: BLE001 -- closing a dead connection
            log.debug("closing the pubsub connection: %s", exc)


def _registry_call(fn, *args, **kwargs):
    """Call the registry; a database failure is a 503 saying so, not a 500."""
    try:
        return fn(*args, **kwargs)
    except HTTPException:
        raise
    except Exception as exc:
        log.warning("registry call %s failed: %s", getattr(fn, "__name__", fn), exc)
        raise HTTPException(503, f"the registry is unavailable: {type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- record views


def _record_dict(record: Any) -> dict[str, Any]:
    if is_dataclass(record):
        data = asdict(record)
    elif isinstance(record, dict):
        data = dict(record)
    else:
        data = dict(vars(record))
    for key, value in data.items():
        if isinstance(value, Path):
            data[key] = str(value)
    return S.json_safe(data)


def checkpoint_out(record: Any) -> S.CheckpointOut | None:
    return None if record is None else S.CheckpointOut.model_validate(_record_dict(record))


def validation_out(record: Any) -> S.ValidationOut:
    return S.ValidationOut.model_validate(_record_dict(record))


def served_out(served: ServedModel | None) -> S.ServedModel | None:
    if served is None:
        return None
    return S.ServedModel(
        checkpoint_id=served.checkpoint_id, step=served.step, path=str(served.path), sha256=served.sha256,
        device=str(served.device), loaded_at=served.loaded_at,
    )




# ----------------------------------------------------------------------------- metrics middleware


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


# ----------------------------------------------------------------------------- the app


def _loc(loc: tuple | list) -> str:
    """("body", "bars", 5, "high") -> "bars[5].high"."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
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
        config, registry, redis, keys or RedisKeys(), poll_interval_s,
        torch.device(device) if device is not None else default_device(), max_batch, torch_threads,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(state.open)
        try:
            yield
        finally:
            await run_in_threadpool(state.close)

    app = FastAPI(
        title="microzero API",
        version="0.1.0",
        description="Status of the microzero pipeline, its checkpoint registry, and greedy-search inference "
        "with the best validated checkpoint.",
        lifespan=lifespan,
    )
    app.state.api = state
    app.add_middleware(MetricsMiddleware)

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(list(exc.errors()))

    @app.exception_handler(ObservationError)
    async def _on_observation_error(request: Request, exc: ObservationError) -> JSONResponse:
        return _validation_response([{"loc": exc.loc, "msg": exc.msg, "type": "value_error"}])

    # ---- health
    @app.get("/livez", tags=["health"], summary="The process is running")
    def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz", tags=["health"], response_model=S.ReadyResponse,
        summary="200 when a model is loaded and Redis and the database answer; else 503",
        responses={503: {"model": S.ReadyResponse}},
    )
    def readyz() -> JSONResponse:
        checks: dict[str, S.Check] = {}
        served = state.holder.current
        checks["model"] = S.Check(ok=served is not None, detail=_describe(served))
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

    # ---- status
    @app.get("/status", tags=["pipeline"], response_model=S.StatusResponse, summary="Where the pipeline stands")
    def status() -> S.StatusResponse:
        errors: dict[str, str] = {}
        out: dict[str, Any] = {
            "validation_queue": S.QueueStatus(name=config.pipeline.validation_queue),
            "served_model": served_out(state.holder.current),
        }
        r = state.redis
        if r is None:
            errors["redis"] = "not configured"
        else:
            try:
                out["trainer"], out["collectors"] = _read_redis_status(r, state.keys)
            except Exception as exc:  # noqa: BLE001
                errors["redis"] = f"{type(exc).__name__}: {exc}"
            try:
                from rq import Queue

                q = Queue(config.pipeline.validation_queue, connection=r)
                out["validation_queue"] = S.QueueStatus(
                    name=config.pipeline.validation_queue, depth=q.count, failed=q.failed_job_registry.count
                )
            except Exception as exc:  # noqa: BLE001
                errors["validation_queue"] = f"{type(exc).__name__}: {exc}"
        reg = state.ensure_registry()
        if reg is None:
            errors["database"] = f"cannot open: {state.registry_error}"
        else:
            try:
                out["checkpoints_total"] = reg.count_checkpoints()
                out["latest_checkpoint"] = checkpoint_out(reg.latest_checkpoint())
                out["best_checkpoint"] = checkpoint_out(reg.best_checkpoint())
            except Exception as exc:  # noqa: BLE001
                errors["database"] = f"{type(exc).__name__}: {exc}"
        return S.StatusResponse(errors=errors, **out)

    # ---- registry
    @app.get("/checkpoints", tags=["registry"], response_model=S.CheckpointPage, summary="Checkpoints, newest first")
    def list_checkpoints(
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=10**9),
        run_id: str | None = Query(None, max_length=200),
    ) -> S.CheckpointPage:
        reg = state.require_registry()
        records = _registry_call(reg.list_checkpoints, run_id=run_id, limit=limit, offset=offset)
        total = _registry_call(reg.count_checkpoints)
        return S.CheckpointPage(limit=limit, offset=offset, total=total, items=[checkpoint_out(r) for r in records])

    @app.get(
        "/checkpoints/{checkpoint_id}", tags=["registry"], response_model=S.CheckpointOut,
        responses={404: {"description": "unknown checkpoint"}},
    )
    def get_checkpoint(checkpoint_id: int = PathParam(ge=0, le=2**62)) -> S.CheckpointOut:
        reg = state.require_registry()
        record = _registry_call(reg.get_checkpoint, checkpoint_id)
        if record is None:
            raise HTTPException(404, f"checkpoint {checkpoint_id} is not in the registry")
        return checkpoint_out(record)

    @app.get("/validations", tags=["registry"], response_model=S.ValidationPage, summary="Validations, newest first")
    def list_validations(
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=10**9),
        checkpoint_id: int | None = Query(None, ge=0, le=2**62),
    ) -> S.ValidationPage:
        reg = state.require_registry()
        records = _registry_call(reg.list_validations, limit=limit, offset=offset, checkpoint_id=checkpoint_id)
        return S.ValidationPage(
            limit=limit, offset=offset, checkpoint_id=checkpoint_id, items=[validation_out(r) for r in records]
        )

    @app.post(
        "/checkpoints/{checkpoint_id}/promote", tags=["registry"], response_model=S.PromoteResponse,
        summary="Make a checkpoint the best one and serve it (Authorization: Bearer <pipeline.api_token>)",
        responses={
            401: {"description": "missing or wrong bearer token"},
            403: {"description": "promotion disabled (no pipeline.api_token configured)"},
            404: {"description": "unknown checkpoint"},
            409: {"description": "the checkpoint file fails verification"},
        },
    )
    def promote(
        checkpoint_id: int = PathParam(ge=0, le=2**62),
        authorization: str | None = Header(None, max_length=4096),
    ) -> S.PromoteResponse:
        token = config.pipeline.api_token
        if not token:
            raise HTTPException(403, "promotion disabled: no pipeline.api_token is configured")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        reg = state.require_registry()
        with state.load_lock:
            record = _registry_call(reg.get_checkpoint, checkpoint_id)
            if record is None:
                raise HTTPException(404, f"checkpoint {checkpoint_id} is not in the registry")
            try:
                served = load_served_model(
                    record.path, record.id, config, state.device, expected_sha256=getattr(record, "sha256", None)
                )
                data = Path(record.path).read_bytes()
                if hashlib.sha256(data).hexdigest() != served.sha256:
                    raise CheckpointError(f"checkpoint {record.path} changed while being promoted")
            except (CheckpointError, OSError) as exc:
                raise HTTPException(409, f"checkpoint {checkpoint_id} fails verification: {exc}") from exc
            best_path = Path(config.pipeline.best_dir) / "best.pt"
            write_checkpoint_bytes(best_path, data, served.sha256)
            _registry_call(reg.set_best, record.id, str(best_path))
            state.holder.swap(served)
            state._failed = None
        if state.redis is not None:
            try:
                state.redis.publish(
                    state.keys.best_channel, json.dumps({"checkpoint_id": record.id, "path": str(best_path)})
                )
            except Exception as exc:  # noqa: BLE001 -- other replicas will poll the registry
                log.warning("could not publish the promotion on %s: %s", state.keys.best_channel, exc)
        log.info("promoted checkpoint %s (step %d) to %s", record.id, served.step, best_path)
        return S.PromoteResponse(
            checkpoint_id=record.id, step=served.step, best_path=str(best_path), sha256=served.sha256, served=True
        )

    # ---- inference
    @app.post(
        "/v1/act", tags=["inference"], response_model=S.ActResponse,
        summary="The best checkpoint's greedy-search action for a market state",
        responses={
            422: {"description": "malformed input; `message` says what and where"},
            503: {"description": "no model is loaded yet, or too many requests are waiting"},
        },
    )
    async def act(request: S.ActRequest) -> S.ActResponse:
        if state.holder.current is None:
            raise HTTPException(503, "no model is loaded yet: the registry has no loadable best checkpoint")
        observation = await run_in_threadpool(_observation, request, config)
        try:
            result = await asyncio.wrap_future(state.engine.submit(observation))
        except OverloadedError as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from exc
        except NoModelError as exc:
            raise HTTPException(503, f"no model is loaded yet: {exc}") from exc
        policy = {name: float(result.policy[i]) for i, name in enumerate(S.ACTION_NAMES)}
        return S.ActResponse(
            action=S.ACTION_NAMES[result.action],
            action_index=result.action,
            policy=policy,
            value_pips=S.json_float(result.value),
            legal_actions=act_names(result.legal),
            checkpoint_id=result.checkpoint_id,
            model_step=result.step,
        )

    # ---- metrics
    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _observation(request: S.ActRequest, config: Config):
    position = request.position
    if request.window is not None:
        return observation_from_window(request.window, config, side=None if position is None else position.side)
    bars = request.bars
    assert bars is not None
    need = bars_needed(config)
    if len(bars) < need:  # checked here too so the message is the same as the replay's
        raise ObservationError(("body", "bars"), f"{len(bars)} bars sent; at least {need} are needed "
                               f"({need - config.env.window} warm-up bars for the features + a "
                               f"{config.env.window}-bar window)")
    ts = np.array([(b.ts - _EPOCH) // _MICROSECOND for b in bars], dtype="datetime64[us]").astype("datetime64[ns]")
    frame = Bars.from_arrays(
        ts,
        [b.open for b in bars], [b.high for b in bars], [b.low for b in bars], [b.close for b in bars],
        [b.volume or 0.0 for b in bars],
    )
    symbol = (request.symbol or config.pipeline.symbol).upper()
    side, held = (position.side, position.bars_held) if position is not None else (0, 0)
    return observation_from_bars(frame, side, held, symbol, config)


def _read_redis_status(r: Any, keys: RedisKeys) -> tuple[dict[str, Any] | None, list[S.CollectorStatus]]:
    raw = r.get(keys.trainer_status)
    trainer = None
    if raw is not None:
        try:
            trainer = json.loads(raw)
        except ValueError:
            trainer = {"error": "mz:trainer:status is not JSON"}
        if not isinstance(trainer, dict):
            trainer = {"value": trainer}
        trainer = S.json_safe(trainer)
    names = sorted({k.decode() if isinstance(k, bytes) else k for k in r.scan_iter(match=keys.collector_pattern, count=500)})
    collectors: list[S.CollectorStatus] = []
    if names:
        pipe = r.pipeline(transaction=False)
        for name in names:
            pipe.get(name)
            pipe.ttl(name)
        replies = pipe.execute()
        for name, raw_beat, ttl in zip(names, replies[0::2], replies[1::2]):
            if raw_beat is None:  # expired between SCAN and GET
                continue
            try:
                beat = json.loads(raw_beat)
            except ValueError:
                beat = {}
            beat = S.json_safe(beat) if isinstance(beat, dict) else {}
            cid = name[len(keys.collector_prefix) : len(name) - len(keys.collector_suffix)]
            collectors.append(
                S.CollectorStatus(
                    id=cid, episodes=beat.get("episodes"), model_version=beat.get("model_version"),
                    env_steps_per_s=beat.get("env_steps_per_s"), ttl_s=ttl if isinstance(ttl, int) and ttl >= 0 else None,
                )
            )
    return trainer, collectors
