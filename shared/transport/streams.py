"""The Redis side of the pipeline: the episode stream, its dead letters, and the
published model (ARCHITECTURE §7).

Delivery is *at least once*: a collector may XADD an episode twice (its reply was lost
in an outage and it sent again), and a group recreated after ``NOGROUP`` redelivers the
stream from the start. The trainer makes insertion exactly-once by skipping episode ids
it has already inserted (see ``services.trainer.loop``).

Key names: ``shared.transport.keys.RedisKeys``; the status records (trainer status,
collector heartbeats): ``shared.transport.status``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import redis

from shared.episode import Episode
from shared.observability import EPISODES_REJECTED
from shared.transport.codec import EpisodeDecodeError, decode_episode, encode_episode

log = logging.getLogger(__name__)

FIELD = b"episode"
DEAD_LETTER_MAXLEN = 10_000
TRIMMED = "lost: the stream's MAXLEN trimmed the entry before it was processed"


# Entries after `last-delivered-id`, counted server-side in pages (Redis < 7 has no
# XINFO GROUPS lag field, and 7.x reports none after some deletions). Bounded work.
_COUNT_AFTER = """
local n, start, limit = 0, ARGV[1], tonumber(ARGV[2])
while n < limit do
  local page = redis.call('XRANGE', KEYS[1], '(' .. start, '+', 'COUNT', 100)
  if #page == 0 then break end
  n = n + #page
  start = page[#page][1]
end
return n
"""
LAG_COUNT_LIMIT = 100_000

Entry = tuple[str, "Episode | EpisodeDecodeError"]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_nogroup(exc: redis.ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


class EpisodeStream:
    """Producer and consumer-group operations on one episode stream."""

    def __init__(self, client: redis.Redis, stream: str, maxlen: int) -> None:
        self.redis, self.stream, self.maxlen = client, stream, maxlen
        self.dead_stream = f"{stream}:dead"
        self._count_after = client.register_script(_COUNT_AFTER)

    # ------------------------------------------------------------------ producer
    def publish(self, episode: Episode) -> str:
        """XADD one episode (approximate MAXLEN); returns the entry id."""
        return _text(
            self.redis.xadd(self.stream, {FIELD: encode_episode(episode)}, maxlen=self.maxlen, approximate=True)
        )

    def publish_many(self, episodes: Iterable[Episode]) -> list[str]:
        """XADD several episodes in order in one round trip (a pipeline, not a
        transaction: after a failure some may be in the stream; sending them again is
        safe because the trainer skips duplicate episode ids)."""
        pipe = self.redis.pipeline(transaction=False)
        for episode in episodes:
            pipe.xadd(self.stream, {FIELD: encode_episode(episode)}, maxlen=self.maxlen, approximate=True)
        return [_text(i) for i in pipe.execute()]

    # ------------------------------------------------------------------ consumer group
    def ensure_group(self, group: str) -> bool:
        """Create `group` reading from the stream's start (and the stream if missing);
        True if it was created, False if it existed."""
        try:
            self.redis.xgroup_create(self.stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        log.info("created consumer group %s on %s", group, self.stream)
        return True

    def _group_call(self, group: str, fn):
        """Run `fn`; if the group (or the stream) vanished, recreate it and run it again."""
        try:
            return fn()
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            log.warning(
                "consumer group %s on %s is gone (%s); recreating it from the stream start", group, self.stream, exc
            )
            self.ensure_group(group)
            return fn()

    def read(
        self, group: str, consumer: str, count: int = 64, block_ms: int | None = None, *, pending: bool = False
    ) -> list[Entry]:
        """XREADGROUP up to `count` entries never delivered to the group (or, with
        `pending`, this consumer's own delivered-but-unacked entries, e.g. after a lost
        reply). `block_ms` None or 0 = do not block.

        Returns ``[(entry_id, Episode | EpisodeDecodeError)]``. Undecodable entries are
        already dead-lettered and acked when this returns.
        """
        start = "0" if pending else ">"
        block = block_ms if block_ms else None
        reply = self._group_call(
            group, lambda: self.redis.xreadgroup(group, consumer, {self.stream: start}, count=count, block=block)
        )
        messages = reply[0][1] if reply else []
        return self._decode_all(group, messages)

    def claim_stale(self, group: str, consumer: str, min_idle_ms: int, count: int = 64) -> list[Entry]:
        """XAUTOCLAIM entries pending for more than `min_idle_ms` on any consumer (a dead
        trainer's), up to about `count`; decoded like :meth:`read`."""
        claimed: list[tuple[Any, Any]] = []
        cursor = "0-0"
        while len(claimed) < count:
            reply = self._group_call(
                group, lambda c=cursor: self.redis.xautoclaim(self.stream, group, consumer, min_idle_ms, c, count=count)
            )
            cursor, messages = _text(reply[0]), reply[1]
            for entry_id in reply[2] if len(reply) > 2 else []:  # Redis 7: trimmed before being acked
                self.dead_letter(group, _text(entry_id), TRIMMED, None)
            for entry_id, fields in messages:
                if entry_id is None:  # Redis 6.2 reports a trimmed entry as nil
                    log.warning("a pending entry of %s was trimmed before being processed: lost", self.stream)
                    continue
                claimed.append((entry_id, fields))
            if cursor == "0-0":
                break
        if claimed:
            log.info("claimed %d stale entries of %s for %s", len(claimed), self.stream, consumer)
        return self._decode_all(group, claimed)

    def ack(self, group: str, ids: Iterable[str]) -> int:
        ids = list(ids)
        return int(self.redis.xack(self.stream, group, *ids)) if ids else 0

    def dead_letter(self, group: str, entry_id: str, reason: str, payload: bytes | None) -> None:
        """Move entry `entry_id` to ``<stream>:dead`` with `reason`, and ack it (one
        transaction); counted in EPISODES_REJECTED."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(
            self.dead_stream,
            {b"source_id": entry_id, b"reason": reason[:2000], b"payload": payload or b"", b"at": f"{time.time():.3f}"},
            maxlen=DEAD_LETTER_MAXLEN,
            approximate=True,
        )
        pipe.xack(self.stream, group, entry_id)
        pipe.execute()
        EPISODES_REJECTED.inc()
        log.warning("dead-lettered %s entry %s: %s", self.stream, entry_id, reason)

    def _decode_all(self, group: str, messages) -> list[Entry]:
        out: list[Entry] = []
        for entry_id, fields in messages:
            entry_id = _text(entry_id)
            payload = (fields or {}).get(FIELD)
            if not fields:  # a pending entry whose payload MAXLEN trimmed away
                self.dead_letter(group, entry_id, TRIMMED, None)
                out.append((entry_id, EpisodeDecodeError(TRIMMED)))
                continue
            try:
                if payload is None:
                    raise EpisodeDecodeError(
                        f"entry has no {FIELD.decode()!r} field (fields: {sorted(_text(k) for k in (fields or {}))})"
                    )
                item: Episode | EpisodeDecodeError = decode_episode(payload)
            except EpisodeDecodeError as exc:
                self.dead_letter(group, entry_id, f"undecodable: {exc}", payload)
                item = exc
            out.append((entry_id, item))
        return out

    # ------------------------------------------------------------------ introspection
    def length(self) -> int:
        return int(self.redis.xlen(self.stream))

    def group_info(self, group: str) -> dict | None:
        try:
            groups = self.redis.xinfo_groups(self.stream)
        except redis.ResponseError:  # no such key
            return None
        for info in groups:
            if _text(info.get("name")) == group:
                return info
        return None

    def lag(self, group: str) -> int | None:
        """Entries of the stream not yet delivered to `group` (None if there is no such
        group). XINFO GROUPS ``lag`` where Redis provides it, else a bounded count."""
        info = self.group_info(group)
        if info is None:
            return None
        if info.get("lag") is not None:
            return int(info["lag"])
        return int(self._count_after(keys=[self.stream], args=[_text(info["last-delivered-id"]), LAG_COUNT_LIMIT]))

    def pending_count(self, group: str) -> int:
        info = self.group_info(group)
        return 0 if info is None else int(info.get("pending", 0))

    def dead_letters(self, count: int = 100) -> list[dict]:
        """The newest dead letters, newest first: {id, source_id, reason, payload_bytes, at}."""
        rows = self.redis.xrevrange(self.dead_stream, count=count)
        return [
            {
                "id": _text(i),
                "source_id": _text(f.get(b"source_id", b"")),
                "reason": _text(f.get(b"reason", b"")),
                "payload_bytes": len(f.get(b"payload", b"")),
                "at": float(f.get(b"at", 0) or 0),
            }
            for i, f in rows
        ]


# ---------------------------------------------------------------------- published model


def publish_model(
    client: redis.Redis, key: str, version: int, path: str, sha256: str, checkpoint_id: int | None = None
) -> dict:
    """Announce new weights: SET `key` to the JSON record and PUBLISH it on channel `key`
    (one transaction). Collectors reload when the version changes."""
    record = {
        "version": int(version),
        "path": str(path),
        "sha256": sha256,
        "checkpoint_id": checkpoint_id,
        "published_at": time.time(),
    }
    message = json.dumps(record)
    pipe = client.pipeline(transaction=True)
    pipe.set(key, message)
    pipe.publish(key, message)
    pipe.execute()
    return record


def read_model(client: redis.Redis, key: str) -> dict | None:
    """The published model record, or None if none was published (or it is unreadable)."""
    raw = client.get(key)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        int(record["version"]), str(record["path"]), str(record["sha256"])
    except (ValueError, TypeError, KeyError) as exc:
        log.error("published model record %s is malformed (%s): %r", key, exc, raw[:200])
        return None
    return record
