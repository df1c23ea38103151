"""The JSON wire models of inference: ``/v1/act``, ``/v1/act/batch`` and the streaming
sessions (pydantic v2), shared by the API (``services/api``) and :mod:`shared.client`.

Every request model forbids unknown fields and non-finite numbers, so a typo or a
NaN is a 422 naming the field, never a silent default or a 500. Checks that depend on
the configuration (how many bars the features need, the window size) happen in
:mod:`shared.serving.observation` and are reported in the same 422 format.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.jsonsafe import JsonFloat, json_float
from shared.serving.decide import ACTION_NAMES, Decision
from shared.serving.wire_bars import MAX_BARS, MAX_PRICE, MAX_TS, MIN_TS, BarList, NonEmptyBarList

ActionName = Literal["HOLD", "BUY", "SELL", "CLOSE"]

# Bounds that keep every later computation finite and every timestamp representable as
# numpy datetime64[ns] (which ends in 2262): MAX_PRICE, MAX_BARS, MIN_TS, MAX_TS (wire_bars).
MAX_BATCH = 256

Price = Annotated[float, Field(gt=0, lt=MAX_PRICE, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Symbol = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,32}$")]

_EXAMPLE_BARS: list[Any] = [
    {"ts": "2024-03-04T10:00:00Z", "open": 1.0841, "high": 1.0852, "low": 1.0838, "close": 1.0849, "volume": 1520},
    {"ts": "2024-03-04T11:00:00Z", "open": 1.0849, "high": 1.0856, "low": 1.0843, "close": 1.0845},
    "... at least 183 bars in all (119 warm-up bars of the features + the 64-bar window)",
]


# ----------------------------------------------------------------------------- /v1/act


class Bar(BaseModel):
    """One OHLC bar. Prices must be positive and finite, with low <= open, close <= high."""

    model_config = ConfigDict(extra="forbid")

    ts: AwareDatetime = Field(
        description="bar time, ISO 8601 with a UTC offset (e.g. 2024-03-04T10:00:00Z or +01:00)",
    )
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(None, description="ignored by the model")

    @model_validator(mode="after")
    def _consistent(self) -> Bar:
        if not MIN_TS <= self.ts < MAX_TS:
            raise ValueError(f"ts {self.ts.isoformat()} is outside [{MIN_TS.year}, {MAX_TS.year})")
        if self.high < self.low:
            raise ValueError(f"high {self.high!r} < low {self.low!r}")
        for name in ("open", "close"):
            price = getattr(self, name)
            if not self.low <= price <= self.high:
                raise ValueError(f"{name} {price!r} outside [low, high] = [{self.low!r}, {self.high!r}]")
        return self


class Position(BaseModel):
    """The position held before the newest bar's decision.

    A trade with ``side`` != 0 is assumed to have been opened (one unit, filled at the
    bar's close, spread paid) at the close of the bar ``bars_held`` bars before the
    newest one, and held since.
    """

    model_config = ConfigDict(extra="forbid")

    side: Literal[-1, 0, 1] = Field(0, description="-1 short, 0 flat, 1 long")
    bars_held: int = Field(0, ge=0, le=1_000_000, description=">= 1 when side != 0, else 0")

    @model_validator(mode="after")
    def _held_matches_side(self) -> Position:
        if self.side != 0 and self.bars_held < 1:
            raise ValueError(f"bars_held must be >= 1 when side is {self.side} (an open trade), got {self.bars_held}")
        if self.side == 0 and self.bars_held != 0:
            raise ValueError(f"bars_held must be 0 when flat (side 0), got {self.bars_held}")
        return self


_ACT_EXAMPLES: list[Any] = [
    {"bars": _EXAMPLE_BARS, "position": {"side": 1, "bars_held": 12}, "symbol": "EURUSD"},
    {"window": [[0.5] * 9 + [0.0] * 6, "... 64 rows of 15 numbers, oldest first"]},
]


class ActRequest(BaseModel):
    """Either ``bars`` (raw OHLC; the API builds the observation) or ``window`` (a ready observation).

    * ``bars`` mode: at least warm-up (2L-1 = 119) + window (64) = 183 bars, oldest
      first, strictly increasing ``ts``, at most 5000. The market features are computed
      from them and the 6 position columns are rebuilt by replaying the trading
      environment: a Buy/Sell at the entry bar given by ``position`` then Holds, so
      P&L, drawdown and holding time are exactly what the agent saw in training.
      ``position.bars_held`` must not put the entry before the first bar sent.
    * ``window`` mode: the full observation ``[64][15]`` (9 market features then the 6
      position-state columns, oldest bar first), every value in [-1, 1]. The position
      side is read from the newest row's column 9; ``position``, if given, must agree.
      (A ``[64][9]`` market-only window is refused: without the entry price the P&L
      and drawdown columns cannot be computed honestly; send ``bars`` instead.)
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": _ACT_EXAMPLES},
    )

    bars: BarList | None = Field(None, description=f"OHLC bars, oldest first (at most {MAX_BARS})")
    window: list[Annotated[list[FiniteFloat], Field(max_length=256)]] | None = Field(
        None, max_length=4096, description="ready observation [window][15], oldest bar first"
    )
    position: Position | None = Field(None, description="position before this decision (default flat)")
    symbol: Symbol | None = Field(None, description="pip size and spread from config.market (bars mode)")

    @model_validator(mode="after")
    def _one_input(self) -> ActRequest:
        if (self.bars is None) == (self.window is None):
            raise ValueError("send exactly one of 'bars' (OHLC bars) or 'window' (a [64][15] observation)")
        return self


class ActResponse(BaseModel):
    action: ActionName = Field(description="the action the greedy search chose")
    action_index: int = Field(ge=0, le=3, description="0 HOLD, 1 BUY, 2 SELL, 3 CLOSE")
    policy: dict[ActionName, float] = Field(description="improved policy of the search; 0 for illegal actions")
    value_pips: JsonFloat = Field(description="the search's root value, in pips")
    legal_actions: list[ActionName]
    checkpoint_id: int | None = Field(description="registry id of the checkpoint that answered")
    model_step: int = Field(description="learner step of that checkpoint")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "action": "HOLD",
                    "action_index": 0,
                    "policy": {"HOLD": 0.61, "BUY": 0.0, "SELL": 0.17, "CLOSE": 0.22},
                    "value_pips": 3.4,
                    "legal_actions": ["HOLD", "SELL", "CLOSE"],
                    "checkpoint_id": 12,
                    "model_step": 12000,
                }
            ]
        }
    )


# ----------------------------------------------------------------------------- /v1/act/batch


class BatchActRequest(BaseModel):
    """Many states (e.g. one per symbol) answered by one batched search, in order."""

    model_config = ConfigDict(extra="forbid")

    items: list[ActRequest] = Field(min_length=1, max_length=MAX_BATCH, description="each as a /v1/act body")


class BatchActResponse(BaseModel):
    items: list[ActResponse] = Field(description="one answer per item, in the order sent")


# ----------------------------------------------------------------------------- sessions


class SessionCreate(BaseModel):
    """Open a streaming session: the recent bars (as for ``/v1/act``) and the position held."""

    model_config = ConfigDict(extra="forbid")

    symbol: Symbol | None = Field(None, description="pip size and spread from config.market (default pipeline.symbol)")
    bars: NonEmptyBarList = Field(description="OHLC bars, oldest first (>= 183)")
    position: Position | None = Field(None, description="position before the newest bar's decision (default flat)")


class SessionBars(BaseModel):
    """The newest bar(s) of a session, and what was filled on the previous decision.

    ``filled``: the action executed at the close of the session's newest bar before
    these (the fill of the decision answered for it); null = nothing was executed
    (HOLD). ``position`` instead replaces the server's position outright (a
    reconciliation with the broker): the position held before the newest bar sent
    here is decided. Bars must continue the session: strictly after its newest bar,
    with no missing bar (the FX weekend excepted) unless ``accept_gap`` is true
    (a holiday). A conflict is a 409 that says what the session holds.
    """

    model_config = ConfigDict(extra="forbid")

    bars: NonEmptyBarList = Field(description="new bars, oldest first")
    filled: ActionName | None = Field(None, description="action filled at the previous newest bar's close")
    position: Position | None = Field(None, description="override: the position before the newest bar's decision")
    accept_gap: bool = Field(False, description="accept missing bars before these (a market holiday)")

    @model_validator(mode="after")
    def _one_position(self) -> SessionBars:
        if self.filled is not None and self.position is not None:
            raise ValueError("send 'filled' (what was executed) or 'position' (an override), not both")
        return self


class SessionOut(BaseModel):
    session_id: str
    symbol: str
    newest_ts: datetime = Field(description="the newest bar the session holds")
    position: Position = Field(description="the position the decision was made for")
    bars_kept: int = Field(description="bars the server keeps for this session")
    bar_seconds: int = Field(description="the session's bar interval, inferred from the bars it was opened with")
    expires_in_s: int = Field(description="seconds the session lives without another request")
    decision: ActResponse = Field(description="the decision for the newest bar")


# ----------------------------------------------------------------------------- conversions


def act_response(decision: Decision) -> ActResponse:
    return ActResponse(
        action=ACTION_NAMES[decision.action],
        action_index=int(decision.action),
        policy=decision.policy_by_name,
        value_pips=json_float(decision.value),
        legal_actions=[a.name for a in decision.legal_actions],
        checkpoint_id=decision.checkpoint.id,
        model_step=decision.checkpoint.step,
    )
