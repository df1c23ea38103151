"""Streaming sessions in Redis: one JSON string per session, with a TTL renewed by every
write, so API replicas share them and an abandoned one disappears by itself.

Writes after the first are compare-and-set on the session's ``version`` (WATCH/MULTI):
two requests advancing the same session at once cannot both win; the loser gets
:class:`SessionChanged` and nothing of it is stored.
"""

from __future__ import annotations

from typing import Any

import redis as redis_lib

from shared.serving.session import SessionState


class SessionChanged(RuntimeError):
    """The session was advanced (or deleted) by another request meanwhile (-> 409)."""


class SessionStore:
    def __init__(self, client: Any, prefix: str, ttl_s: int) -> None:
        self.client, self.prefix, self.ttl_s = client, prefix, int(ttl_s)

    def key(self, session_id: str) -> str:
        return f"{self.prefix}{session_id}"

    def create(self, state: SessionState) -> None:
        if not self.client.set(self.key(state.id), state.to_json(), ex=self.ttl_s, nx=True):
            raise SessionChanged(f"session {state.id} exists already")

    def get(self, session_id: str) -> SessionState | None:
        data = self.client.get(self.key(session_id))
        return None if data is None else SessionState.from_json(data)

    def ttl(self, session_id: str) -> int:
        return max(0, int(self.client.ttl(self.key(session_id))))

    def replace(self, expected_version: int, state: SessionState) -> None:
        """Store `state` if the stored session still has `expected_version`."""
        key = self.key(state.id)
        with self.client.pipeline() as pipe:
            try:
                pipe.watch(key)
                current = pipe.get(key)
                if current is None or SessionState.from_json(current).version != expected_version:
                    raise SessionChanged(f"session {state.id} changed meanwhile (another request advanced it)")
                pipe.multi()
                pipe.set(key, state.to_json(), ex=self.ttl_s)
                pipe.execute()
            except redis_lib.WatchError as exc:
                raise SessionChanged(f"session {state.id} changed meanwhile (another request advanced it)") from exc

    def delete(self, session_id: str) -> bool:
        return bool(self.client.delete(self.key(session_id)))
