"""A streaming session: the bars an agent needs for its next decision and the position
held, advanced one bar (or a few) at a time.

The state keeps the newest ``max(bars_needed, bars_held + 1)`` bars -- the features'
warm-up and window, and every bar since the open trade's entry -- so the observation
built from it is exactly the one ``/v1/act`` builds from the full series (the features
of the window depend only on the last ``bars_needed`` bars, the position columns only
on the bars since the entry). It is plain data and serialises to JSON (never pickle);
:mod:`shared.serving.session_store` keeps it in Redis.

Rules of :func:`advance`, each a :class:`SessionConflict` when broken:
* new bars come strictly after the session's newest (a duplicate or an older bar is
  refused, naming the newest bar held);
* no bar is missing: consecutive bars are one bar interval apart (the interval the
  session was opened with), except across the FX weekend closure (Friday 20:00 to
  Sunday 23:00 UTC, generous for daylight saving and brokers' hours), or when the
  caller says ``accept_gap`` (a holiday);
* ``filled`` -- the action executed at the close of the previous newest bar -- must be
  legal for the position held (no BUY while long, no CLOSE while flat).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from shared.actions import LEGAL_BY_SIDE, Action, side_after
from shared.data.bars import OHLCV, Bars

MAX_SESSION_BARS = 20_000
_NS = 1_000_000_000


class SessionConflict(ValueError):
    """Bars or a fill that do not continue the session (-> 409)."""

    def __init__(self, message: str, newest_ts: np.datetime64, expected_ts: np.datetime64 | None = None) -> None:
        super().__init__(message)
        self.message, self.newest_ts, self.expected_ts = message, newest_ts, expected_ts


@dataclass(frozen=True)
class SessionState:
    id: str
    symbol: str
    bar_seconds: int
    side: int  # position held before the newest bar's decision
    bars_held: int
    ts: list[int]  # ns since the epoch, UTC
    open: list[float]
    high: list[float]
    low: list[float]
    close: list[float]
    volume: list[float]
    version: int = 0  # incremented by every advance; the store's compare-and-set token
    last: dict[str, Any] = field(default_factory=dict)  # {"request": digest, "response": {...}} of the latest post

    @property
    def newest_ts(self) -> np.datetime64:
        return np.datetime64(self.ts[-1], "ns")

    def bars(self) -> Bars:
        return Bars.from_arrays(np.array(self.ts, dtype="datetime64[ns]"), *(getattr(self, f) for f in OHLCV))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> SessionState:
        return cls(**json.loads(data))


def open_session(session_id: str, symbol: str, bars: Bars, side: int, bars_held: int, need: int) -> SessionState:
    """A session over `bars` (at least two), holding (`side`, `bars_held`) at the newest."""
    spacing = np.diff(bars.ts.astype(np.int64))
    values, counts = np.unique(spacing[spacing > 0], return_counts=True)
    if not len(values):
        raise ValueError("a session needs at least two bars to know its bar interval")
    interval = int(values[np.argmax(counts)])  # the most common spacing: weekends do not count
    state = SessionState(
        id=session_id,
        symbol=symbol,
        bar_seconds=max(1, interval // _NS),
        side=side,
        bars_held=bars_held,
        ts=[int(t) for t in bars.ts.astype(np.int64)],
        open=bars.open.tolist(),
        high=bars.high.tolist(),
        low=bars.low.tolist(),
        close=bars.close.tolist(),
        volume=bars.volume.tolist(),
    )
    return _trimmed(state, need)


def advance(
    state: SessionState,
    bars: Bars,
    need: int,
    *,
    filled: Action | None = None,
    position: tuple[int, int] | None = None,
    accept_gap: bool = False,
) -> SessionState:
    """The session after `bars` (strictly newer, no gap) and the fill of the previous decision."""
    newest = state.newest_ts
    first = bars.ts[0]
    if first <= newest:
        what = "duplicates" if first == newest else "is older than"
        raise SessionConflict(
            f"bars[0].ts {first} {what} the session's newest bar {newest}: send only bars after it", newest
        )
    if not accept_gap:
        _check_gaps(np.concatenate([[newest], bars.ts]), state.bar_seconds, newest)
    side, held = state.side, state.bars_held
    if filled is not None:
        if not LEGAL_BY_SIDE[side + 1, int(filled)]:
            raise SessionConflict(
                f"filled {filled.name} is not possible while {_describe(side)} at {newest}: "
                "report the action that was executed, or send 'position'",
                newest,
            )
        after = int(side_after(np.array(side), np.array(int(filled))))
        if after != side:  # a new trade (a reversal too) opened at the fill, or the trade closed
            held = 0
        side = after
    k = len(bars)
    held = held + k if side != 0 else 0
    if position is not None:
        side, held = position
    merged = replace(
        state,
        side=side,
        bars_held=held,
        ts=state.ts + [int(t) for t in bars.ts.astype(np.int64)],
        **{name: getattr(state, name) + getattr(bars, name).tolist() for name in OHLCV},
        version=state.version + 1,
    )
    if held + 1 > MAX_SESSION_BARS:
        raise SessionConflict(
            f"the trade has been held {held} bars; a session keeps at most {MAX_SESSION_BARS}: open a new one", newest
        )
    return _trimmed(merged, need)


def _trimmed(state: SessionState, need: int) -> SessionState:
    keep = max(need, state.bars_held + 1)
    if len(state.ts) <= keep:
        return state
    return replace(state, ts=state.ts[-keep:], **{name: getattr(state, name)[-keep:] for name in OHLCV})


def _check_gaps(ts: np.ndarray, bar_seconds: int, newest: np.datetime64) -> None:
    step = np.int64(bar_seconds) * _NS
    stamps = ts.astype(np.int64)
    for i in np.flatnonzero(np.diff(stamps) > step):
        missing = np.arange(stamps[i] + step, stamps[i + 1], step)
        open_ = missing[~_fx_weekend(missing)]
        if len(open_):
            expected = np.datetime64(int(open_[0]), "ns")
            raise SessionConflict(
                f"bar(s) missing: after {np.datetime64(int(stamps[i]), 'ns')} the next bar was due at {expected} "
                f"(bar interval {bar_seconds} s), got {np.datetime64(int(stamps[i + 1]), 'ns')}; send the missing "
                "bars first, or set accept_gap if the market was closed",
                newest,
                expected,
            )


def _fx_weekend(stamps_ns: np.ndarray) -> np.ndarray:
    """Whether each time lies in the FX weekend closure, Friday 20:00 to Sunday 23:00 UTC."""
    hours = stamps_ns // (3600 * _NS)
    weekday = (hours // 24 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    hour = hours % 24
    return ((weekday == 4) & (hour >= 20)) | (weekday == 5) | ((weekday == 6) & (hour < 23))


def _describe(side: int) -> str:
    return {1: "long", -1: "short", 0: "flat"}[side]
