"""What ``/status`` and ``/readyz`` report, gathered off the request path.

A hung Redis (SIGSTOP) once held ``/status`` requests in FastAPI's shared threadpool
for 3 s per call until ``/v1/act`` waited 24 s for a thread. Now each source -- Redis
(trainer status, collector heartbeats, the validation queue) and the database
(checkpoint counts, latest, best) -- is read by its own daemon thread every
``pipeline.api_status_refresh_s``, Redis with ``pipeline.api_status_timeout_s`` socket
timeouts; requests only read the latest :class:`Snapshot`, never waiting on either.
One thread per source, so a slow database does not make Redis look stale.

A source whose last read failed reports why (with the age of the data still shown);
one not read successfully for :data:`STALE_AFTER` refresh intervals (a call stuck
past its timeout) reports "stale".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.api import schemas as S
from shared.config import Config
from shared.transport.jobs import validation_queue
from shared.transport.keys import RedisKeys
from shared.transport.status import read_heartbeats, read_supervisor_status, read_trainer_status

log = logging.getLogger(__name__)

STALE_AFTER = 3.0  # refresh intervals without a successful read before a source is "stale"


@dataclass(frozen=True)
class Snapshot:
    data: dict[str, Any] = field(default_factory=dict)  # StatusResponse fields from this source
    error: str | None = "not read yet"  # why the newest read failed; None: it succeeded
    refreshed_at: float | None = None  # time.time() of the newest successful read


class Refresher:
    """Calls `read()` every `interval_s` in a daemon thread and keeps the newest result."""

    def __init__(self, name: str, read: Callable[[], dict[str, Any]], interval_s: float) -> None:
        self.name, self.read, self.interval_s = name, read, interval_s
        self.snapshot = Snapshot()
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"api-status-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait_first(self, timeout: float) -> None:
        self._first.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def problem(self) -> str | None:
        """None when the data is fresh; else what is wrong with it."""
        snap = self.snapshot
        age = None if snap.refreshed_at is None else time.time() - snap.refreshed_at
        shown = "no data yet" if age is None else f"data from {age:.1f} s ago"
        if snap.error is not None:
            return f"unreachable: {snap.error} ({shown})"
        if age is not None and age > STALE_AFTER * self.interval_s:
            return f"stale: not refreshed for {age:.1f} s"
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.snapshot = Snapshot(self.read(), None, time.time())
            except Exception as exc:  # noqa: BLE001 -- reported by /status and /readyz
                error = f"{type(exc).__name__}: {exc}"
                if error != self.snapshot.error:
                    log.warning("status: cannot read %s: %s", self.name, error)
                self.snapshot = Snapshot(self.snapshot.data, error, self.snapshot.refreshed_at)
            self._first.set()
            self._stop.wait(self.interval_s)


def read_redis(client: Any, keys: RedisKeys, config: Config) -> dict[str, Any]:
    """Trainer status, live collectors and the validation queue (raises when Redis fails)."""
    if client is None:
        raise ConnectionError("not configured (set pipeline.redis_url or REDIS_URL)")
    queue = validation_queue(client, config)
    return {
        "trainer": read_trainer_status(client, keys),
        "collectors": [
            S.CollectorStatus(
                id=beat.id,
                episodes=beat.record.get("episodes"),
                model_version=beat.record.get("model_version"),
                env_steps_per_s=beat.record.get("env_steps_per_s"),
                ttl_s=beat.ttl_s,
            )
            for beat in read_heartbeats(client, keys)
        ],
        "validation_queue": S.QueueStatus(
            name=config.pipeline.validation_queue, depth=queue.count, failed=queue.failed_job_registry.count
        ),
        "services": (read_supervisor_status(client, keys) or {}).get("services"),
    }


def read_database(open_registry: Callable[[], Any], registry_error: Callable[[], str | None]) -> dict[str, Any]:
    """Checkpoint count, latest and best (raises when the database fails)."""
    registry = open_registry()
    if registry is None:
        raise ConnectionError(f"cannot open: {registry_error()}")
    if registry.ping() is False:
        raise ConnectionError("ping failed")
    return {
        "checkpoints_total": registry.count_checkpoints(),
        "latest_checkpoint": S.checkpoint_out(registry.latest_checkpoint()),
        "best_checkpoint": S.checkpoint_out(registry.best_checkpoint()),
    }
