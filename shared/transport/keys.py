"""Every Redis name the pipeline uses, in one typed place (ARCHITECTURE §7).

::

    <episodes>                    the episode stream, field ``episode`` = codec bytes, MAXLEN ~
    <episodes>:dead               refused entries: source id, reason, original payload
    <model>                       JSON {version, path, sha256, checkpoint_id, published_at}
                                  (also PUBLISHed on the channel of the same name)
    <prefix>:collector:<id>:heartbeat   JSON, expires after pipeline.heartbeat_ttl_s
    <prefix>:trainer:status       JSON, rewritten every few seconds by the trainer
    <prefix>:up:status            JSON, ``microzero up``'s supervised services (restarts), with a TTL
    <prefix>:best                 pub/sub channel: {checkpoint_id, path} of a new best
    <prefix>:session:<id>         JSON of an API streaming session, expires after pipeline.api_session_ttl_s
    rq:queue:<validation_queue>   the RQ validation queue (RQ's own names)

The stream, model key and queue names come from ``PipelineConfig``
(:meth:`RedisKeys.from_config`); the fixed ones share ``pipeline.redis_prefix``
(``mz``), so tests can run against a shared server under a private prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import Config, PipelineConfig

DEFAULT_PREFIX = "mz"


@dataclass(frozen=True)
class RedisKeys:
    """The names of one pipeline's Redis keys, streams, channels and queue."""

    episodes: str = f"{DEFAULT_PREFIX}:episodes"
    model: str = f"{DEFAULT_PREFIX}:model"
    trainer_status: str = f"{DEFAULT_PREFIX}:trainer:status"
    supervisor_status: str = f"{DEFAULT_PREFIX}:up:status"
    collector_prefix: str = f"{DEFAULT_PREFIX}:collector:"
    collector_suffix: str = ":heartbeat"
    best_channel: str = f"{DEFAULT_PREFIX}:best"
    validation_queue: str = "validation"
    session_prefix: str = f"{DEFAULT_PREFIX}:session:"

    @classmethod
    def from_config(cls, config: Config | PipelineConfig) -> RedisKeys:
        """The configured names (stream, model key, queue); the fixed ones under
        ``pipeline.redis_prefix``."""
        pipe = config.pipeline if isinstance(config, Config) else config
        return cls.with_prefix(
            pipe.redis_prefix, episodes=pipe.episode_stream, model=pipe.model_key, queue=pipe.validation_queue
        )

    @classmethod
    def with_prefix(
        cls, prefix: str, *, episodes: str | None = None, model: str | None = None, queue: str | None = None
    ) -> RedisKeys:
        """Every name under `prefix` (tests use a random one to share a Redis server)."""
        return cls(
            episodes=episodes or f"{prefix}:episodes",
            model=model or f"{prefix}:model",
            trainer_status=f"{prefix}:trainer:status",
            supervisor_status=f"{prefix}:up:status",
            collector_prefix=f"{prefix}:collector:",
            best_channel=f"{prefix}:best",
            validation_queue=queue or ("validation" if prefix == DEFAULT_PREFIX else f"{prefix}:validation"),
            session_prefix=f"{prefix}:session:",
        )

    @property
    def dead_letters(self) -> str:
        return f"{self.episodes}:dead"

    @property
    def collector_pattern(self) -> str:
        """SCAN/KEYS pattern matching every collector heartbeat."""
        return f"{self.collector_prefix}*{self.collector_suffix}"

    def collector_heartbeat(self, collector_id: str) -> str:
        return f"{self.collector_prefix}{collector_id}{self.collector_suffix}"

    def collector_id(self, heartbeat_key: str) -> str:
        """The collector id inside a heartbeat key."""
        return heartbeat_key[len(self.collector_prefix) : len(heartbeat_key) - len(self.collector_suffix)]


DEFAULT_KEYS = RedisKeys()
