"""The trainer service's loop: episode stream -> replay buffer -> learner -> checkpoints
(ARCHITECTURE §7). The multi-process sibling of ``shared.training.train``: the stream
ingest is :mod:`services.trainer.ingest`; the learner, the replay buffer, the
samples-per-insert ratio and the checkpoint files are the library's (``shared.learning``),
the same ones ``microzero train`` uses.

Each iteration does one *Redis round* and one *learning chunk*:

* Redis round: ack what was inserted earlier, announce new checkpoints, then gather
  entries -- this consumer's own unacked entries after a (re)connection (a reply lost
  in an outage), stale entries of dead consumers (XAUTOCLAIM, idle >=
  ``pipeline.claim_idle_ms``), and new ones (XREADGROUP) while the samples-per-insert
  ratio lets inserts run ahead. Each entry is decoded, skipped if its episode id was
  already inserted (at-least-once delivery made exactly-once), inserted, and only then
  acked. Entries the codec or the replay buffer refuses are dead-lettered and acked.
* Learning chunk: as many learner steps as the ratio allows (at most ~1 s, so Redis
  is served regularly); every ``train.checkpoint_every`` steps an atomic checkpoint in
  ``pipeline.checkpoints_dir/<run_id>`` named ``ckpt-<step>-<lineage>.pt`` (a token
  per trainer process: names never collide across resumes), then
  ``on_checkpoint(step, path, sha256)`` (by default: record it in the SQL registry under
  this trainer's lineage and enqueue its validation), then the weights are published
  (version = step) -- only once registered -- and retention bounds the folder.

A Redis outage only pauses the Redis rounds (exponential backoff with jitter, counted
in ``REDIS_RECONNECTS{trainer}``); learning continues on what the buffer holds, and
announcements wait in a queue. A vanished consumer group is recreated (see
``EpisodeStream``). After a restart -- even SIGKILL, since checkpoints are atomic -- the
trainer resumes from the newest verified checkpoint in its folder; the replay buffer
is refilled from the stream.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import torch

from services.trainer.ingest import IngestStats, StreamIngest
from shared.config import Config
from shared.device import pick_device
from shared.learning import Learner, ReplayBuffer, SamplesPerInsert
from shared.learning.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
)
from shared.lineage import Lineage
from shared.market import MarketData, open_market
from shared.model.networks import StochasticMuZeroNet
from shared.observability import (
    CHECKPOINTS_SAVED,
    LEARNER_STEPS,
    LEARNING_RATE,
    LOSS,
    REPLAY_POSITIONS,
    STREAM_LAG,
)
from shared.registry import Registry
from shared.retention import prune_checkpoints
from shared.transport.connection import (
    REDIS_DOWN_ERRORS,
    Outage,
    call_with_retry,
)
from shared.transport.jobs import enqueue_validation
from shared.transport.keys import RedisKeys
from shared.transport.status import write_trainer_status
from shared.transport.streams import (
    EpisodeStream,
    publish_model,
    read_model,
)

log = logging.getLogger(__name__)

CheckpointHook = Callable[[int, Path, str], "int | None"]
DEFAULT_HOOK = object()  # sentinel: use the registry + RQ when available

READ_COUNT = 64  # entries per XREADGROUP
BLOCK_MS = 500  # XREADGROUP block when there is nothing to learn
LEARN_CHUNK_S = 1.0
STATUS_EVERY_S = 2.0
CLAIM_EVERY_S = 5.0
HOOK_RETRY_S = 5.0  # between registration attempts while the registry is unreachable


@dataclass
class TrainerStats(IngestStats):
    steps: int = 0
    resumed_from: int | None = None  # step of the checkpoint restored at start
    checkpoints: list[tuple[int, str, str]] = field(default_factory=list)  # (step, path, sha256) saved here
    published: list[int] = field(default_factory=list)  # versions published
    last_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _Announcement:
    step: int
    path: Path
    sha256: str
    checkpoint_id: int | None = None
    hooked: bool = False
    dropped: bool = False  # refused by the registry: never published


class RegistryHook:
    """The default checkpoint hook: record each checkpoint in the SQL registry under this
    trainer's lineage (``shared.lineage``), enqueue its validation (RQ), and apply
    retention (``shared.retention``) to the folder.

    Safe to call again for the same checkpoint after a Redis failure: the registry row
    is written once, only the enqueue repeats.
    """

    def __init__(
        self,
        config: Config,
        client: redis.Redis,
        registry: Registry,
        enqueue: Callable[[redis.Redis, Config, int], object],
        lineage: str,
    ) -> None:
        self.config, self.client, self.registry, self.enqueue, self.token = config, client, registry, enqueue, lineage
        pipe = config.pipeline
        self.lineage = Lineage(registry, pipe.run_id, pipe.symbol, config.model_dump(mode="json"), lineage)
        self.ids: dict[tuple[str, str], int] = {}

    def __call__(self, step: int, path: Path, sha256: str) -> int:
        key = (str(path), sha256)
        if key not in self.ids:
            self.ids[key] = self.lineage.register(step, path, sha256)
        self.enqueue(self.client, self.config, self.ids[key])
        return self.ids[key]

    def prune(self, directory: Path) -> list[Path]:
        return prune_checkpoints(self.registry, self.config, directory)


def default_checkpoint_hook(
    config: Config,
    client: redis.Redis,
    registry: Registry | None = None,
    enqueue: Callable[[redis.Redis, Config, int], object] = enqueue_validation,
    lineage: str | None = None,
) -> RegistryHook | None:
    """A :class:`RegistryHook` over `registry` (default: opened from
    ``pipeline.database_url``); None (with a log line) when it cannot be opened.
    `lineage`: the trainer's token for forked runs (default: a new one)."""
    if registry is None:
        try:
            registry = Registry(config.pipeline.database_url)
        except Exception:
            log.exception(
                "cannot open the registry %s: checkpoints will not be registered or validated",
                config.pipeline.database_url,
            )
            return None
    return RegistryHook(config, client, registry, enqueue, lineage or new_lineage())


def new_lineage() -> str:
    """A short token naming one trainer process's checkpoints (``ckpt-<step>-<token>.pt``)."""
    return uuid.uuid4().hex[:8]


class Trainer:
    def __init__(
        self,
        config: Config,
        stop_event: threading.Event,
        *,
        client: redis.Redis,
        max_steps: int | None = None,
        device: str | torch.device | None = None,
        market: MarketData | None = None,
        on_checkpoint: CheckpointHook | None | object = DEFAULT_HOOK,
        consumer: str | None = None,
        keys: RedisKeys | None = None,
        seed: int | None = None,
        record_ids: bool = False,
    ) -> None:
        pipe = config.pipeline
        self.config, self.stop_event, self.redis, self.max_steps = config, stop_event, client, max_steps
        self.group = pipe.consumer_group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.keys = keys or RedisKeys.from_config(config)
        self.device = pick_device(None if device is None else str(device))
        if seed is not None:
            torch.manual_seed(seed)
        self.market = market or open_market(config, pipe.symbol)
        self.model = StochasticMuZeroNet(config.model).to(self.device)
        self.learner = Learner(self.model, config.learning, self.device, search=config.search, seed=seed or 0)
        self.replay = ReplayBuffer(
            self.market, config.learning, config.env.window, config.env.drawdown_penalty, seed=seed
        )
        self.ratio = SamplesPerInsert.from_config(config.learning)
        self.stream = EpisodeStream(client, self.keys.episodes, pipe.stream_maxlen)
        # Absolute: the path is published to collectors and recorded in the registry.
        self.checkpoints_dir = (Path(pipe.checkpoints_dir) / pipe.run_id).resolve()
        self.hook = default_checkpoint_hook(config, client) if on_checkpoint is DEFAULT_HOOK else on_checkpoint
        # In every file name: a trainer that resumed from an older checkpoint never
        # overwrites a file an earlier process wrote (and registered) at the same step.
        # The registry hook's token, so a forked run and its files share the name.
        self.lineage: str = getattr(self.hook, "token", None) or new_lineage()
        self._hook_retry_at = 0.0
        self.stats = TrainerStats(inserted_ids=[] if record_ids else None)
        self.ingest = StreamIngest(
            self.stream,
            self.group,
            self.consumer,
            self.replay,
            pipe.run_id,
            self.stats,
            seen_capacity=max(4 * pipe.stream_maxlen, 100_000),
        )
        self.outage = Outage("trainer")
        self.announcements: list[_Announcement] = []
        self.last_saved_step = 0
        self._recover_own = True  # read our own pending entries on the first round
        self._check_published = False
        self._next_claim = 0.0
        self._next_status = 0.0
        self._status_steps, self._status_time = 0, time.monotonic()
        self._steps_per_s = 0.0
        self._lag: int | None = None

    # ------------------------------------------------------------------ main loop
    def run(self) -> TrainerStats:
        self._restore()
        log.info(
            "trainer %s on %s: stream %s group %s, checkpoints in %s, from step %d",
            self.consumer,
            self.device,
            self.stream.stream,
            self.group,
            self.checkpoints_dir,
            self.learner.steps,
        )
        try:
            while not self.stop_event.is_set() and not self._reached_max():
                served = self._redis_round()
                learned = self._learn_chunk()
                if not learned and not served:
                    # Nothing to learn and Redis is away: wait for the next retry (or the stop).
                    self.stop_event.wait(max(0.02, min(0.5, self.outage.retry_at - time.monotonic())))
        finally:
            self._shutdown()
        return self.stats

    def _reached_max(self) -> bool:
        return self.max_steps is not None and self.learner.steps >= self.max_steps

    def _restore(self) -> None:
        latest = latest_checkpoint(self.checkpoints_dir)
        if latest is None:
            return
        checkpoint = load_checkpoint(latest, map_location=self.device)
        self.learner.restore(checkpoint)
        self.stats.resumed_from = self.last_saved_step = self.stats.steps = self.learner.steps
        self.announcements.append(_Announcement(self.learner.steps, latest, checkpoint.sha256))
        self._check_published = True  # announce it only if it is not what is published
        log.info("trainer resumed from %s (step %d)", latest, self.learner.steps)

    # ------------------------------------------------------------------ Redis round
    def _redis_round(self) -> bool:
        """One exchange with Redis; False if Redis is unreachable (or in backoff)."""
        if not self.outage.ready():
            return False
        try:
            self.ingest.ack()
            self._announce()
            if self._recover_own:
                self.ingest.recover_own()
                self._recover_own = False
            now = time.monotonic()
            if now >= self._next_claim:
                self._next_claim = now + min(CLAIM_EVERY_S, self.config.pipeline.claim_idle_ms / 2000)
                self.ingest.claim_stale(self.config.pipeline.claim_idle_ms)
            allowed = self._allowed_steps()
            inserting = self.ratio.can_insert(self.replay.inserted, self.replay.sampled)
            if inserting or allowed == 0:
                block = None if allowed > 0 else BLOCK_MS
                self.ingest.read_new(self._read_count(), block)
            self.ingest.ack()
            if time.monotonic() >= self._next_status:
                self._write_status()
        except REDIS_DOWN_ERRORS as exc:
            self.outage.failed(exc)
            self._recover_own = True
            return False
        self.outage.succeeded()
        return True

    def _read_count(self) -> int:
        """Entries to read now: about as many episodes as the samples-per-insert ratio
        lets inserts run ahead, so episodes wait in the stream (where the collectors see
        the backlog and pause) rather than in the buffer, and arrive as fresh as possible."""
        ratio, inserted = self.ratio, self.replay.inserted
        room = (ratio.tolerance + self.replay.sampled) / ratio.ratio - inserted  # positions
        if inserted < ratio.min_size:
            room = max(room, ratio.min_size - inserted)
        return int(min(READ_COUNT, max(1, math.ceil(room / self.config.env.episode_length))))

    # ------------------------------------------------------------------ learning
    def _allowed_steps(self) -> int:
        allowed = self.ratio.allowed_steps(self.replay.inserted, self.replay.sampled, self.config.learning.batch_size)
        if self.max_steps is not None:
            allowed = min(allowed, max(0, self.max_steps - self.learner.steps))
        return allowed

    def _learn_chunk(self) -> bool:
        allowed = self._allowed_steps()
        if allowed == 0:
            return False
        deadline = time.monotonic() + LEARN_CHUNK_S
        batch_size = self.config.learning.batch_size
        for _ in range(allowed):
            metrics = self.learner.step(self.replay.sample(batch_size), self.replay)
            self.stats.steps = self.learner.steps
            self.stats.last_metrics = metrics
            LEARNER_STEPS.inc()
            LOSS.labels("total").set(metrics["loss"])
            LEARNING_RATE.set(metrics["lr"])
            for name, value in metrics.items():
                if name.endswith("_loss"):
                    LOSS.labels(name[: -len("_loss")]).set(value)
            if self.learner.steps % self.config.train.checkpoint_every == 0:
                self._checkpoint()
            if time.monotonic() >= deadline or self.stop_event.is_set():
                break
        return True

    def _checkpoint(self) -> None:
        step = self.learner.steps
        path = checkpoint_path(self.checkpoints_dir, step, self.lineage)
        sha256 = self.learner.save(path, features_config=self.config.features, exclusive=True)
        self.last_saved_step = step
        self.stats.checkpoints.append((step, str(path), sha256))
        self.announcements.append(_Announcement(step, path, sha256))
        CHECKPOINTS_SAVED.inc()
        log.info("checkpoint %s (step %d, sha256 %s...)", path, step, sha256[:12])

    # ------------------------------------------------------------------ announcing
    def _skip_if_published(self) -> None:
        """After a restart: drop the restored checkpoint's announcement if Redis already
        publishes exactly it (the previous process got that far)."""
        record = read_model(self.redis, self.keys.model)
        restored = self.announcements[0] if self.announcements else None
        if (
            record is not None
            and restored is not None
            and int(record["version"]) == restored.step
            and record["sha256"] == restored.sha256
        ):
            self.announcements.pop(0)
        self._check_published = False

    def _announce(self) -> None:
        """Register every queued checkpoint, then publish the newest registered one.

        With a hook, a checkpoint is published only once registered: Redis errors
        propagate (retried next round; registered ones are not registered again); a
        registry outage keeps the queue for a retry every ``HOOK_RETRY_S``; a checkpoint
        the registry refuses (``ValueError``: e.g. its registered file was replaced) is
        dropped, never published. Without a hook (no registry) every checkpoint is
        published as saved.
        """
        if self._check_published:
            self._skip_if_published()
        for item in self.announcements:
            if item.hooked:
                continue
            if callable(self.hook):
                if time.monotonic() < self._hook_retry_at:
                    break
                try:
                    item.checkpoint_id = self.hook(item.step, item.path, item.sha256)
                except REDIS_DOWN_ERRORS:
                    raise
                except ValueError:
                    log.exception("checkpoint %s refused by the registry: not published", item.path)
                    item.dropped = True
                except Exception:
                    log.exception(
                        "cannot register checkpoint %s (retrying in %gs): not published yet", item.path, HOOK_RETRY_S
                    )
                    self._hook_retry_at = time.monotonic() + HOOK_RETRY_S
                    break
            item.hooked = True
        ready = [item for item in self.announcements if item.hooked and not item.dropped]
        self.announcements = [item for item in self.announcements if not item.hooked]
        if not ready:
            return
        newest = ready[-1]
        publish_model(self.redis, self.keys.model, newest.step, str(newest.path), newest.sha256, newest.checkpoint_id)
        self.stats.published.append(newest.step)
        log.info("published model version %d (%s)", newest.step, newest.path)
        self._prune()

    def _prune(self) -> None:
        """Retention (``shared.retention``) through the hook; never stops the trainer."""
        prune = getattr(self.hook, "prune", None)
        if prune is None:
            return
        try:
            prune(self.checkpoints_dir)
        except Exception:
            log.exception("checkpoint retention failed in %s; retried after the next checkpoint", self.checkpoints_dir)

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        s, now = self.stats, time.monotonic()
        elapsed = now - self._status_time
        if elapsed >= 0.5:
            self._steps_per_s = (self.learner.steps - self._status_steps) / elapsed
            self._status_steps, self._status_time = self.learner.steps, now
        losses = {k[: -len("_loss")]: v for k, v in s.last_metrics.items() if k.endswith("_loss")}
        if "loss" in s.last_metrics:
            losses["total"] = s.last_metrics["loss"]
        return {
            "run_id": self.config.pipeline.run_id,
            "consumer": self.consumer,
            "device": str(self.device),
            "step": self.learner.steps,
            "resumed_from": s.resumed_from,
            "losses": losses,
            "replay_positions": len(self.replay),
            "replay_episodes": self.replay.num_episodes,
            "replay_inserted_positions": self.replay.inserted,
            "replay_sampled_positions": self.replay.sampled,
            "episodes_received": s.received,
            "episodes_inserted": s.inserted,
            "episodes_rejected": s.rejected,
            "episodes_duplicates": s.duplicates,
            "episodes_claimed": s.claimed,
            "newest_episode_model_version": self.ingest.newest_version,
            "learner_steps_per_s": round(self._steps_per_s, 3),
            "stream_lag": self._lag,
            "last_checkpoint": {"step": s.checkpoints[-1][0], "path": s.checkpoints[-1][1]} if s.checkpoints else None,
            "updated_at": time.time(),
        }

    def _write_status(self) -> None:
        self._lag = self.stream.lag(self.group)
        if self._lag is not None:
            STREAM_LAG.set(self._lag)
        REPLAY_POSITIONS.set(len(self.replay))
        write_trainer_status(self.redis, self.keys, self.status())
        self._next_status = time.monotonic() + STATUS_EVERY_S

    def _shutdown(self) -> None:
        if self.learner.steps > self.last_saved_step:
            self._checkpoint()
        try:

            def finish() -> None:
                self.ingest.ack()
                self._announce()
                self._write_status()

            call_with_retry(finish, service="trainer", max_attempts=3)
        except REDIS_DOWN_ERRORS as exc:
            log.error("trainer: could not reach Redis at shutdown (%s); checkpoint kept on disk", exc)
        self.learner.close()
        log.info(
            "trainer stopped at step %d: %d episodes inserted, %d duplicates, %d rejected",
            self.learner.steps,
            self.stats.inserted,
            self.stats.duplicates,
            self.stats.rejected,
        )
