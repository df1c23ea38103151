"""Bars as people have them -> :class:`shared.data.bars.Bars`, checked like the API's input.

:func:`to_bars` accepts a pandas DataFrame (a ``DatetimeIndex`` or a ``ts`` / ``time``
/ ``timestamp`` / ``date`` / ``datetime`` column; ``open``, ``high``, ``low``,
``close`` and optionally ``volume`` columns, any capitalisation), a ``Bars``, or a
sequence of bar records (dicts or :class:`shared.serving.schemas.Bar`). Naive
timestamps are taken as UTC; aware ones are converted to UTC. The checks are the
API's: finite prices in (0, 1e9), low <= open, close <= high, timestamps strictly
increasing -- the first violation is an :class:`ObservationError` naming the row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shared.data.bars import Bars
from shared.serving.observation import ObservationError

MAX_PRICE = 1e9
_TIME_COLUMNS = ("ts", "time", "timestamp", "date", "datetime")
_PRICES = ("open", "high", "low", "close")


def to_bars(data: Any) -> Bars:
    """`data` (DataFrame, Bars, or bar records) as checked Bars, oldest first."""
    if isinstance(data, Bars):
        bars = data
    elif hasattr(data, "columns") and hasattr(data, "index"):
        bars = _from_frame(data)
    elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
        bars = _from_records(data)
    else:
        raise TypeError(f"bars must be a pandas DataFrame, a Bars or a sequence of bar records, got {type(data)}")
    check_bars(bars)
    return bars


def check_bars(bars: Bars) -> None:
    """ObservationError for the first bar the API would refuse."""
    for name in _PRICES:
        values = getattr(bars, name)
        bad = np.flatnonzero(~((values > 0) & (values < MAX_PRICE)))  # NaN fails too
        if len(bad):
            i = int(bad[0])
            raise ObservationError(
                ("bars", i, name), f"{name} {values[i]!r} is not a finite price in (0, {MAX_PRICE:g})"
            )
    checks = (
        (bars.high < bars.low, "high", "high {high!r} < low {low!r}"),
        ((bars.open < bars.low) | (bars.open > bars.high), "open", "open {open!r} outside [low, high]"),
        ((bars.close < bars.low) | (bars.close > bars.high), "close", "close {close!r} outside [low, high]"),
    )
    for mask, field, message in checks:
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            values = {name: float(getattr(bars, name)[i]) for name in _PRICES}
            raise ObservationError(("bars", i, field), message.format(**values))
    if np.isnat(bars.ts).any():
        raise ObservationError(("bars", int(np.flatnonzero(np.isnat(bars.ts))[0]), "ts"), "missing timestamp")
    steps = np.flatnonzero(np.diff(bars.ts) <= np.timedelta64(0, "ns"))
    if len(steps):
        i = int(steps[0]) + 1
        raise ObservationError(
            ("bars", i, "ts"),
            f"bars[{i}].ts {bars.ts[i]} is not after bars[{i - 1}].ts {bars.ts[i - 1]}: timestamps must increase strictly",
        )


def _from_frame(frame: Any) -> Bars:
    import pandas as pd

    columns = {str(c).lower(): c for c in frame.columns}
    missing = [name for name in _PRICES if name not in columns]
    if missing:
        raise ObservationError(
            ("bars",), f"the DataFrame lacks column(s) {', '.join(missing)} (has {list(frame.columns)})"
        )
    time_column = next((columns[name] for name in _TIME_COLUMNS if name in columns), None)
    if time_column is not None:
        stamps = pd.DatetimeIndex(pd.to_datetime(frame[time_column]))
    elif isinstance(frame.index, pd.DatetimeIndex):
        stamps = frame.index
    else:
        raise ObservationError(
            ("bars", "ts"), "the DataFrame needs a DatetimeIndex or a ts/time/timestamp/date/datetime column"
        )
    if stamps.tz is not None:
        stamps = stamps.tz_convert("UTC").tz_localize(None)
    volume = frame[columns["volume"]].to_numpy(dtype=np.float64) if "volume" in columns else None
    o, h, lo, c = (frame[columns[name]].to_numpy(dtype=np.float64) for name in _PRICES)
    return Bars.from_arrays(stamps.to_numpy(dtype="datetime64[ns]"), o, h, lo, c, volume)


def _from_records(records: Sequence[Any]) -> Bars:
    rows = [r if isinstance(r, Mapping) else r.model_dump() for r in records]
    ts = [_utc_ns(r["ts"]) for r in rows]
    o, h, lo, c = ([float(r[name]) for r in rows] for name in _PRICES)
    volume = [float(r.get("volume") or 0.0) for r in rows]
    return Bars.from_arrays(np.array(ts, dtype="datetime64[ns]"), o, h, lo, c, volume)


def _utc_ns(value: Any) -> np.datetime64:
    """A datetime (naive = UTC), an ISO string or a numpy datetime64 -> datetime64[ns] UTC."""
    import pandas as pd

    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.to_datetime64().astype("datetime64[ns]")
