"""``/status``: where the pipeline stands (Redis status records, queue, registry)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.api import schemas as S
from services.api.deps import State
from shared.transport.jobs import validation_queue
from shared.transport.status import read_heartbeats, read_supervisor_status, read_trainer_status

router = APIRouter()


@router.get("/status", tags=["pipeline"], response_model=S.StatusResponse, summary="Where the pipeline stands")
def status(state: State) -> S.StatusResponse:
    config = state.config
    errors: dict[str, str] = {}
    out: dict[str, Any] = {
        "validation_queue": S.QueueStatus(name=config.pipeline.validation_queue),
        "served_model": S.served_out(state.holder.current),
    }
    r = state.redis
    if r is None:
        errors["redis"] = "not configured"
    else:
        try:
            out["trainer"] = read_trainer_status(r, state.keys)
            out["collectors"] = [
                S.CollectorStatus(
                    id=beat.id,
                    episodes=beat.record.get("episodes"),
                    model_version=beat.record.get("model_version"),
                    env_steps_per_s=beat.record.get("env_steps_per_s"),
                    ttl_s=beat.ttl_s,
                )
                for beat in read_heartbeats(r, state.keys)
            ]
            out["services"] = (read_supervisor_status(r, state.keys) or {}).get("services")
        except Exception as exc:  # noqa: BLE001
            errors["redis"] = f"{type(exc).__name__}: {exc}"
        try:
            q = validation_queue(r, config)
            out["validation_queue"] = S.QueueStatus(
                name=config.pipeline.validation_queue, depth=q.count, failed=q.failed_job_registry.count
            )
        except Exception as exc:  # noqa: BLE001
            errors["validation_queue"] = f"{type(exc).__name__}: {exc}"
    reg = state.ensure_registry()
    if reg is None:
        errors["database"] = f"cannot open: {state.registry_error}"
    else:
        try:
            out["checkpoints_total"] = reg.count_checkpoints()
            out["latest_checkpoint"] = S.checkpoint_out(reg.latest_checkpoint())
            out["best_checkpoint"] = S.checkpoint_out(reg.best_checkpoint())
        except Exception as exc:  # noqa: BLE001
            errors["database"] = f"{type(exc).__name__}: {exc}"
    return S.StatusResponse(errors=errors, **out)
