"""Status records in Redis: the trainer's status and the collectors' heartbeats.

Writers: the trainer (:func:`write_trainer_status`, every few seconds) and each
collector (:func:`write_heartbeat`, with a TTL so a dead collector disappears).
Readers: the API's ``/status`` and ``microzero up``'s status line
(:func:`read_trainer_status`, :func:`read_heartbeats`). Key names: :class:`RedisKeys`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared.jsonsafe import json_safe
from shared.transport.keys import RedisKeys


@dataclass(frozen=True)
class Heartbeat:
    """One live collector: its id, its last heartbeat record, and the key's TTL."""

    id: str
    record: dict[str, Any]
    ttl_s: int | None


def write_json(client: Any, key: str, value: dict[str, Any], ttl_s: int | None = None) -> None:
    client.set(key, json.dumps(json_safe(value), allow_nan=False), ex=ttl_s)


def write_trainer_status(client: Any, keys: RedisKeys, status: dict[str, Any]) -> None:
    write_json(client, keys.trainer_status, status)


def write_heartbeat(client: Any, keys: RedisKeys, collector_id: str, record: dict[str, Any], ttl_s: int) -> None:
    write_json(client, keys.collector_heartbeat(collector_id), record, ttl_s=ttl_s)


def delete_heartbeat(client: Any, keys: RedisKeys, collector_id: str) -> None:
    client.delete(keys.collector_heartbeat(collector_id))


def read_trainer_status(client: Any, keys: RedisKeys) -> dict[str, Any] | None:
    """The trainer's latest status (JSON-safe), None if none was written; a value that
    is not a JSON object is reported inside a dict rather than raising."""
    raw = client.get(keys.trainer_status)
    if raw is None:
        return None
    try:
        status = json.loads(raw)
    except ValueError:
        return {"error": f"{keys.trainer_status} is not JSON"}
    if not isinstance(status, dict):
        status = {"value": status}
    result: dict[str, Any] = json_safe(status)
    return result


def read_heartbeats(client: Any, keys: RedisKeys) -> list[Heartbeat]:
    """Every live collector's heartbeat, sorted by id (one SCAN, one pipelined read)."""
    names = sorted(
        {k.decode() if isinstance(k, bytes) else k for k in client.scan_iter(match=keys.collector_pattern, count=500)}
    )
    if not names:
        return []
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(name)
        pipe.ttl(name)
    replies = pipe.execute()
    beats = []
    for name, raw, ttl in zip(names, replies[0::2], replies[1::2]):
        if raw is None:  # expired between SCAN and GET
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            record = {}
        record = json_safe(record) if isinstance(record, dict) else {}
        beats.append(Heartbeat(keys.collector_id(name), record, ttl if isinstance(ttl, int) and ttl >= 0 else None))
    return beats
