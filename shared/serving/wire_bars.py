"""Bars on the wire: a JSON list of bar objects, validated straight into columns.

A ``/v1/act`` body carries at least 183 bars. Validating each as a pydantic model (a
Python validator per bar) and then copying the models into arrays cost more than the
observation itself, so :data:`BarList` fields hold a :class:`shared.data.bars.Bars`
and validate in two ways:

* :func:`plain_bars`, the fast path: bars in the plain form -- objects with exactly the
  known keys, numbers as JSON numbers, ``ts`` as ``YYYY-MM-DDTHH:MM:SS[.ffffff]`` with
  ``Z`` or a ``+HH:MM`` offset -- become arrays at once and are checked with whole-array
  comparisons (the checks of :class:`shared.serving.schemas.Bar`: finite prices in
  (0, 1e9), low <= open, close <= high, volume >= 0, ts in [1970, 2200), strictly
  increasing);
* anything else, and any bar the fast path would refuse, goes through the per-bar
  models (:class:`~shared.serving.schemas.Bar`), so an error names the same bar and
  field with the same message as before, and unusual but valid input (another ISO
  8601 spelling, a number as a string) is still accepted.

Both paths give the same arrays for the same bars (tested): prices are the parsed JSON
floats, timestamps the microseconds of the given instant, in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import numpy as np
from pydantic import Field, GetCoreSchemaHandler
from pydantic_core import core_schema

from shared.data.bars import Bars

MAX_PRICE = 1e9
MAX_BARS = 5000
MIN_TS = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TS = datetime(2200, 1, 1, tzinfo=UTC)

_KEYS = frozenset(("ts", "open", "high", "low", "close", "volume"))
_REQUIRED = _KEYS - {"volume"}
_NUMBERS = frozenset((float, int))
_PLAIN_TS = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?)(?:Z|([+-])(\d\d):(\d\d))")
_MIN_US = np.datetime64(MIN_TS.replace(tzinfo=None), "us")
_MAX_US = np.datetime64(MAX_TS.replace(tzinfo=None), "us")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def plain_bars(items: Any, min_length: int = 1, max_length: int = MAX_BARS) -> Bars | None:
    """`items` (decoded JSON) as checked Bars when every bar is in the plain form and
    valid; None otherwise (the caller then validates bar by bar)."""
    if type(items) is not list or not max(min_length, 1) <= len(items) <= max_length:
        return None
    if not all(type(b) is dict and _REQUIRED <= b.keys() <= _KEYS for b in items):
        return None
    prices = [[b[name] for b in items] for name in ("open", "high", "low", "close")]
    volume = [b.get("volume") for b in items]
    if not {type(v) for column in prices for v in column} <= _NUMBERS:
        return None
    if not {type(v) for v in volume} <= {float, int, type(None)}:
        return None
    stamps = _timestamps([b["ts"] for b in items])
    if stamps is None:
        return None
    try:
        o, h, lo, c = (np.array(column, dtype=np.float64) for column in prices)
        v = np.array([x or 0.0 for x in volume], dtype=np.float64)
    except OverflowError:
        return None
    with np.errstate(invalid="ignore"):
        ok = (
            ((o > 0) & (o < MAX_PRICE) & (h > 0) & (h < MAX_PRICE)).all()
            and ((lo > 0) & (lo < MAX_PRICE) & (c > 0) & (c < MAX_PRICE)).all()
            and ((lo <= h) & (lo <= o) & (o <= h) & (lo <= c) & (c <= h)).all()
            and ((v >= 0) & np.isfinite(v)).all()
            and bool((stamps[0] >= _MIN_US) & (stamps[-1] < _MAX_US))
            and (np.diff(stamps) > np.timedelta64(0, "us")).all()
        )
    if not ok:
        return None
    return Bars(stamps.astype("datetime64[ns]"), o, h, lo, c, v)


def _timestamps(values: list[Any]) -> np.ndarray | None:
    """datetime64[us] UTC of plain ISO 8601 strings; None if any is not one."""
    matches = [_PLAIN_TS.fullmatch(s) if type(s) is str else None for s in values]
    if not all(matches):
        return None
    try:
        local = np.array([m[1] for m in matches], dtype="datetime64[us]")  # type: ignore[index]
    except ValueError:  # no such date or time (Feb 30, 25:00 ...)
        return None
    if all(m[2] is None for m in matches):  # type: ignore[index]
        return local
    minutes = []
    for m in matches:
        sign, hours, mins = m[2], m[3], m[4]  # type: ignore[index]
        if sign is None:
            minutes.append(0)
            continue
        if int(hours) > 23 or int(mins) > 59:
            return None
        minutes.append((-1 if sign == "-" else 1) * (int(hours) * 60 + int(mins)))
    return local - np.array(minutes, dtype="timedelta64[m]")


def bars_from_models(bars: list[Any]) -> Bars:
    """Validated :class:`~shared.serving.schemas.Bar` models -> Bars (microseconds, UTC);
    a ValueError names the first timestamp that does not increase."""
    for i in range(1, len(bars)):
        if bars[i].ts <= bars[i - 1].ts:
            raise ValueError(
                f"bars[{i}].ts {bars[i].ts.isoformat()} is not after bars[{i - 1}].ts "
                f"{bars[i - 1].ts.isoformat()}: timestamps must increase strictly"
            )
    ts = np.array([(b.ts - _EPOCH) // _MICROSECOND for b in bars], dtype="datetime64[us]").astype("datetime64[ns]")
    return Bars.from_arrays(
        ts,
        [b.open for b in bars],
        [b.high for b in bars],
        [b.low for b in bars],
        [b.close for b in bars],
        [b.volume or 0.0 for b in bars],
    )


def bars_to_wire(bars: Bars) -> list[dict[str, Any]]:
    """Bars -> the JSON bar objects (timestamps to the microsecond, ``Z``)."""
    stamps = np.datetime_as_string(bars.ts, unit="us")
    return [
        {"ts": f"{t}Z", "open": o, "high": h, "low": lo, "close": c, "volume": v}
        for t, o, h, lo, c, v in zip(
            stamps,
            bars.open.tolist(),
            bars.high.tolist(),
            bars.low.tolist(),
            bars.close.tolist(),
            bars.volume.tolist(),
            strict=True,
        )
    ]


class _BarListSchema:
    """The pydantic schema of a :data:`BarList`: JSON bar objects in, Bars out."""

    def __init__(self, min_length: int) -> None:
        self.min_length = min_length

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        from shared.serving.schemas import Bar

        min_length = self.min_length
        items = handler.generate_schema(Annotated[list[Bar], Field(min_length=min_length, max_length=MAX_BARS)])

        def validate(value: Any, by_model: Callable[[Any], Any]) -> Bars:
            if isinstance(value, Bars):  # from Python (shared.client): checked like any wire input
                value = bars_to_wire(value)
            fast = plain_bars(value, min_length)
            return fast if fast is not None else bars_from_models(by_model(value))

        return core_schema.no_info_wrap_validator_function(
            validate,
            items,
            serialization=core_schema.plain_serializer_function_ser_schema(bars_to_wire),
        )


BarList = Annotated[Bars, _BarListSchema(min_length=0)]
"""A field of bars: a JSON list of bar objects on the wire, a checked :class:`Bars` in Python."""
NonEmptyBarList = Annotated[Bars, _BarListSchema(min_length=1)]
