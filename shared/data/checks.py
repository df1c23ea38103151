"""From a DuckDB scan to :class:`Bars`, or to a :class:`BarImportError` naming every bad line.

The per-row checks already ran in SQL (:mod:`shared.data.sqlscan`); here the timestamps
become UTC, the order and date-range checks run in numpy, and, only if something is
wrong, the flagged lines are read back and explained one by one in Python. Explaining
in Python keeps the messages exact (the offending text, Python's csv diagnosis of a
broken quote) without a string per field for the millions of good rows.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from shared.data.bars import Bars
from shared.data.importers import (
    MAX_EXPLAINED,
    MAX_PRICE,
    BarImportError,
    Layout,
    local_to_utc,
)
from shared.data.sqlscan import COLUMNS, Scan

EARLIEST = np.datetime64("1970-01-01T00:00", "us")  # no FX bar files predate it; 0 is a typical bad epoch
FUTURE_SLACK = np.timedelta64(1, "D")  # beyond "now + a day" a timestamp is a typo, not a clock skew
Record = str | Sequence[str | None]  # a CSV line, or a Parquet row's fields as text
Fetch = Callable[[np.ndarray], "Mapping[int, Record]"]


def to_utc(scan: Scan, zone) -> np.ndarray:
    """``datetime64[us]`` UTC times; rows without their own offset are in ``zone``."""
    ts = scan.us.astype("datetime64[us]")
    if zone is not None:
        # datetime (for the zone lookup) only spans years 1-9999; outside that a row is out of range anyway
        local = ~scan.explicit & scan.ts_ok & (ts > np.datetime64("0002-01-01")) & (ts < np.datetime64("9999-01-01"))
        ts[local] = local_to_utc(ts[local], zone)
    return ts


def bars_or_refuse(scan: Scan, zone, source: str, fetch: Fetch) -> Bars:
    layout = scan.layout
    if len(scan.line) == 0:
        raise BarImportError(source, [], summary=f"no data rows (read as {layout.format})")
    ts = to_utc(scan, zone)
    latest = np.datetime64(datetime.now(UTC).replace(tzinfo=None), "us") + FUTURE_SLACK
    early, late = scan.ts_ok & (ts < EARLIEST), scan.ts_ok & (ts > latest)
    # Order: each readable timestamp against the previous readable one.
    readable = np.flatnonzero(scan.ts_ok)
    step = np.diff(ts[readable]).astype(np.int64)
    later, earlier = readable[1:][step <= 0], readable[:-1][step <= 0]
    bad = ~scan.ok | early | late
    bad[later] = True
    if not bad.any():
        return Bars(ts.astype("datetime64[ns]"), *(scan.values[c] for c in COLUMNS))

    flagged = np.flatnonzero(bad)
    shown = flagged[:MAX_EXPLAINED]
    previous = dict(zip(later.tolist(), earlier.tolist()))  # position → position it fails to follow
    wanted = {int(i) for i in shown} | {previous[int(i)] for i in shown if int(i) in previous}
    records = fetch(scan.line[sorted(wanted)])
    errors = []
    for i in shown.tolist():
        line = int(scan.line[i])
        fields = _split(records.get(line, ""), layout)
        reasons = [fields] if isinstance(fields, str) else []
        if not scan.ok[i] and not reasons and not isinstance(fields, str):
            reasons = explain(fields, layout, bool(scan.ts_ok[i])) or [
                f"cannot be read as {layout.format} fields (a quoted delimiter?)"
            ]
        text = _ts_text(fields, layout)
        if early[i]:
            reasons.append(f"timestamp {text!r} is before 1970-01-01 ({_utc(ts[i])} UTC)")
        if late[i]:
            reasons.append(f"timestamp {text!r} is more than a day in the future ({_utc(ts[i])} UTC)")
        if i in previous:
            j = previous[i]
            before = f"{layout.unit} {int(scan.line[j])}"
            if ts[i] == ts[j]:
                reasons.append(f"duplicate timestamp {text!r} (same instant as {before})")
            else:
                prev_text = _ts_text(_split(records.get(int(scan.line[j]), ""), layout), layout)
                reasons.append(f"non-increasing timestamp {text!r} ({before} has {prev_text!r})")
        errors.append((line, "; ".join(reasons)))
    raise BarImportError(source, errors, unit=layout.unit, bad_count=len(flagged))


def _utc(value: np.datetime64) -> str:
    return str(value.astype("datetime64[s]")).replace("T", " ")


def _split(record: Record, layout: Layout) -> list[str | None] | str:
    """A record's fields, or the reason a CSV line cannot be split into the layout's."""
    if not isinstance(record, str):
        return list(record)
    try:
        row: list[str | None] = list(next(csv.reader([record], delimiter=layout.delimiter, strict=True), []))
    except csv.Error as exc:
        return f"unparsable line: {exc}"
    if len(row) != layout.n_fields:
        return f"wrong number of fields: expected {layout.n_fields}, got {len(row)}"
    return row


def _ts_text(fields: list[str | None] | str, layout: Layout) -> str:
    if isinstance(fields, str):
        return "?"
    return " ".join((fields[c] or "").strip() for c in layout.ts_cols)


def explain(fields: list[str | None], layout: Layout, ts_ok: bool) -> list[str]:
    """Every per-row problem of one row, worded as the importer reports them."""
    reasons = []
    if not ts_ok:  # (SQL also leaves it unread when the line split wrongly, e.g. on a quoted delimiter)
        text = _ts_text(fields, layout)
        try:
            layout.parse_ts(text)
        except (ValueError, OverflowError) as exc:
            detail = "" if str(exc) == "unrecognised layout" else f": {exc}"
            reasons.append(f"bad timestamp {text!r} (expected {layout.ts_hint}){detail}")
    values = []
    for name, col in zip(COLUMNS, layout.value_cols):
        cell = "0" if col is None else fields[col]
        if cell is None:
            reasons.append(f"missing {name}")
            continue
        try:
            values.append(float(cell))
        except ValueError:
            reasons.append(f"non-numeric {name} {cell!r}")
    if len(values) == len(COLUMNS):
        reasons += value_problems(values)
    return reasons


def value_problems(values: Sequence[float]) -> list[str]:
    """The price/volume checks of one row (open, high, low, close, volume)."""
    o, h, lo, c, v = values
    named = list(zip(COLUMNS, values))
    infinite = [f"{name} ({x!r})" for name, x in named if not math.isfinite(x)]
    if infinite:
        return ["NaN or infinite " + ", ".join(infinite)]
    problems = []
    if non_positive := [f"{name}={x!r}" for name, x in named[:4] if x <= 0]:
        problems.append("non-positive price: " + ", ".join(non_positive))
    if huge := [f"{name}={x!r}" for name, x in named[:4] if x > MAX_PRICE]:
        problems.append(f"implausible price (above {MAX_PRICE:g}): " + ", ".join(huge))
    if h < lo:
        problems.append(f"high {h!r} < low {lo!r}")
    else:
        if not lo <= o <= h:
            problems.append(f"open {o!r} outside [low, high] = [{lo!r}, {h!r}]")
        if not lo <= c <= h:
            problems.append(f"close {c!r} outside [low, high] = [{lo!r}, {h!r}]")
    if v < 0:
        problems.append(f"negative volume {v!r}")
    return problems
