"""The collector service's loop: self-play batches published to the episode stream
(ARCHITECTURE §7).

One iteration: talk to Redis (flush finished episodes, pick up newly published
weights, check the trainer's backlog), then play one batch of ``train.num_envs``
lock-stepped episodes -- with the warm-up policy (``model_version`` 0) until the
trainer has published weights, then with the search. Weights change only between
batches, so an episode's ``model_version`` is exactly the weights that played it.

Redis going away never stops play: finished episodes wait in a bounded in-memory queue
(oldest dropped, loudly, past ``max_pending``) and are flushed in order once a retry
with exponential backoff reaches Redis again. Flushing is at-least-once; the trainer
skips repeated episode ids, so nothing is lost and nothing is inserted twice.

Flow control: while the stream holds ``max_lag`` or more entries the trainer group has
not read yet, collectors wait instead of producing data that would go stale (or be
trimmed by MAXLEN) before the learner gets to it.

Episode ids are ``<collector id>-<session>-<n>``: the session (random, fixed per
process) keeps ids unique when a collector restarts under the same id -- in a
container the default id ``hostname-pid`` is the same after every restart.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
import torch

from shared.config import Config
from shared.device import pick_device
from shared.episode import Episode
from shared.learning.checkpoint import CheckpointError, load_checkpoint
from shared.market import MarketData, open_market
from shared.model.networks import StochasticMuZeroNet
from shared.observability import (
    COLLECTOR_MODEL_VERSION,
    ENV_STEPS,
    EPISODES_DROPPED,
    EPISODES_PRODUCED,
    PENDING_EPISODES,
    SEARCH_LATENCY,
)
from shared.selfplay import SearchPolicy, SelfPlay
from shared.transport.connection import (
    REDIS_DOWN_ERRORS,
    Outage,
    call_with_retry,
)
from shared.transport.keys import RedisKeys
from shared.transport.status import delete_heartbeat, write_heartbeat
from shared.transport.streams import EpisodeStream, read_model

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # finished episodes held while Redis is away (~10 kB each)
FLUSH_CHUNK = 256  # XADDs per round trip


def default_instance_id() -> str:
    """``hostname-pid``: distinct for every process on every host."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class CollectorStats:
    collector_id: str
    session: str
    played: int = 0  # episodes finished (ids 0..played-1 of this session)
    pushed: int = 0  # episodes acknowledged by Redis
    dropped: int = 0  # episodes discarded because the pending queue overflowed (should stay 0)
    model_version: int = 0
    reloads: int = 0
    env_steps: int = 0
    env_steps_per_s: float = 0.0
    batches: int = 0
    started_at: float = field(default_factory=time.time)

    def episode_id(self, seq: int) -> str:
        return f"{self.collector_id}-{self.session}-{seq}"

    def episode_ids(self) -> list[str]:
        """Ids of every episode this collector finished, in order."""
        return [self.episode_id(i) for i in range(self.played)]


class _Stopped(Exception):
    """The stop event was set in the middle of a batch."""


class _TimedSearchPolicy(SearchPolicy):
    """The search policy, observing its latency and giving up when asked to stop."""

    def __init__(self, *args, stop_event: threading.Event, label: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stop_event = stop_event
        self.latency = SEARCH_LATENCY.labels(label)

    def __call__(self, env, obs):
        if self.stop_event.is_set():
            raise _Stopped
        started = time.perf_counter()
        actions = super().__call__(env, obs)  # .cpu() at the end synchronises the device
        self.latency.observe(time.perf_counter() - started)
        return actions


class Collector:
    def __init__(
        self,
        config: Config,
        stop_event: threading.Event,
        *,
        client: redis.Redis,
        collector_id: str | None = None,
        max_episodes: int | None = None,
        device: str | torch.device | None = None,
        market: MarketData | None = None,
        seed: int | None = None,
        max_pending: int = MAX_PENDING,
        max_lag: int | None = None,
        keys: RedisKeys | None = None,
    ) -> None:
        pipe = config.pipeline
        self.keys = keys or RedisKeys.from_config(config)
        self.config, self.stop_event, self.redis = config, stop_event, client
        self.max_episodes, self.max_pending = max_episodes, max_pending
        self.id = collector_id or default_instance_id()
        self.stats = CollectorStats(self.id, secrets.token_hex(4))
        self.device = pick_device(None if device is None else str(device))
        self.market = market or open_market(config, pipe.symbol)
        seed = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else seed
        torch.manual_seed(seed)
        self.model = StochasticMuZeroNet(config.model).to(self.device).eval()
        self.policy = _TimedSearchPolicy(
            self.model, config.search, self.device, seed=seed, stop_event=stop_event, label=self.id
        )
        self.selfplay = SelfPlay.from_config(config, self.market, seed=seed, run_id=pipe.run_id)
        self.stream = EpisodeStream(client, self.keys.episodes, pipe.stream_maxlen)
        self.max_lag = (
            max_lag if max_lag is not None else min(max(2 * config.train.num_envs, 64), pipe.stream_maxlen // 2)
        )
        self.pending: deque[Episode] = deque()
        self.outage = Outage("collector")
        self._model_sha: str | None = None
        self._refused: tuple[int, str] | None = None  # published record we failed to load
        self._backlog = 0
        self._metrics: dict[str, Any] = {
            "produced": EPISODES_PRODUCED.labels(self.id),
            "env_steps": ENV_STEPS.labels(self.id),
            "version": COLLECTOR_MODEL_VERSION.labels(self.id),
            "pending": PENDING_EPISODES.labels(self.id),
            "dropped": EPISODES_DROPPED.labels(self.id),
        }
        self._metrics["version"].set(0)
        self._metrics["pending"].set(0)

    # ------------------------------------------------------------------ main loop
    def run(self) -> CollectorStats:
        log.info(
            "collector %s (session %s) on %s: %d envs, stream %s, model key %s",
            self.id,
            self.stats.session,
            self.device,
            self.config.train.num_envs,
            self.stream.stream,
            self.keys.model,
        )
        heartbeat_stop = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat_loop, args=(heartbeat_stop,), name="heartbeat", daemon=True)
        heartbeat.start()
        try:
            while not self.stop_event.is_set():
                done_playing = self.max_episodes is not None and self.stats.played >= self.max_episodes
                connected = self._sync()
                if done_playing and not self.pending:
                    break
                if done_playing or (connected and self._backlog >= self.max_lag):
                    # Waiting: for Redis to take the last episodes, or for the trainer to catch up.
                    delay = 0.25 if connected else self.outage.retry_at - time.monotonic()
                    self.stop_event.wait(max(0.05, min(0.5, delay)))
                    continue
                try:
                    self._play_batch()
                except _Stopped:
                    log.info("collector %s: stopping in the middle of a batch (discarded)", self.id)
                    break
        finally:
            heartbeat_stop.set()
            heartbeat.join(timeout=5)
            self._shutdown()
        return self.stats

    def _play_batch(self) -> None:
        version = self.stats.model_version
        started = time.perf_counter()
        policy = self.policy if version > 0 else self.config.train.warmup_policy
        episodes = self.selfplay.play(policy, model_version=version)
        elapsed = time.perf_counter() - started
        steps = sum(len(e) for e in episodes)
        if self.max_episodes is not None:
            episodes = episodes[: self.max_episodes - self.stats.played]
        for episode in episodes:
            self._enqueue(dataclasses.replace(episode, episode_id=self.stats.episode_id(self.stats.played)))
            self.stats.played += 1
        self.stats.batches += 1
        self.stats.env_steps += steps
        self.stats.env_steps_per_s = steps / max(elapsed, 1e-9)
        self._metrics["env_steps"].inc(steps)
        log.debug("collector %s: batch of %d episodes (version %d) in %.2f s", self.id, len(episodes), version, elapsed)

    def _enqueue(self, episode: Episode) -> None:
        if len(self.pending) >= self.max_pending:
            lost = self.pending.popleft()
            self.stats.dropped += 1
            self._metrics["dropped"].inc()
            log.error(
                "collector %s: %d episodes wait for Redis, the limit; DROPPED the oldest (%s). %d dropped so far",
                self.id,
                len(self.pending) + 1,
                lost.episode_id,
                self.stats.dropped,
            )
        self.pending.append(episode)
        self._metrics["pending"].set(len(self.pending))

    # ------------------------------------------------------------------ Redis
    def _sync(self) -> bool:
        """Flush pending episodes, reload weights, read the backlog. False while Redis is
        unreachable (including while waiting out a backoff delay)."""
        if not self.outage.ready():
            return False
        try:
            self._flush()
            self._maybe_reload()
            lag = self.stream.lag(self.config.pipeline.consumer_group)
            self._backlog = self.stream.length() if lag is None else lag
        except REDIS_DOWN_ERRORS as exc:
            self.outage.failed(exc)
            return False
        self.outage.succeeded()
        return True

    def _flush(self) -> None:
        while self.pending:
            chunk = [self.pending[i] for i in range(min(FLUSH_CHUNK, len(self.pending)))]
            self.stream.publish_many(chunk)
            for _ in chunk:
                self.pending.popleft()
            self.stats.pushed += len(chunk)
            self._metrics["produced"].inc(len(chunk))
            self._metrics["pending"].set(len(self.pending))

    def _maybe_reload(self) -> None:
        record = read_model(self.redis, self.keys.model)
        if record is None:
            return
        version, sha = int(record["version"]), str(record["sha256"])
        if (version == self.stats.model_version and sha == self._model_sha) or (version, sha) == self._refused:
            return
        try:
            checkpoint = load_checkpoint(record["path"], map_location=self.device)
            if checkpoint.sha256 != sha:
                raise CheckpointError(
                    f"checkpoint {record['path']}: sha256 {checkpoint.sha256[:16]}... is not the published {sha[:16]}..."
                )
            self._load_weights(checkpoint.state_dict)
        except (CheckpointError, OSError) as exc:
            self._refused = (version, sha)
            log.error(
                "collector %s: cannot load published model version %d (%s); keeping version %d",
                self.id,
                version,
                exc,
                self.stats.model_version,
            )
            return
        self._model_sha = sha
        self.stats.model_version = version
        self.stats.reloads += 1
        self._metrics["version"].set(version)
        log.info("collector %s: playing model version %d from %s", self.id, version, record["path"])

    def _load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load only if every tensor matches, so a wrong file never leaves the model half loaded."""
        own = self.model.state_dict()
        if set(state_dict) != set(own):
            missing, extra = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
            raise CheckpointError(f"weights do not fit this model: missing {missing[:5]}, unexpected {extra[:5]}")
        for name, tensor in state_dict.items():
            if tensor.shape != own[name].shape:
                raise CheckpointError(
                    f"weights do not fit this model: {name} has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}"
                )
        self.model.load_state_dict(state_dict)
        self.model.eval()

    def heartbeat(self) -> dict:
        s = self.stats
        return {
            "id": self.id,
            "session": s.session,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(self.device),
            "episodes": s.pushed,
            "episodes_played": s.played,
            "pending": len(self.pending),
            "dropped": s.dropped,
            "model_version": s.model_version,
            "env_steps": s.env_steps,
            "env_steps_per_s": round(s.env_steps_per_s, 1),
            "started_at": s.started_at,
            "updated_at": time.time(),
        }

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        ttl = self.config.pipeline.heartbeat_ttl_s
        period = max(0.2, min(5.0, ttl / 3))
        while True:
            try:
                write_heartbeat(self.redis, self.keys, self.id, self.heartbeat(), ttl_s=ttl)
            except REDIS_DOWN_ERRORS:
                pass  # the main loop logs and counts outages
            except Exception:
                log.exception("collector %s: heartbeat failed", self.id)
            if stop.wait(period):
                return

    def _shutdown(self) -> None:
        if self.pending:
            try:
                call_with_retry(self._flush, service="collector", max_attempts=3)
            except REDIS_DOWN_ERRORS:
                pass
            if self.pending:
                log.error("collector %s: exiting with %d episodes Redis never took: lost", self.id, len(self.pending))
        try:
            delete_heartbeat(self.redis, self.keys, self.id)
        except REDIS_DOWN_ERRORS:
            pass
        log.info(
            "collector %s stopped: %d episodes played, %d pushed, %d dropped, model version %d",
            self.id,
            self.stats.played,
            self.stats.pushed,
            self.stats.dropped,
            self.stats.model_version,
        )
