"""A small typed client of the microzero API (httpx), speaking the API's own pydantic
models (:mod:`shared.serving.schemas`).

>>> from shared.client import Client
>>> with Client("http://127.0.0.1:8000") as api:
...     answer = api.act(bars_df, position=(1, 12), symbol="EURUSD")   # POST /v1/act
...     session = api.open_session(bars_df, symbol="EURUSD")            # POST /v1/sessions
...     answer = session.push(next_bar_df, filled=answer.action)        # POST /v1/sessions/{id}/bars

Bars may be a pandas DataFrame, a :class:`shared.data.bars.Bars` or bar records (see
:func:`shared.serving.frames.to_bars`; naive timestamps are UTC). A non-2xx answer
raises :class:`ApiError` with the status and the server's message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from shared.serving.frames import to_bars
from shared.serving.schemas import (
    ActionName,
    ActRequest,
    ActResponse,
    BatchActRequest,
    BatchActResponse,
    Position,
    SessionBars,
    SessionCreate,
    SessionOut,
)

PositionLike = Position | tuple[int, int] | None


class ApiError(RuntimeError):
    """A non-2xx answer: `status`, the server's `message` and the decoded `body`."""

    def __init__(self, status: int, message: str, body: Any) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.body = status, message, body


class Client:
    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", *, timeout: float = 30.0, http: httpx.Client | None = None
    ) -> None:
        self.http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # ---- stateless
    def act(self, bars: Any, position: PositionLike = None, symbol: str | None = None) -> ActResponse:
        """``POST /v1/act`` in bars mode."""
        body = act_request(bars, position, symbol)
        return ActResponse.model_validate(self._post("/v1/act", body))

    def act_window(self, window: Any, position: PositionLike = None) -> ActResponse:
        """``POST /v1/act`` with a ready ``[64][15]`` observation."""
        body = ActRequest(window=np.asarray(window, dtype=np.float64).tolist(), position=_position(position))
        return ActResponse.model_validate(self._post("/v1/act", body))

    def act_batch(self, items: Sequence[ActRequest | tuple]) -> list[ActResponse]:
        """``POST /v1/act/batch``: `items` as ActRequests or ``(bars, position[, symbol])``; one search."""
        requests = [item if isinstance(item, ActRequest) else act_request(*item) for item in items]
        return BatchActResponse.model_validate(self._post("/v1/act/batch", BatchActRequest(items=requests))).items

    # ---- sessions
    def open_session(self, bars: Any, position: PositionLike = None, symbol: str | None = None) -> Session:
        body = SessionCreate(symbol=symbol, bars=to_bars(bars), position=_position(position))
        return Session(self, SessionOut.model_validate(self._post("/v1/sessions", body)))

    def session(self, session_id: str) -> Session:
        return Session(self, SessionOut.model_validate(self._request("GET", f"/v1/sessions/{session_id}")))

    # ---- read-only views
    def status(self) -> dict[str, Any]:
        return self._request("GET", "/status")

    def ready(self) -> dict[str, Any]:
        """``/readyz``'s checks (a 503 'not ready' is returned, not raised)."""
        return self.http.get("/readyz").json()

    # ---- plumbing
    def _post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, content=body.model_dump_json(exclude_none=True))

    def _request(self, method: str, path: str, content: str | None = None) -> Any:
        headers = {"content-type": "application/json"} if content is not None else None
        response = self.http.request(method, path, content=content, headers=headers)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            message = body.get("message") or body.get("detail") if isinstance(body, dict) else body
            raise ApiError(response.status_code, str(message), body)
        return None if response.status_code == 204 else response.json()


class Session:
    """A streaming session of the API; :attr:`state` is its latest answer."""

    def __init__(self, client: Client, state: SessionOut) -> None:
        self.client, self.state = client, state

    @property
    def id(self) -> str:
        return self.state.session_id

    @property
    def decision(self) -> ActResponse:
        return self.state.decision

    def push(
        self,
        bars: Any,
        filled: ActionName | None = None,
        position: PositionLike = None,
        accept_gap: bool = False,
    ) -> ActResponse:
        """Send the newest bar(s) and what was filled on the previous decision; the new decision."""
        body = SessionBars(bars=to_bars(bars), filled=filled, position=_position(position), accept_gap=accept_gap)
        self.state = SessionOut.model_validate(self.client._post(f"/v1/sessions/{self.id}/bars", body))
        return self.state.decision

    def close(self) -> None:
        self.client._request("DELETE", f"/v1/sessions/{self.id}")


def act_request(bars: Any, position: PositionLike = None, symbol: str | None = None) -> ActRequest:
    return ActRequest(bars=to_bars(bars), position=_position(position), symbol=symbol)


def _position(position: PositionLike) -> Position | None:
    if position is None or isinstance(position, Position):
        return position
    side, held = position
    return Position(side=side, bars_held=held)
