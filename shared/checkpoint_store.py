"""The best checkpoint on disk and in the registry: the ONE promotion path.

Both the validator (a checkpoint whose score beats the best) and the API
(``POST /checkpoints/{id}/promote``) make a checkpoint the best through
:func:`promote`, so they cannot race each other into disagreement. Under an exclusive
lock on ``best_dir/.best.lock`` (every process sharing ``best_dir`` takes turns):

1. when a `score` is given, decide: strictly greater than the incumbent's newest 'ok'
   validation wins (ties keep the incumbent; ``-inf`` -- no trades -- never wins);
   without a score the promotion is unconditional (a person asked for it);
2. read the checkpoint's bytes and check them against the sha256 the registry recorded;
3. write ``best_dir/history/<run>-<step>.pt`` and ``best_dir/best.pt``, each with its
   ``.sha256`` sidecar, atomically (temp file + ``os.replace``), and prune the history
   to ``pipeline.best_history`` copies;
4. ``registry.set_best(id, best.pt)``.

After the lock is released the new best is PUBLISHed as ``{"checkpoint_id", "path"}``
on ``RedisKeys.best_channel`` (best effort: the API also polls the registry).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import Config
from shared.learning.checkpoint import write_checkpoint_bytes
from shared.observability import BEST_SCORE
from shared.registry import CheckpointRecord, Registry
from shared.transport.keys import RedisKeys

log = logging.getLogger(__name__)

BEST_FILE = "best.pt"
HISTORY_DIR = "history"
LOCK_FILE = ".best.lock"


class PromotionError(ValueError):
    """The checkpoint cannot be promoted: its file is missing or is not the registered one."""

    def __init__(self, checkpoint_id: int, reason: str) -> None:
        super().__init__(reason)
        self.checkpoint_id, self.reason = checkpoint_id, reason


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` did: `is_best` -- the checkpoint is the best now; `promoted`
    -- this call made it so (False when it already was, or lost to the incumbent)."""

    checkpoint_id: int
    is_best: bool
    promoted: bool
    best_path: Path
    sha256: str | None
    incumbent_score: float


def best_path(config: Config) -> Path:
    """Where the best checkpoint's copy lives: ``pipeline.best_dir/best.pt``."""
    return Path(config.pipeline.best_dir) / BEST_FILE


@contextmanager
def best_lock(config: Config) -> Iterator[None]:
    """The best folder's exclusive lock, which :func:`promote` holds; retention
    (``shared.retention``) holds it too, so it never deletes a file being promoted."""
    with _locked(Path(config.pipeline.best_dir).resolve() / LOCK_FILE):
        yield


def best_score(registry: Registry) -> tuple[CheckpointRecord | None, float]:
    """The flagged best checkpoint and the score of its newest 'ok' validation
    (``-inf`` if there is no best, or it was never validated successfully, e.g. promoted
    by hand before validation)."""
    best = registry.best_checkpoint()
    if best is None:
        return None, -math.inf
    for validation in registry.list_validations(limit=1000, checkpoint_id=best.id):
        if validation.status == "ok" and validation.score is not None:
            return best, float(validation.score)
    return best, -math.inf


def promote(
    registry: Registry,
    config: Config,
    record: CheckpointRecord,
    *,
    score: float | None = None,
    redis: Any = None,
    keys: RedisKeys | None = None,
    before_commit: Callable[[bytes], None] | None = None,
) -> Promotion:
    """Make `record` the best checkpoint (see the module doc).

    `score`: the validator's -- promote only if it beats the incumbent; None: always.
    `redis`: a client to publish the new best with (None: not published).
    `before_commit(data)`: called under the lock with the verified bytes, before anything
    is written; raising aborts the promotion (the API loads the model here).
    Raises :class:`PromotionError` when the file is missing or not the registered one.
    """
    best_dir = Path(config.pipeline.best_dir).resolve()
    target = best_dir / BEST_FILE
    with _locked(best_dir / LOCK_FILE):
        best, incumbent = best_score(registry)
        if score is not None:
            if best is not None and best.id == record.id:
                if math.isfinite(score):
                    BEST_SCORE.set(score)
                return Promotion(record.id, True, False, target, record.sha256, incumbent)
            if not (score > incumbent):
                if math.isfinite(incumbent):
                    BEST_SCORE.set(incumbent)
                return Promotion(record.id, False, False, target, record.sha256, incumbent)
        try:
            data = Path(record.path).read_bytes()
        except OSError as exc:
            raise PromotionError(record.id, f"checkpoint {record.path}: {exc.strerror or exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != record.sha256:
            raise PromotionError(
                record.id,
                f"checkpoint {record.path}: sha256 {digest[:16]}... is not the {record.sha256[:16]}... recorded in "
                "the registry (the file changed after it was registered)",
            )
        if before_commit is not None:
            before_commit(data)
        history = best_dir / HISTORY_DIR
        history_path = history / f"{_safe_name(record.run_id)}-{record.step:09d}.pt"
        write_checkpoint_bytes(history_path, data, digest)
        _prune_history(history, config.pipeline.best_history, keep=history_path)
        write_checkpoint_bytes(target, data, digest)
        registry.set_best(record.id, str(target))
        if score is not None and math.isfinite(score):
            BEST_SCORE.set(score)
    log.info(
        "checkpoint %d (run %s step %d) is the new best%s",
        record.id,
        record.run_id,
        record.step,
        "" if score is None else f": score {score:.4f} > {incumbent:.4f}",
    )
    if redis is not None:
        publish_best(redis, keys or RedisKeys.from_config(config), record.id, str(target))
    return Promotion(record.id, True, True, target, digest, incumbent)


def publish_best(client: Any, keys: RedisKeys, checkpoint_id: int, path: str) -> bool:
    """PUBLISH ``{"checkpoint_id", "path"}`` on ``keys.best_channel``. Best effort:
    False (logged) on failure; the API also polls the registry."""
    try:
        client.publish(keys.best_channel, json.dumps({"checkpoint_id": int(checkpoint_id), "path": path}))
        return True
    except Exception as exc:  # noqa: BLE001 -- the best is recorded; publishing is a courtesy
        log.warning("cannot publish the new best on %s: %s", keys.best_channel, exc)
        return False


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "run"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on `path` (one open file description per call, so it also
    serialises threads of one process)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _prune_history(history: Path, keep_count: int, keep: Path) -> None:
    """Delete the oldest history copies (and sidecars) beyond `keep_count`; never `keep`."""
    copies = sorted(history.glob("*.pt"), key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
    kept = [keep] + [p for p in copies if p != keep][: max(0, keep_count - 1)]
    for path in copies:
        if path not in kept:
            path.unlink(missing_ok=True)
            Path(f"{path}.sha256").unlink(missing_ok=True)
