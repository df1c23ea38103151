"""Request and response models of the HTTP API (pydantic v2).

The inference models (``/v1/act``, batch, sessions) are defined in
:mod:`shared.serving.schemas` and re-exported here.

JSON has no literal for infinities or NaN; where an output number may be non-finite
(a profit factor without losing trades, the ``-inf`` score of a checkpoint that never
traded) it is sent as the string ``"inf"`` or ``"-inf"``, and NaN as ``null`` -- the
rule of ``shared.jsonsafe``, which the registry's JSON columns follow too.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from shared.jsonsafe import JsonFloat, json_safe
from shared.serving.schemas import (
    ACTION_NAMES as ACTION_NAMES,
)
from shared.serving.schemas import (
    MAX_BARS as MAX_BARS,
)
from shared.serving.schemas import (
    ActionName as ActionName,
)
from shared.serving.schemas import (
    ActRequest as ActRequest,
)
from shared.serving.schemas import (
    ActResponse as ActResponse,
)
from shared.serving.schemas import (
    Bar as Bar,
)
from shared.serving.schemas import (
    BatchActRequest as BatchActRequest,
)
from shared.serving.schemas import (
    BatchActResponse as BatchActResponse,
)
from shared.serving.schemas import (
    Position as Position,
)
from shared.serving.schemas import (
    SessionBars as SessionBars,
)
from shared.serving.schemas import (
    SessionCreate as SessionCreate,
)
from shared.serving.schemas import (
    SessionOut as SessionOut,
)

# ----------------------------------------------------------------------------- registry views


class ValidationOut(BaseModel):
    id: int
    checkpoint_id: int
    status: str
    score: JsonFloat | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    split: str | None = None
    duration_s: JsonFloat | None = None
    created_at: datetime | None = None


class CheckpointOut(BaseModel):
    id: int
    run_id: str
    step: int
    path: str
    sha256: str | None = None
    created_at: datetime | None = None
    is_best: bool = False
    best_path: str | None = None
    latest_validation: ValidationOut | None = None
    pruned_at: datetime | None = Field(None, description="when retention deleted its file (the record stays)")


class Page(BaseModel):
    limit: int
    offset: int


class CheckpointPage(Page):
    total: int | None = Field(None, description="checkpoints in the registry (all runs)")
    items: list[CheckpointOut]


class ValidationPage(Page):
    checkpoint_id: int | None = None
    items: list[ValidationOut]


# ----------------------------------------------------------------------------- health / status


class Check(BaseModel):
    ok: bool
    detail: str


class ReadyResponse(BaseModel):
    ready: bool
    checks: dict[str, Check] = Field(description="model, redis, database")


class ServedModel(BaseModel):
    checkpoint_id: int | None
    step: int
    path: str
    sha256: str
    device: str
    loaded_at: datetime


class CollectorStatus(BaseModel):
    id: str
    episodes: Any = None
    model_version: Any = None
    env_steps_per_s: Any = None
    ttl_s: int | None = Field(None, description="seconds until the heartbeat expires")


class QueueStatus(BaseModel):
    name: str
    depth: int | None = Field(None, description="jobs waiting")
    failed: int | None = Field(None, description="jobs in the failed registry")


class StatusResponse(BaseModel):
    trainer: dict[str, Any] | None = Field(None, description="the trainer's latest mz:trainer:status, as written")
    collectors: list[CollectorStatus] = Field(default_factory=list, description="collectors whose heartbeat is alive")
    validation_queue: QueueStatus
    checkpoints_total: int | None = None
    latest_checkpoint: CheckpointOut | None = None
    best_checkpoint: CheckpointOut | None = None
    served_model: ServedModel | None = None
    errors: dict[str, str] = Field(
        default_factory=dict, description="sources (redis, database) whose data is missing, failed or stale, and why"
    )
    refreshed_at: dict[str, datetime | None] = Field(
        default_factory=dict, description="when each source was last read successfully (refreshed in the background)"
    )
    services: dict[str, Any] | None = Field(
        None, description="`microzero up`'s supervised services: running, pid, restarts, last exit code"
    )


class PromoteResponse(BaseModel):
    checkpoint_id: int
    step: int
    best_path: str
    sha256: str
    served: bool = Field(description="this API now serves the promoted checkpoint")


# ----------------------------------------------------------------------------- record views
# (from the registry's and the served model's records to the response models above)


def _record_dict(record: Any) -> dict[str, Any]:
    if is_dataclass(record) and not isinstance(record, type):
        data = asdict(record)
    elif isinstance(record, dict):
        data = dict(record)
    else:
        data = dict(vars(record))
    for key, value in data.items():
        if isinstance(value, Path):
            data[key] = str(value)
    return json_safe(data)


def checkpoint_out(record: Any) -> CheckpointOut | None:
    return None if record is None else CheckpointOut.model_validate(_record_dict(record))


def validation_out(record: Any) -> ValidationOut:
    return ValidationOut.model_validate(_record_dict(record))


def served_out(served: Any) -> ServedModel | None:
    if served is None:
        return None
    return ServedModel(
        checkpoint_id=served.checkpoint_id,
        step=served.step,
        path=str(served.path),
        sha256=served.sha256,
        device=str(served.device),
        loaded_at=served.loaded_at,
    )
