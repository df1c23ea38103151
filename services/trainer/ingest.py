"""The trainer's stream ingest: episode stream -> replay buffer, exactly once.

Entries are decoded (undecodable ones are dead-lettered by ``EpisodeStream``), skipped
if their episode id was already inserted (at-least-once delivery made exactly-once by
:class:`SeenIds`), refused (dead-lettered and acked) if they belong to another run or
split or the replay buffer rejects them, else inserted -- and only then acked.

The learning side (learner, replay sampling, checkpoints) is the library's
(``shared.learning``); :mod:`services.trainer.loop` alternates the two.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from shared.learning import ReplayBuffer
from shared.observability import EPISODES_CONSUMED, REPLAY_POSITIONS
from shared.transport.codec import EpisodeDecodeError, encode_episode
from shared.transport.streams import Entry, EpisodeStream


@dataclass
class IngestStats:
    received: int = 0  # stream entries handled (decoded or not)
    inserted: int = 0
    rejected: int = 0  # dead-lettered: undecodable, another run, or refused by the buffer
    duplicates: int = 0  # already-inserted episode ids, acked and skipped
    claimed: int = 0  # entries taken over from dead consumers
    inserted_ids: list[str] | None = None  # every inserted episode id, in order (record_ids=True)
    model_versions: dict[int, int] = field(default_factory=dict)  # inserted episodes per model_version


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


class StreamIngest:
    """Reads one consumer's share of the episode stream into a replay buffer."""

    def __init__(
        self,
        stream: EpisodeStream,
        group: str,
        consumer: str,
        replay: ReplayBuffer,
        run_id: str,
        stats: IngestStats,
        seen_capacity: int,
    ) -> None:
        self.stream, self.group, self.consumer = stream, group, consumer
        self.replay, self.run_id, self.stats = replay, run_id, stats
        self.seen = SeenIds(seen_capacity)
        self.unacked: list[str] = []
        self.newest_version: int | None = None  # model_version of the last inserted episode

    def recover_own(self) -> None:
        """Make sure the group exists, then take back this consumer's delivered but
        unacked entries (a reply lost in an outage, or a restart under the same name)."""
        self.stream.ensure_group(self.group)
        self.process(self.stream.read(self.group, self.consumer, count=1000, pending=True))

    def claim_stale(self, min_idle_ms: int) -> None:
        """Take over entries a dead consumer left pending for more than `min_idle_ms`."""
        claimed = self.stream.claim_stale(self.group, self.consumer, min_idle_ms)
        self.stats.claimed += len(claimed)
        self.process(claimed)

    def read_new(self, count: int, block_ms: int | None) -> None:
        self.process(self.stream.read(self.group, self.consumer, count=count, block_ms=block_ms))

    def process(self, entries: list[Entry]) -> None:
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
                self._reject(
                    entry_id, item, f"episode {episode_id!r} was played on the {item.split!r} split, not 'train'"
                )
                continue
            if item.run_id != self.run_id:
                self._reject(
                    entry_id,
                    item,
                    f"episode {episode_id!r} belongs to run {item.run_id!r}, this trainer trains {self.run_id!r}",
                )
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
            self.newest_version = item.model_version
            EPISODES_CONSUMED.inc()
            self.unacked.append(entry_id)
        REPLAY_POSITIONS.set(len(self.replay))

    def _reject(self, entry_id: str, episode: Any, reason: str) -> None:
        self.stream.dead_letter(self.group, entry_id, reason, encode_episode(episode))
        self.stats.rejected += 1

    def ack(self) -> None:
        if self.unacked:
            self.stream.ack(self.group, self.unacked)
            self.unacked = []
