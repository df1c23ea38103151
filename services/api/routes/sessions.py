"""Streaming sessions: ``POST /v1/sessions`` opens one with the recent bars and the
position; ``POST /v1/sessions/{id}/bars`` adds the newest bar(s) and the fill of the
previous decision and answers the decision for the newest bar -- the same answer
``/v1/act`` gives for the whole series (``shared.serving.session`` keeps exactly the
bars that answer depends on). Sessions are JSON in Redis with a TTL
(``pipeline.api_session_ttl_s``), shared by every API replica.

A post is stored only once it is answered, compare-and-set on the session's version:
two posts racing on one session cannot both advance it (the loser gets 409). Re-sending
the latest post unchanged (a retry after a lost answer) returns the stored answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import replace
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Response
from fastapi.responses import JSONResponse

from services.api import schemas as S
from services.api.deps import State
from services.api.inference import decisions, require_model
from services.api.json_body import FastJsonRoute
from shared.actions import Action
from shared.config import Config
from shared.serving.observation import Observation, bars_needed, observation_from_bars
from shared.serving.schemas import act_response
from shared.serving.session import SessionConflict, SessionState, advance, open_session
from shared.serving.session_store import SessionChanged, SessionStore

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], route_class=FastJsonRoute)

SessionId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="as returned by POST /v1/sessions")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such session (never opened, deleted, or expired)"},
    409: {"description": "bars or fill that do not continue the session: `detail` says why, `newest_ts` what it holds"},
    422: {"description": "malformed input; `message` says what and where"},
    503: {"description": "no model is loaded yet, Redis is unavailable, or too many requests are waiting"},
}


async def get_store(state: State) -> SessionStore:
    if state.redis is None:
        raise HTTPException(503, "streaming sessions need Redis (pipeline.redis_url / REDIS_URL)")
    return SessionStore(state.redis, state.keys.session_prefix, state.config.pipeline.api_session_ttl_s)


Store = Annotated[SessionStore, Depends(get_store)]


@router.post("", response_model=S.SessionOut, status_code=201, summary="Open a streaming session", responses=_ERRORS)
async def create_session(request: S.SessionCreate, state: State, store: Store) -> S.SessionOut:
    config = require_model(state.holder).config
    session, observation = await _run(state, _open, request, config)
    (decision,) = await decisions(state.engine, [observation])
    answer = act_response(decision)
    session = replace(session, last={"request": _digest(request), "response": answer.model_dump(mode="json")})
    await _run(state, _redis, store.create, session)
    return _out(session, answer, store.ttl_s)


@router.post(
    "/{session_id}/bars",
    response_model=S.SessionOut,
    summary="Add the newest bar(s) and the previous fill; the decision for the newest bar",
    responses=_ERRORS,
)
async def push_bars(session_id: SessionId, request: S.SessionBars, state: State, store: Store) -> Any:
    config = require_model(state.holder).config
    current = await _run(state, _load, store, session_id)
    digest = _digest(request)
    if current.last.get("request") == digest:  # a retry of the latest post: its stored answer
        return _out(current, S.ActResponse.model_validate(current.last["response"]), store.ttl_s)
    try:
        session, observation = await _run(state, _advance, current, request, config)
    except SessionConflict as exc:
        return _conflict(str(exc), exc.newest_ts, exc.expected_ts)
    (decision,) = await decisions(state.engine, [observation])
    answer = act_response(decision)
    session = replace(session, last={"request": digest, "response": answer.model_dump(mode="json")})
    try:
        await _run(state, _redis, store.replace, current.version, session)
    except SessionChanged as exc:
        return _conflict(str(exc), current.newest_ts)
    return _out(session, answer, store.ttl_s)


@router.get(
    "/{session_id}", response_model=S.SessionOut, summary="A session and its latest decision", responses=_ERRORS
)
async def get_session(session_id: SessionId, state: State, store: Store) -> S.SessionOut:
    current = await _run(state, _load, store, session_id)
    ttl = await _run(state, _redis, store.ttl, session_id)
    return _out(current, S.ActResponse.model_validate(current.last["response"]), ttl)


@router.delete("/{session_id}", status_code=204, summary="Close a session", responses=_ERRORS)
async def delete_session(session_id: SessionId, state: State, store: Store) -> Response:
    if not await _run(state, _redis, store.delete, session_id):
        raise HTTPException(404, f"no session {session_id} (never opened, deleted, or expired)")
    return Response(status_code=204)


# ----------------------------------------------------------------------------- helpers (run on the observation threads)


async def _run(state: State, fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(state.observation_pool, fn, *args)


def _redis(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (SessionChanged, HTTPException):
        raise
    except Exception as exc:  # noqa: BLE001 -- Redis down or timing out
        raise HTTPException(503, f"the session store (Redis) is unavailable: {type(exc).__name__}: {exc}") from exc


def _load(store: SessionStore, session_id: str) -> SessionState:
    session = _redis(store.get, session_id)
    if session is None:
        raise HTTPException(404, f"no session {session_id} (never opened, deleted, or expired)")
    return session


def _open(request: S.SessionCreate, config: Config) -> tuple[SessionState, Observation]:
    bars = request.bars
    symbol = (request.symbol or config.pipeline.symbol).upper()
    position = request.position or S.Position()
    observation = observation_from_bars(bars, position.side, position.bars_held, symbol, config)  # validates first
    session = open_session(
        secrets.token_urlsafe(16), symbol, bars, position.side, position.bars_held, bars_needed(config)
    )
    return session, observation


def _advance(current: SessionState, request: S.SessionBars, config: Config) -> tuple[SessionState, Observation]:
    override = None if request.position is None else (request.position.side, request.position.bars_held)
    session = advance(
        current,
        request.bars,
        bars_needed(config),
        filled=None if request.filled is None else Action[request.filled],
        position=override,
        accept_gap=request.accept_gap,
    )
    observation = observation_from_bars(session.bars(), session.side, session.bars_held, session.symbol, config)
    return session, observation


def _digest(request: Any) -> str:
    return hashlib.sha256(request.model_dump_json().encode()).hexdigest()


def _iso(ts: np.datetime64 | None) -> str | None:
    return None if ts is None else f"{np.datetime_as_string(ts, unit='us')}Z"


def _conflict(message: str, newest: np.datetime64, expected: np.datetime64 | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=409, content={"detail": message, "newest_ts": _iso(newest), "expected_ts": _iso(expected)}
    )


def _out(session: SessionState, answer: S.ActResponse, ttl_s: int) -> S.SessionOut:
    return S.SessionOut(
        session_id=session.id,
        symbol=session.symbol,
        newest_ts=_iso(session.newest_ts),
        position=S.Position(side=session.side, bars_held=session.bars_held),
        bars_kept=len(session.ts),
        bar_seconds=session.bar_seconds,
        expires_in_s=ttl_s,
        decision=answer,
    )
