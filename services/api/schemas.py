"""Request and response models of the HTTP API (pydantic v2).

Every request model forbids unknown fields and non-finite numbers, so a typo or a
NaN is a 422 naming the field, never a silent default or a 500. Checks that depend on
the configuration (how many bars the features need, the window size) happen in
:mod:`services.api.inference` and are reported in the same 422 format.

JSON has no literal for infinities or NaN; where an output number may be non-finite
(a profit factor without losing trades, the ``-inf`` score of a checkpoint that never
traded) it is sent as the string ``"inf"`` or ``"-inf"``, and NaN as ``null`` -- the
rule of ``shared.jsonsafe``, which the registry's JSON columns follow too.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from shared.actions import Action
from shared.jsonsafe import JsonFloat, json_safe

ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in Action)  # HOLD, BUY, SELL, CLOSE
ActionName = Literal["HOLD", "BUY", "SELL", "CLOSE"]

# Bounds that keep every later computation finite and every timestamp representable as
# numpy datetime64[ns] (which ends in 2262).
MAX_PRICE = 1e9
MAX_BARS = 5000
MIN_TS = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TS = datetime(2200, 1, 1, tzinfo=UTC)

Price = Annotated[float, Field(gt=0, lt=MAX_PRICE, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

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

    bars: list[Bar] | None = Field(None, max_length=MAX_BARS, description="OHLC bars, oldest first")
    window: list[Annotated[list[FiniteFloat], Field(max_length=256)]] | None = Field(
        None, max_length=4096, description="ready observation [window][15], oldest bar first"
    )
    position: Position | None = Field(None, description="position before this decision (default flat)")
    symbol: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]{1,32}$", description="pip size and spread from config.market (bars mode)"
    )

    @model_validator(mode="after")
    def _one_input(self) -> ActRequest:
        if (self.bars is None) == (self.window is None):
            raise ValueError("send exactly one of 'bars' (OHLC bars) or 'window' (a [64][15] observation)")
        if self.bars is not None:
            for i in range(1, len(self.bars)):
                if self.bars[i].ts <= self.bars[i - 1].ts:
                    raise ValueError(
                        f"bars[{i}].ts {self.bars[i].ts.isoformat()} is not after bars[{i - 1}].ts "
                        f"{self.bars[i - 1].ts.isoformat()}: timestamps must increase strictly"
                    )
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
