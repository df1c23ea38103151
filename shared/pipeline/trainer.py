"""The trainer loop: episode stream -> replay buffer -> learner -> checkpoints
(ARCHITECTURE §7). The multi-process sibling of ``shared.training.train``.

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
  ``pipeline.checkpoints_dir/<run_id>``, then ``on_checkpoint(step, path, sha256)``
  (by default: record it in the SQL registry and enqueue its validation), then the
  weights are published (version = step).

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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import torch

from shared.config import Config
from shared.learning import Learner, ReplayBuffer, SamplesPerInsert
from shared.learning.checkpoint import (
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
)
from shared.market import MarketData
from shared.model.networks import StochasticMuZeroNet
from shared.observability import (
    CHECKPOINTS_SAVED,
    EPISODES_CONSUMED,
    LEARNER_STEPS,
    LOSS,
    REPLAY_POSITIONS,
    STREAM_LAG,
)
from shared.pipeline.codec import EpisodeDecodeError
from shared.pipeline.collector import load_pipeline_market, pick_device
from shared.pipeline.redis_conn import (
    REDIS_DOWN_ERRORS,
    Outage,
    call_with_retry,
    connect_configured,
)
from shared.pipeline.streams import (
    TRAINER_STATUS_KEY,
    EpisodeStream,
    publish_model,
    read_model,
    write_json,
)

log = logging.getLogger(__name__)

CheckpointHook = Callable[[int, Path, str], "int | None"]
DEFAULT_HOOK = object()  # sentinel: use the registry + RQ when available

READ_COUNT = 64  # entries per XREADGROUP
BLOCK_MS = 500  # XREADGROUP block when there is nothing to learn
LEARN_CHUNK_S = 1.0
STATUS_EVERY_S = 2.0
CLAIM_EVERY_S = 5.0


class SeenIds:
    """The last `capacity` inserted episode ids (FIFO): the de-duplication window.

    It must cover every redelivery: a group recreated after NOGROUP replays the whole
    stream (<= MAXLEN entries), so the default keeps 4 x MAXLEN (>= 100k) ids (~10 MB).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._set: set[str] = set()
        self._order: deque[str] = deque()

    def __contains__(self, episode_id: str) -> bool:
        return episode_id in self._set

    def __len__(self) -> int:
        return len(self._set)

    def add(self, episode_id: str) -> None:
        if episode_id in self._set:
            return
        self._set.add(episode_id)
        self._order.append(episode_id)
        while len(self._order) > self.capacity:
            self._set.discard(self._order.popleft())


@dataclass
class TrainerStats:
    received: int = 0  # stream entries handled (decoded or not)
    inserted: int = 0
    rejected: int = 0  # dead-lettered: undecodable, another run, or refused by the buffer
    duplicates: int = 0  # already-inserted episode ids, acked and skipped
    claimed: int = 0  # entries taken over from dead consumers
    steps: int = 0
    resumed_from: int | None = None  # step of the checkpoint restored at start
    checkpoints: list[tuple[int, str, str]] = field(default_factory=list)  # (step, path, sha256) saved here
    published: list[int] = field(default_factory=list)  # versions published
    inserted_ids: list[str] | None = None  # every inserted episode id, in order (record_ids=True)
    model_versions: dict[int, int] = field(default_factory=dict)  # inserted episodes per model_version
    last_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _Announcement:
    step: int
    path: Path
    sha256: str
    checkpoint_id: int | None = None
    hooked: bool = False


def default_checkpoint_hook(config: Config, client: redis.Redis) -> CheckpointHook | None:
    """Record checkpoints in the SQL registry and enqueue their validation (RQ).

    None (with a log line) when ``shared.registry`` / ``shared.pipeline.validation`` are
    not importable. The returned hook is safe to call again for the same checkpoint
    after a Redis failure: the registry row is written once, only the enqueue repeats.
    """
    try:
        from shared.pipeline.validation import enqueue_validation
        from shared.registry import Registry
    except ImportError as exc:
        log.warning("checkpoints will not be registered or validated: %s", exc)
        return None
    try:
        registry = Registry(config.pipeline.database_url)
    except Exception:
        log.exception("cannot open the registry %s: checkpoints will not be registered or validated",
                      config.pipeline.database_url)
        return None
    run_id, ids, state = config.pipeline.run_id, {}, {"run": False}

    def hook(step: int, path: Path, sha256: str) -> int | None:
        if not state["run"]:
            registry.ensure_run(run_id, config.pipeline.symbol, config.model_dump(mode="json"))
            state["run"] = True
        key = (str(path), sha256)
        if key not in ids:
            ids[key] = registry.add_checkpoint(run_id, step, str(path), sha256)
        enqueue_validation(client, config, ids[key])
        return ids[key]

    return hook


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
        status_key: str = TRAINER_STATUS_KEY,
        seed: int | None = None,
        record_ids: bool = False,
    ) -> None:
        pipe = config.pipeline
        self.config, self.stop_event, self.redis, self.max_steps = config, stop_event, client, max_steps
        self.group = pipe.consumer_group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.status_key = status_key
        self.device = pick_device(None if device is None else str(device))
        if seed is not None:
            torch.manual_seed(seed)
        self.market = market or load_pipeline_market(config)
        self.model = StochasticMuZeroNet(config.model).to(self.device)
        self.learner = Learner(self.model, config.learning, self.device, search=config.search, seed=seed or 0)
        self.replay = ReplayBuffer(self.market, config.learning, config.env.window, config.env.drawdown_penalty, seed=seed)
        self.ratio = SamplesPerInsert.from_config(config.learning)
        self.stream = EpisodeStream(client, pipe.episode_stream, pipe.stream_maxlen)
        # Absolute: the path is published to collectors and recorded in the registry.
        self.checkpoints_dir = (Path(pipe.checkpoints_dir) / pipe.run_id).resolve()
        self.hook = default_checkpoint_hook(config, client) if on_checkpoint is DEFAULT_HOOK else on_checkpoint
        self.seen = SeenIds(max(4 * pipe.stream_maxlen, 100_000))
        self.stats = TrainerStats(inserted_ids=[] if record_ids else None)
        self.outage = Outage("trainer")
        self.unacked: list[str] = []
        self.announcements: list[_Announcement] = []
        self.last_saved_step = 0
        self._recover_own = True  # read our own pending entries on the first round
        self._check_published = False
        self._next_claim = 0.0
        self._next_status = 0.0
        self._status_steps, self._status_time = 0, time.monotonic()
        self._steps_per_s = 0.0
        self._lag: int | None = None
        self._newest_version: int | None = None  # model_version of the last inserted episode

    # ------------------------------------------------------------------ main loop
    def run(self) -> TrainerStats:
        self._restore()
        log.info(
            "trainer %s on %s: stream %s group %s, checkpoints in %s, from step %d",
            self.consumer, self.device, self.stream.stream, self.group, self.checkpoints_dir, self.learner.steps,
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
            self._ack()
            self._announce()
            if self._recover_own:
                self.stream.ensure_group(self.group)
                self._process(self.stream.read(self.group, self.consumer, count=1000, pending=True))
                self._recover_own = False
            now = time.monotonic()
            if now >= self._next_claim:
                self._next_claim = now + min(CLAIM_EVERY_S, self.config.pipeline.claim_idle_ms / 2000)
                claimed = self.stream.claim_stale(self.group, self.consumer, self.config.pipeline.claim_idle_ms)
                self.stats.claimed += len(claimed)
                self._process(claimed)
            allowed = self._allowed_steps()
            inserting = self.ratio.can_insert(self.replay.inserted, self.replay.sampled)
            if inserting or allowed == 0:
                block = None if allowed > 0 else BLOCK_MS
                self._process(self.stream.read(self.group, self.consumer, count=self._read_count(), block_ms=block))
            self._ack()
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

    def _process(self, entries) -> None:
        run_id = self.config.pipeline.run_id
        for entry_id, item in entries:
            self.stats.received += 1
            if isinstance(item, EpisodeDecodeError):  # dead-lettered by the stream already
                self.stats.rejected += 1
                continue
            episode_id = item.episode_id
            if episode_id and episode_id in self.seen:
                self.stats.duplicates += 1
                self.unacked.append(entry_id)
                continue
            if item.split != "train":
                self._reject(entry_id, item, f"episode {episode_id!r} was played on the {item.split!r} split, not 'train'")
                continue
            if item.run_id != run_id:
                self._reject(entry_id, item, f"episode {episode_id!r} belongs to run {item.run_id!r}, this trainer trains {run_id!r}")
                continue
            try:
                self.replay.insert(item)
            except ValueError as exc:
                self._reject(entry_id, item, f"refused by the replay buffer: {exc}")
                continue
            if episode_id:
                self.seen.add(episode_id)
            if self.stats.inserted_ids is not None:
                self.stats.inserted_ids.append(episode_id)
            self.stats.inserted += 1
            self.stats.model_versions[item.model_version] = self.stats.model_versions.get(item.model_version, 0) + 1
            self._newest_version = item.model_version
            EPISODES_CONSUMED.inc()
            self.unacked.append(entry_id)
        REPLAY_POSITIONS.set(len(self.replay))

    def _reject(self, entry_id: str, episode, reason: str) -> None:
        from shared.pipeline.codec import encode_episode

        self.stream.dead_letter(self.group, entry_id, reason, encode_episode(episode))
        self.stats.rejected += 1

    def _ack(self) -> None:
        if self.unacked:
            self.stream.ack(self.group, self.unacked)
            self.unacked = []

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
        path = checkpoint_path(self.checkpoints_dir, step)
        sha256 = self.learner.save(path, features_config=self.config.features)
        self.last_saved_step = step
        self.stats.checkpoints.append((step, str(path), sha256))
        self.announcements.append(_Announcement(step, path, sha256))
        CHECKPOINTS_SAVED.inc()
        log.info("checkpoint %s (step %d, sha256 %s...)", path, step, sha256[:12])

    # ------------------------------------------------------------------ announcing
    def _skip_if_published(self) -> None:
        """After a restart: drop the restored checkpoint's announcement if Redis already
        publishes exactly it (the previous process got that far)."""
        record = read_model(self.redis, self.config.pipeline.model_key)
        restored = self.announcements[0] if self.announcements else None
        if record is not None and restored is not None and int(record["version"]) == restored.step and record["sha256"] == restored.sha256:
            self.announcements.pop(0)
        self._check_published = False

    def _announce(self) -> None:
        """Register every queued checkpoint, then publish the newest. Redis errors
        propagate (retried next round, already-registered ones are not registered
        again); any other hook failure is logged and the checkpoint published anyway."""
        if self._check_published:
            self._skip_if_published()
        if not self.announcements:
            return
        for item in self.announcements:
            if item.hooked:
                continue
            if self.hook is not None:
                try:
                    item.checkpoint_id = self.hook(item.step, item.path, item.sha256)
                except REDIS_DOWN_ERRORS:
                    raise
                except Exception:
                    log.exception("checkpoint hook failed for %s; publishing it unregistered", item.path)
            item.hooked = True
        newest = self.announcements[-1]
        publish_model(
            self.redis, self.config.pipeline.model_key, newest.step, str(newest.path), newest.sha256, newest.checkpoint_id
        )
        self.stats.published.append(newest.step)
        log.info("published model version %d (%s)", newest.step, newest.path)
        self.announcements = []

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
            "newest_episode_model_version": self._newest_version,
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
        write_json(self.redis, self.status_key, self.status())
        self._next_status = time.monotonic() + STATUS_EVERY_S

    def _shutdown(self) -> None:
        if self.learner.steps > self.last_saved_step:
            self._checkpoint()
        try:
            def finish() -> None:
                self._ack()
                self._announce()
                self._write_status()

            call_with_retry(finish, service="trainer", max_attempts=3)
        except REDIS_DOWN_ERRORS as exc:
            log.error("trainer: could not reach Redis at shutdown (%s); checkpoint kept on disk", exc)
        self.learner.close()
        log.info(
            "trainer stopped at step %d: %d episodes inserted, %d duplicates, %d rejected",
            self.learner.steps, self.stats.inserted, self.stats.duplicates, self.stats.rejected,
        )


def run_trainer(
    config: Config,
    stop_event: threading.Event,
    max_steps: int | None = None,
    *,
    redis_url: str | None = None,
    client: redis.Redis | None = None,
    device: str | torch.device | None = None,
    market: MarketData | None = None,
    on_checkpoint: CheckpointHook | None | object = DEFAULT_HOOK,
    consumer: str | None = None,
    status_key: str = TRAINER_STATUS_KEY,
    seed: int | None = None,
    record_ids: bool = False,
) -> TrainerStats:
    """Consume episodes and learn until `stop_event` is set or the learner reaches step
    `max_steps` (counted from 0, resumed steps included). See the module doc.

    `on_checkpoint(step, path, sha256) -> checkpoint_id | None` runs after each
    checkpoint (default: registry + validation queue when available; None: nothing).
    """
    if client is None:
        client = connect_configured(config.pipeline.redis_url, redis_url)
    trainer = Trainer(
        config, stop_event, client=client, max_steps=max_steps, device=device, market=market,
        on_checkpoint=on_checkpoint, consumer=consumer, status_key=status_key, seed=seed, record_ids=record_ids,
    )
    return trainer.run()
