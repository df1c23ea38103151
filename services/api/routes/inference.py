"""Inference: ``POST /v1/act`` and ``POST /v1/act/batch``, the best checkpoint's
greedy-search decisions.

The endpoints are async: they build observations on the API's own observation threads
(never FastAPI's shared pool, where registry calls may wait on the database) and await
the inference thread's future, so waiting requests hold no thread. A batch's states
are searched together, in one batched search.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from services.api import schemas as S
from services.api.deps import State
from services.api.inference import decisions, require_model
from services.api.json_body import FastJsonRoute
from shared.config import Config
from shared.serving.observation import (
    Observation,
    ObservationError,
    bars_needed,
    observation_from_bars,
    observation_from_window,
)
from shared.serving.schemas import act_response

router = APIRouter(tags=["inference"], route_class=FastJsonRoute)

_ERRORS: dict[int | str, dict] = {
    422: {"description": "malformed input; `message` says what and where"},
    503: {"description": "no model is loaded yet, or too many requests are waiting"},
}


@router.post(
    "/v1/act",
    response_model=S.ActResponse,
    summary="The best checkpoint's greedy-search action for a market state",
    responses=_ERRORS,
)
async def act(request: S.ActRequest, state: State) -> S.ActResponse:
    config = require_model(state.holder).config
    loop = asyncio.get_running_loop()
    observation = await loop.run_in_executor(state.observation_pool, build_observation, request, config)
    (decision,) = await decisions(state.engine, [observation])
    return act_response(decision)


@router.post(
    "/v1/act/batch",
    response_model=S.BatchActResponse,
    summary="Decisions for many states (e.g. one per symbol) from one batched search",
    responses=_ERRORS,
)
async def act_batch(request: S.BatchActRequest, state: State) -> S.BatchActResponse:
    config = require_model(state.holder).config
    loop = asyncio.get_running_loop()
    observations = await loop.run_in_executor(state.observation_pool, build_observations, request.items, config)
    answers = await decisions(state.engine, observations)
    return S.BatchActResponse(items=[act_response(d) for d in answers])


def build_observations(items: list[S.ActRequest], config: Config) -> list[Observation]:
    out = []
    for i, item in enumerate(items):
        try:
            out.append(build_observation(item, config))
        except ObservationError as exc:
            raise exc.at("items", i) from exc
    return out


def build_observation(request: S.ActRequest, config: Config) -> Observation:
    position = request.position
    if request.window is not None:
        return observation_from_window(request.window, config, side=None if position is None else position.side)
    bars = request.bars
    assert bars is not None
    need = bars_needed(config)
    if len(bars) < need:  # checked before converting the bars; the message is the observation's
        raise ObservationError(
            ("bars",),
            f"{len(bars)} bars sent; at least {need} are needed "
            f"({need - config.env.window} warm-up bars for the features + a "
            f"{config.env.window}-bar window)",
        )
    symbol = (request.symbol or config.pipeline.symbol).upper()
    side, held = (position.side, position.bars_held) if position is not None else (0, 0)
    return observation_from_bars(bars, side, held, symbol, config)
