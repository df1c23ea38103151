"""``/status``: where the pipeline stands, from the status cache (``status_cache.py``).

Async and answered from snapshots the background refreshers keep: it never waits on
Redis or the database, and never takes a thread from the shared pool.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from services.api import schemas as S
from services.api.deps import State

router = APIRouter()


@router.get("/status", tags=["pipeline"], response_model=S.StatusResponse, summary="Where the pipeline stands")
async def status(state: State) -> S.StatusResponse:
    out: dict[str, Any] = {
        "validation_queue": S.QueueStatus(name=state.config.pipeline.validation_queue),
        "served_model": S.served_out(state.holder.current),
    }
    errors: dict[str, str] = {}
    refreshed: dict[str, datetime | None] = {}
    for name, source in state.status_sources.items():
        snapshot = source.snapshot
        out.update(snapshot.data)  # the last good data, even when it is old (errors say so)
        refreshed[name] = None if snapshot.refreshed_at is None else datetime.fromtimestamp(snapshot.refreshed_at, UTC)
        problem = source.problem()
        if problem is not None:
            errors[name] = problem
    return S.StatusResponse(errors=errors, refreshed_at=refreshed, **out)
