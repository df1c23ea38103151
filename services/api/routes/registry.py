"""The registry: checkpoints, validations, a checkpoint's validation equity curve, and
promoting a checkpoint to best."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from services.api import schemas as S
from services.api.deps import RegistryDep, State, registry_call, require_token
from shared.checkpoint_store import PromotionError
from shared.jsonsafe import JsonFloat
from shared.learning.checkpoint import CheckpointError

log = logging.getLogger(__name__)

router = APIRouter(tags=["registry"])


@router.get("/checkpoints", response_model=S.CheckpointPage, summary="Checkpoints, newest first")
def list_checkpoints(
    reg: RegistryDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=10**9),
    run_id: str | None = Query(None, max_length=200),
) -> S.CheckpointPage:
    records = registry_call(reg.list_checkpoints, run_id=run_id, limit=limit, offset=offset)
    total = registry_call(reg.count_checkpoints)
    return S.CheckpointPage(limit=limit, offset=offset, total=total, items=[S.checkpoint_out(r) for r in records])


@router.get(
    "/checkpoints/{checkpoint_id}",
    response_model=S.CheckpointOut,
    responses={404: {"description": "unknown checkpoint"}},
)
def get_checkpoint(reg: RegistryDep, checkpoint_id: int = PathParam(ge=0, le=2**62)) -> S.CheckpointOut | None:
    record = registry_call(reg.get_checkpoint, checkpoint_id)
    if record is None:
        raise HTTPException(404, f"checkpoint {checkpoint_id} is not in the registry")
    return S.checkpoint_out(record)


class EquityCurveOut(BaseModel):
    """The curve the validator stored (``services.validator.job.equity_curve``); the status page draws it."""

    checkpoint_id: int
    validation_id: int = Field(description="the validation that backtested it")
    split: str
    bars: int = Field(description="decision bars of the backtest")
    pips: list[JsonFloat | None] = Field(
        description="cumulative net pips, starting at 0, at evenly spaced bars (point i at bar "
        "round(i * bars / (len(pips) - 1))), the first and last included"
    )


@router.get(
    "/checkpoints/{checkpoint_id}/equity",
    response_model=EquityCurveOut,
    summary="The equity curve of a checkpoint's newest successful validation, downsampled",
    responses={404: {"description": "unknown checkpoint, or no validation of it stored a curve"}},
)
def checkpoint_equity(reg: RegistryDep, checkpoint_id: int = PathParam(ge=0, le=2**62)) -> EquityCurveOut:
    found = registry_call(reg.equity_curve, checkpoint_id)
    if found is None:
        raise HTTPException(404, f"checkpoint {checkpoint_id} has no validation with an equity curve")
    validation, equity = found
    return EquityCurveOut(
        checkpoint_id=checkpoint_id,
        validation_id=validation.id,
        split=validation.split,
        bars=int(equity.get("bars") or 0),
        pips=list(equity.get("pips") or []),
    )


@router.get("/validations", response_model=S.ValidationPage, summary="Validations, newest first")
def list_validations(
    reg: RegistryDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=10**9),
    checkpoint_id: int | None = Query(None, ge=0, le=2**62),
) -> S.ValidationPage:
    records = registry_call(reg.list_validations, limit=limit, offset=offset, checkpoint_id=checkpoint_id)
    return S.ValidationPage(
        limit=limit, offset=offset, checkpoint_id=checkpoint_id, items=[S.validation_out(r) for r in records]
    )


@router.post(
    "/checkpoints/{checkpoint_id}/promote",
    response_model=S.PromoteResponse,
    summary="Make a checkpoint the best one and serve it (Authorization: Bearer <pipeline.api_token>)",
    dependencies=[Depends(require_token)],
    responses={
        401: {"description": "missing or wrong bearer token"},
        403: {"description": "promotion disabled (no pipeline.api_token configured)"},
        404: {"description": "unknown checkpoint"},
        409: {"description": "the checkpoint file fails verification"},
    },
)
def promote(state: State, checkpoint_id: int = PathParam(ge=0, le=2**62)) -> S.PromoteResponse:
    """The one promotion path (``shared.checkpoint_store.promote``, as the validator's):
    under the best folder's lock, verify, copy to ``best.pt`` + history, record it in
    the registry; then serve it and publish it on the best channel."""
    reg = state.require_registry()
    record = registry_call(reg.get_checkpoint, checkpoint_id)
    if record is None:
        raise HTTPException(404, f"checkpoint {checkpoint_id} is not in the registry")
    try:
        served, promotion = state.promote(record)
    except (CheckpointError, PromotionError, OSError) as exc:
        raise HTTPException(409, f"checkpoint {checkpoint_id} fails verification: {exc}") from exc
    except HTTPException:
        raise
    except Exception as exc:  # the registry's write failed
        log.warning("promotion of checkpoint %s failed: %s", checkpoint_id, exc)
        raise HTTPException(503, f"the registry is unavailable: {type(exc).__name__}: {exc}") from exc
    log.info("promoted checkpoint %s (step %d) to %s", record.id, served.step, promotion.best_path)
    return S.PromoteResponse(
        checkpoint_id=record.id,
        step=served.step,
        best_path=str(promotion.best_path),
        sha256=served.sha256,
        served=True,
    )
