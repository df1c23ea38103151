"""DuckDB reads, types and checks a bar file in one vectorised pass.

Why lines, not DuckDB's CSV columns: a refused file must name the *line* of each bad
row, and DuckDB's typed CSV reader skips or aborts on malformed rows without saying
where good rows came from. Read as one text column ``WITH ORDINALITY``, every line
(blank ones too, as NULL) keeps its 1-based number; splitting and typing then happen in
SQL. Python only ever holds the result columns, about 60 bytes a bar, never a string
per field.

Each row comes back with ``ok`` (it passed every per-row check of
:mod:`shared.data.importers`) and ``ts_ok`` (its timestamp could be read); the order and
date-range checks need UTC times and run in numpy (:mod:`shared.data.checks`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from shared.data.importers import (
    EPOCH_MS_RE,
    EPOCH_S_RE,
    MAX_PRICE,
    BarImportError,
    Layout,
    parquet_layout,
)

COLUMNS = ("open", "high", "low", "close", "volume")
_US_PER_MINUTE = 60_000_000
_BLANKS = " \t\f\v\r"  # a line of only these is blank: skipped, though it keeps its number


class NotUtf8(Exception):
    """DuckDB met bytes that are not UTF-8: the caller retries with a transcoded copy."""


@dataclass(frozen=True)
class Scan:
    """One bar file read by DuckDB: an entry per non-blank data line, in file order."""

    layout: Layout
    line: np.ndarray  # int64: 1-based line (CSV, header counted) or row (Parquet) number
    us: np.ndarray  # int64 µs since the epoch; UTC where ``explicit``, else as written
    explicit: np.ndarray  # bool: the row named its own UTC offset
    ts_ok: np.ndarray  # bool: the timestamp was read
    ok: np.ndarray  # bool: the row passed every per-row check
    values: dict[str, np.ndarray]  # float64 open, high, low, close, volume


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")  # a CLI import draws its own progress bar
    return con


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _lines_sql(path: Path) -> str:
    # chr(0) as delimiter and no quoting: each line is one VARCHAR, blank lines are NULL.
    return (
        f"SELECT n, line FROM read_csv({_literal(str(path))}, columns = {{'line': 'VARCHAR'}}, header = false, "
        "delim = chr(0), quote = '', escape = '', auto_detect = false) WITH ORDINALITY AS t(line, n)"
    )


def _timestamp_sql(layout: Layout, typed: str) -> str:
    """Add ``us`` (µs since the epoch as written; NULL when unreadable) and ``off`` (UTC
    offset in minutes, or NULL) to ``typed``'s rows, read from their timestamp text ``t``.

    DuckDB's strptime takes the usual spellings fast; the rest go through the layout's
    regular expression, which accepts the variants (fractions, offsets) and, through
    ``try(make_timestamp(...))``, turns impossible dates into NULL.
    """
    pattern = layout.ts_pattern
    names = sorted(pattern.groupindex, key=pattern.groupindex.__getitem__)
    flags = "'i'" if pattern.flags & re.IGNORECASE else "''"
    match = f"regexp_extract(t, {_literal('^(?:' + pattern.pattern + ')$')}, {names!r}, {flags})"
    part = lambda g: f"TRY_CAST(nullif(r.{g}, '') AS BIGINT)"  # noqa: E731
    stamp = (
        f"epoch_us(try(make_timestamp({part('Y')}, {part('Mo')}, {part('D')}, coalesce({part('h')}, 0), "
        f"coalesce({part('mi')}, 0), coalesce({part('s')}, 0)::DOUBLE)))"
    )
    if "f" in names:  # a fraction of 1-9 digits: its first six are microseconds
        stamp += " + coalesce(TRY_CAST(left(rpad(nullif(r.f, ''), 6, '0'), 6) AS BIGINT), 0)"
    offset = "NULL"
    if "z" in names:
        digits = "replace(r.z, ':', '')"
        offset = (
            "CASE WHEN r.z = '' THEN NULL WHEN upper(r.z) IN ('Z', 'UTC', 'GMT') THEN 0 "
            f"ELSE (CASE WHEN left(r.z, 1) = '-' THEN -1 ELSE 1 END) * "
            f"(TRY_CAST(substr({digits}, 2, 2) AS INT) * 60 + TRY_CAST(substr({digits}, 4, 2) AS INT)) END"
        )
    if layout.epoch:  # Unix seconds (9-10 digits) or milliseconds (12-13 digits), UTC
        seconds, millis = _literal(EPOCH_S_RE), _literal(EPOCH_MS_RE)
        stamp = (
            f"CASE WHEN regexp_full_match(t, {seconds}) THEN CAST(round(t::DOUBLE * 1e6) AS BIGINT) "
            f"WHEN regexp_full_match(t, {millis}) THEN t::BIGINT * 1000 ELSE {stamp} END"
        )
        offset = f"CASE WHEN regexp_full_match(t, {seconds}) OR regexp_full_match(t, {millis}) THEN 0 ELSE {offset} END"
    fast = f"try_strptime(t, {list(layout.fast_formats)!r})" if layout.fast_formats else "NULL::TIMESTAMP"
    # CASE evaluates a branch only for the rows that reach it: the regex runs on the few
    # rows strptime did not take.
    return (
        f"SELECT * EXCLUDE (fast, r), CASE WHEN fast IS NOT NULL THEN epoch_us(fast) ELSE {stamp} END AS us, "
        f"CASE WHEN fast IS NULL THEN {offset} END AS off FROM ("
        f"SELECT *, CASE WHEN fast IS NULL THEN {match} END AS r FROM ("
        f"SELECT *, {fast} AS fast FROM ({typed})))"
    )


_CHECKS = (
    "isfinite(open) AND isfinite(high) AND isfinite(low) AND isfinite(close) AND isfinite(volume) "
    f"AND least(open, high, low, close) > 0 AND greatest(open, high, low, close) <= {MAX_PRICE!r} "
    "AND high >= low AND open BETWEEN low AND high AND close BETWEEN low AND high AND volume >= 0"
)


def _checked_sql(typed: str, layout: Layout, text_ts: bool) -> str:
    """From ``typed`` (n, shaped, t or us/off, open..volume), the rows as :class:`Scan` wants them."""
    if text_ts:
        typed = _timestamp_sql(layout, typed)
    values = ", ".join(f"coalesce({c}, 'nan'::DOUBLE) AS {c}" for c in COLUMNS)
    return (
        f"SELECT n::BIGINT AS line, coalesce(us - coalesce(off, 0)::BIGINT * {_US_PER_MINUTE}, 0)::BIGINT AS us, "
        "off IS NOT NULL AS explicit, coalesce(shaped AND us IS NOT NULL, false) AS ts_ok, "
        f"coalesce(shaped AND us IS NOT NULL AND {_CHECKS}, false) AS ok, {values} FROM ({typed})"
    )


def _run(sql: str, layout: Layout, source: str) -> Scan:
    con = _connect()
    try:
        cols = con.execute(sql).fetchnumpy()
    except duckdb.InvalidInputException as exc:
        if "unicode" in str(exc).lower():
            raise NotUtf8(str(exc)) from None
        # DuckDB's own words: where (e.g. "CSV Error on Line: 3") and why, without the line's text
        said = [x for x in str(exc).splitlines() if x.strip() and not x.startswith("Original Line")]
        raise BarImportError(source, [], summary=f"DuckDB cannot read it: {'; '.join(said[:2])}") from None
    finally:
        con.close()
    line = np.asarray(cols["line"], dtype=np.int64)
    if len(line) > 1 and not (np.diff(line) > 0).all():  # DuckDB keeps scan order; never assume it silently
        order = np.argsort(line, kind="stable")
        cols = {k: np.asarray(v)[order] for k, v in cols.items()}
        line = line[order]
    return Scan(
        layout,
        line,
        np.asarray(cols["us"], dtype=np.int64),
        np.asarray(cols["explicit"], dtype=bool),
        np.asarray(cols["ts_ok"], dtype=bool),
        np.asarray(cols["ok"], dtype=bool),
        {c: np.ascontiguousarray(cols[c], dtype=np.float64) for c in COLUMNS},
    )


def scan_csv(path: Path, layout: Layout, source: str) -> Scan:
    """Split, type and check every data line of a UTF-8 text file."""
    field = lambda k: f"p[{k + 1}]"  # noqa: E731  (SQL lists count from 1)
    ts = " || ' ' || ".join(f"trim({field(c)})" for c in layout.ts_cols)
    values = ", ".join(
        f"TRY_CAST({field(c)} AS DOUBLE) AS {name}" if c is not None else f"0.0::DOUBLE AS {name}"
        for name, c in zip(COLUMNS, layout.value_cols)
    )
    # A field wholly in double quotes loses them; any other quote makes the row bad, and
    # Python's csv module then explains it.
    unquote = "list_transform(p, lambda x: CASE WHEN regexp_full_match(x, '\\s*\"[^\"]*\"\\s*') THEN trim(trim(x), '\"') ELSE x END)"
    split = (
        f"SELECT n, q, CASE WHEN q THEN {unquote} ELSE p END AS p FROM ("
        f"SELECT n, contains(line, '\"') AS q, string_split(line, {_literal(layout.delimiter)}) AS p "
        f"FROM ({_lines_sql(path)}) WHERE n > {layout.data_start} AND line IS NOT NULL "
        f"AND trim(line, {_literal(_BLANKS)}) <> '')"
    )
    shaped = (
        f"len(p) = {layout.n_fields} AND (NOT q OR NOT list_bool_or(list_transform(p, lambda x: contains(x, '\"'))))"
    )
    typed = f"SELECT n, {shaped} AS shaped, {ts} AS t, {values} FROM ({split})"
    return _run(_checked_sql(typed, layout, text_ts=True), layout, source)


def csv_lines(path: Path, numbers: np.ndarray) -> dict[int, str]:
    """The text of the given lines (a second scan, only for a file being refused)."""
    con = _connect()
    try:
        con.register("wanted", {"n": np.asarray(numbers, dtype=np.int64)})
        rows = con.execute(f"SELECT n, line FROM ({_lines_sql(path)}) WHERE n IN (SELECT n FROM wanted)").fetchall()
    finally:
        con.close()
    return {int(n): line or "" for n, line in rows}


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def scan_parquet(path: Path, source: str, columns: Mapping[str, str] | None) -> Scan:
    """Type and check every row of a Parquet file; ``Scan.line`` holds 1-based row numbers."""
    con = _connect()
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM read_parquet({_literal(str(path))})").fetchall()
    except duckdb.Error as exc:
        raise BarImportError(
            source, [], summary=f"DuckDB cannot read it as Parquet: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        con.close()
    names, types = [row[0] for row in described], {row[0]: row[1].upper() for row in described}
    layout = parquet_layout(names, source, columns)
    ts_names = [names[c] for c in layout.ts_cols]
    kind = types[ts_names[0]] if len(ts_names) == 1 else "VARCHAR"
    values = ", ".join(
        f"TRY_CAST({_quoted(names[c])} AS DOUBLE) AS {name}" if c is not None else f"0.0::DOUBLE AS {name}"
        for name, c in zip(COLUMNS, layout.value_cols)
    )
    if kind.startswith("TIMESTAMP WITH TIME ZONE"):  # an instant: already UTC
        stamp, text_ts = f"epoch_us({_quoted(ts_names[0])}) AS us, 0 AS off", False
    elif kind.startswith(("TIMESTAMP", "DATE")):  # naive: local time in the file's --tz
        stamp, text_ts = f"epoch_us({_quoted(ts_names[0])}::TIMESTAMP) AS us, NULL::INT AS off", False
    else:  # text (or numbers: Unix epoch) read like a generic CSV's timestamps
        text = " || ' ' || ".join(f"trim(CAST({_quoted(n)} AS VARCHAR))" for n in ts_names)
        stamp, text_ts = f"{text} AS t", True
    typed = (
        f"SELECT ordinality AS n, true AS shaped, {stamp}, {values} "
        f"FROM read_parquet({_literal(str(path))}) WITH ORDINALITY"
    )
    return _run(_checked_sql(typed, layout, text_ts), layout, source)


def parquet_rows(path: Path, layout: Layout, numbers: np.ndarray) -> dict[int, list[str | None]]:
    """The given rows' fields as text (None for NULL), to explain why they were refused."""
    fields = ", ".join(f"CAST({_quoted(n)} AS VARCHAR)" for n in layout.names)
    con = _connect()
    try:
        con.register("wanted", {"n": np.asarray(numbers, dtype=np.int64)})
        rows = con.execute(
            f"SELECT ordinality, {fields} FROM read_parquet({_literal(str(path))}) WITH ORDINALITY "
            "WHERE ordinality IN (SELECT n FROM wanted)"
        ).fetchall()
    finally:
        con.close()
    return {int(row[0]): list(row[1:]) for row in rows}
