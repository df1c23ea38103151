"""Inference: ``POST /v1/act``, the best checkpoint's greedy-search action.

The endpoint is async: it builds the observation on the API's own observation threads
(never FastAPI's shared pool, where registry calls may wait on the database) and awaits
the inference thread's future, so waiting requests hold no thread.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
from fastapi import APIRouter, HTTPException

from services.api import schemas as S
from services.api.deps import State
from services.api.inference import (
    NoModelError,
    Observation,
    ObservationError,
    OverloadedError,
    act_names,
    bars_needed,
    observation_from_bars,
    observation_from_window,
)
from shared.config import Config
from shared.data.bars import Bars
from shared.jsonsafe import json_float

router = APIRouter(tags=["inference"])


@router.post(
    "/v1/act",
    response_model=S.ActResponse,
    summary="The best checkpoint's greedy-search action for a market state",
    responses={
        422: {"description": "malformed input; `message` says what and where"},
        503: {"description": "no model is loaded yet, or too many requests are waiting"},
    },
)
async def act(request: S.ActRequest, state: State) -> S.ActResponse:
    if state.holder.current is None:
        raise HTTPException(503, "no model is loaded yet: the registry has no loadable best checkpoint")
    loop = asyncio.get_running_loop()
    observation = await loop.run_in_executor(state.observation_pool, build_observation, request, state.config)
    try:
        result = await asyncio.wrap_future(state.engine.submit(observation))
    except OverloadedError as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from exc
    except NoModelError as exc:
        raise HTTPException(503, f"no model is loaded yet: {exc}") from exc
    policy = {name: float(result.policy[i]) for i, name in enumerate(S.ACTION_NAMES)}
    return S.ActResponse(
        action=S.ACTION_NAMES[result.action],
        action_index=result.action,
        policy=policy,
        value_pips=json_float(result.value),
        legal_actions=act_names(result.legal),
        checkpoint_id=result.checkpoint_id,
        model_step=result.step,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def build_observation(request: S.ActRequest, config: Config) -> Observation:
    position = request.position
    if request.window is not None:
        return observation_from_window(request.window, config, side=None if position is None else position.side)
    bars = request.bars
    assert bars is not None
    need = bars_needed(config)
    if len(bars) < need:  # checked here too so the message is the same as the replay's
        raise ObservationError(
            ("body", "bars"),
            f"{len(bars)} bars sent; at least {need} are needed "
            f"({need - config.env.window} warm-up bars for the features + a "
            f"{config.env.window}-bar window)",
        )
    ts = np.array([(b.ts - _EPOCH) // _MICROSECOND for b in bars], dtype="datetime64[us]").astype("datetime64[ns]")
    frame = Bars.from_arrays(
        ts,
        [b.open for b in bars],
        [b.high for b in bars],
        [b.low for b in bars],
        [b.close for b in bars],
        [b.volume or 0.0 for b in bars],
    )
    symbol = (request.symbol or config.pipeline.symbol).upper()
    side, held = (position.side, position.bars_held) if position is not None else (0, 0)
    return observation_from_bars(frame, side, held, symbol, config)
