"""Status records in Redis: the trainer's status, the collectors' heartbeats and
``microzero up``'s supervised services.

Writers: the trainer (:func:`write_trainer_status`, every few seconds), each collector
(:func:`write_heartbeat`, with a TTL so a dead collector disappears) and ``microzero up``
(:func:`write_supervisor_status`: each service's restarts, with a TTL so the record goes
when ``up`` does). Readers: the API's ``/status`` and ``up``'s status line
(:func:`read_trainer_status`, :func:`read_heartbeats`, :func:`read_supervisor_status`).
Key names: :class:`RedisKeys`.
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


def write_supervisor_status(client: Any, keys: RedisKeys, services: dict[str, Any], ttl_s: int) -> None:
    """``microzero up``'s view of its services: ``{services: {name: {running, pid,
    restarts, last_exit_code}}}``; expires after `ttl_s` unless rewritten."""
    write_json(client, keys.supervisor_status, {"services": services}, ttl_s=ttl_s)


def _read_json(client: Any, key: str) -> dict[str, Any] | None:
    """A JSON object stored at `key` (JSON-safe), None if absent; a value that is not a
    JSON object is reported inside a dict rather than raising."""
    raw = client.get(key)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return {"error": f"{key} is not JSON"}
    if not isinstance(value, dict):
        value = {"value": value}
    result: dict[str, Any] = json_safe(value)
    return result


def read_trainer_status(client: Any, keys: RedisKeys) -> dict[str, Any] | None:
    """The trainer's latest status, None if none was written."""
    return _read_json(client, keys.trainer_status)


def read_supervisor_status(client: Any, keys: RedisKeys) -> dict[str, Any] | None:
    """``microzero up``'s services and their restarts, None outside ``up``."""
    return _read_json(client, keys.supervisor_status)


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
