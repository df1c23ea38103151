"""The API's dependencies: the shared state (registry, Redis, the served model and its
watcher), and the FastAPI dependency functions the routes declare.

:class:`ApiState` is created by ``create_app`` and opened/closed by its lifespan; it
starts two threads:

* the inference thread (:class:`services.api.inference.InferenceEngine`), the only one
  that runs the model;
* the best-model watcher: subscribed to the best channel (``RedisKeys.best_channel``;
  the validator and other API replicas publish there) and, as a fallback for missed
  messages or a Redis outage, polling ``registry.best_checkpoint()`` every
  ``poll_interval_s``. A new best is verified and loaded *before* the swap; a corrupt
  file, or one the registry does not vouch for (``shared.serving.trust``), is logged and the old
  model kept.

The API starts even when Redis or the database is unreachable; ``/readyz`` then says
which dependency is missing (503), and the watcher reconnects on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import torch
from fastapi import Depends, Header, HTTPException, Request

from services.api.inference import InferenceEngine, ModelHolder
from services.api.status_cache import Refresher, read_database, read_redis
from shared.checkpoint_store import Promotion, promote
from shared.config import Config
from shared.learning.checkpoint import CheckpointError
from shared.registry import CheckpointRecord, Registry
from shared.serving.model import ServedModel, load_served_model
from shared.serving.trust import checkpoint_roots, confined, trusted_files
from shared.transport.connection import connect, resolve_redis_url
from shared.transport.keys import RedisKeys

log = logging.getLogger(__name__)

_REGISTRY_RETRY_S = 2.0


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
        self.engine = InferenceEngine(
            self.holder, max_batch=max_batch, torch_threads=torch_threads, gather_s=config.pipeline.api_gather_s
        )
        # Serialises "read the best, load, swap" (watcher) against promotion, so an
        # older best can never be swapped in after a newer one.
        self.load_lock = threading.RLock()
        self._failed: tuple | None = None  # the last (id, files) that failed to load, not retried until changed
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # Observations are built on threads of their own, so /v1/act never queues behind
        # requests that wait on the registry in FastAPI's shared threadpool.
        self.observation_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="api-observation")
        self.status_redis: Any = None  # the status refresher's client: short timeouts
        self.status_sources: dict[str, Refresher] = {}

    # ---- lifecycle
    def open(self) -> None:
        if self._own_redis:
            url = resolve_redis_url(self.config.pipeline.redis_url)
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
        self._start_status()

    def _start_status(self) -> None:
        pipe = self.config.pipeline
        url = resolve_redis_url(pipe.redis_url) if self._own_redis else None
        self.status_redis = (
            connect(url, socket_timeout=pipe.api_status_timeout_s, connect_timeout=pipe.api_status_timeout_s)
            if url
            else self.redis
        )
        self.status_sources = {
            "redis": Refresher(
                "redis", lambda: read_redis(self.status_redis, self.keys, self.config), pipe.api_status_refresh_s
            ),
            "database": Refresher(
                "database",
                lambda: read_database(self.ensure_registry, lambda: self.registry_error),
                pipe.api_status_refresh_s,
            ),
        }
        for source in self.status_sources.values():
            source.start()
        # Serve the first answers from real data when the dependencies respond quickly.
        for source in self.status_sources.values():
            source.wait_first(2 * pipe.api_status_timeout_s + 1.0)

    def close(self) -> None:
        self._stop.set()
        for source in self.status_sources.values():
            source.stop()
        if self._watcher is not None:
            self._watcher.join(5.0)
        self.engine.stop()
        self.observation_pool.shutdown(wait=False, cancel_futures=True)
        if self._own_redis and self.status_redis is not None:
            self.status_redis.close()
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
        """Handle a best-channel message ``{checkpoint_id, path}``.

        Anyone who can write to Redis can publish here, so the message is only a hint
        that the best changed: the registry says which checkpoint is the best *now* (a
        message can also arrive after a later promotion) and only its registered files
        are loaded (:mod:`shared.serving.trust`). An announcement the registry does not
        back is logged as refused; without a registry nothing is loaded.
        """
        try:
            message = json.loads(data)
            checkpoint_id = int(message["checkpoint_id"])
            hint = message.get("path")
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring malformed %s message %r: %s", self.keys.best_channel, data[:200], exc)
            return False
        registry = self.ensure_registry()
        if registry is None:
            log.warning(
                "refusing best checkpoint %s (%s) announced on %s: the registry is unavailable and only "
                "checkpoints it records are loaded; its poll will retry",
                checkpoint_id,
                hint,
                self.keys.best_channel,
            )
            return False
        announced = registry.get_checkpoint(checkpoint_id)
        if announced is None:
            log.warning("refusing best checkpoint %s (%s): not in the registry", checkpoint_id, hint)
        elif hint and str(hint) not in (announced.path, announced.best_path):
            log.warning(
                "refusing the path %s announced for checkpoint %s: the registry records %s",
                hint,
                checkpoint_id,
                announced.best_path or announced.path,
            )
        return self.refresh_best()

    def promote(self, record: CheckpointRecord) -> tuple[ServedModel, Promotion]:
        """Make `record` the best through the one promotion path
        (``shared.checkpoint_store.promote``) and serve it.

        The model is loaded and checked against the verified bytes under the store's
        lock, before anything is written; ``load_lock`` is held throughout, so the
        watcher cannot swap another model in between the promotion and the swap.
        Raises CheckpointError / PromotionError / OSError when the file fails.
        """
        loaded: list[ServedModel] = []
        if confined(record.path, checkpoint_roots(self.config)) is None:
            raise CheckpointError(f"checkpoint {record.path} lies outside the checkpoint folders: not served")

        def load(data: bytes) -> None:
            served = load_served_model(record.path, record.id, self.config, self.device, expected_sha256=record.sha256)
            if hashlib.sha256(data).hexdigest() != served.sha256:
                raise CheckpointError(f"checkpoint {record.path} changed while being promoted")
            loaded.append(served)

        registry = self.require_registry()
        with self.load_lock:
            promotion = promote(registry, self.config, record, redis=self.redis, keys=self.keys, before_commit=load)
            self.holder.swap(loaded[0])
            self._failed = None
        return loaded[0], promotion

    def _load_record(self, record: Any) -> bool:
        current = self.holder.current
        if current is not None and current.checkpoint_id == record.id:
            return False
        paths, refused = trusted_files(record, self.config)
        return self._load_paths(record.id, paths, record.sha256, refused)

    def _load_paths(self, checkpoint_id: int, paths: list[str], sha256: str, refused: list[str]) -> bool:
        key = (checkpoint_id, tuple(_file_key(p) for p in paths), tuple(refused))
        if key == self._failed:
            return False  # already reported; retried when a file changes
        errors = list(refused)
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
            "refusing best checkpoint %s; keeping %s: %s",
            checkpoint_id,
            describe_served(self.holder.current),
            " | ".join(errors) or "no file recorded",
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


def describe_served(served: ServedModel | None) -> str:
    return "no model" if served is None else f"checkpoint {served.checkpoint_id} (step {served.step})"


def _close_quietly(pubsub: Any) -> None:
    if pubsub is not None:
        try:
            pubsub.close()
        except Exception as exc:  # noqa: BLE001 -- closing a dead connection
            log.debug("closing the pubsub connection: %s", exc)


def registry_call(fn, *args, **kwargs):
    """Call the registry; a database failure is a 503 saying so, not a 500."""
    try:
        return fn(*args, **kwargs)
    except HTTPException:
        raise
    except Exception as exc:
        log.warning("registry call %s failed: %s", getattr(fn, "__name__", fn), exc)
        raise HTTPException(503, f"the registry is unavailable: {type(exc).__name__}: {exc}") from exc


# ----------------------------------------------------------------------------- dependencies


# async: FastAPI runs a sync dependency in its shared threadpool, so /v1/act, /status and
# the health checks would otherwise still queue for a thread behind slow registry calls.
async def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(get_state)]


async def get_config(state: State) -> Config:
    return state.config


def get_registry(state: State) -> Any:
    """The registry, or a 503 saying why it is unavailable."""
    return state.require_registry()


async def get_redis(state: State) -> Any:
    """The Redis client, or None when none is configured or it could not be opened."""
    return state.redis


async def require_token(state: State, authorization: Annotated[str | None, Header(max_length=4096)] = None) -> None:
    """Bearer-token auth of the write endpoints: 403 when no ``pipeline.api_token`` is
    configured (writes disabled), 401 for a missing or wrong token."""
    token = state.config.pipeline.api_token
    if not token:
        raise HTTPException(403, "promotion disabled: no pipeline.api_token is configured")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


ConfigDep = Annotated[Config, Depends(get_config)]
RegistryDep = Annotated[Any, Depends(get_registry)]
RedisDep = Annotated[Any, Depends(get_redis)]
