"""The bar store: one DuckDB file holding the OHLCV bars of every symbol.

Why DuckDB: a single file, columnar scans straight into numpy, and real transactions,
so an import either lands completely or not at all. DuckDB lets one process write at a
time, so every operation opens its own short-lived connection (reads open the file
read-only, letting many readers share it) and retries briefly while another process
holds the lock.

Timestamps are stored as ``TIMESTAMP`` meaning UTC, at microsecond precision.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from shared.data.bars import OHLCV, Bars
from shared.data.importers import parse_bars

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bars (
    symbol VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,          -- UTC
    open DOUBLE NOT NULL,
    high DOUBLE NOT NULL,
    low DOUBLE NOT NULL,
    close DOUBLE NOT NULL,
    volume DOUBLE NOT NULL,
    PRIMARY KEY (symbol, ts)
);
CREATE TABLE IF NOT EXISTS imports (
    symbol VARCHAR NOT NULL,
    source VARCHAR,                 -- file name, or a description for in-memory bars
    sha256 VARCHAR,                 -- of the source file's bytes, when there is one
    rows BIGINT NOT NULL,
    inserted BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    imported_at TIMESTAMP NOT NULL  -- UTC
);
"""

# Median bar spacing (seconds) → conventional MetaTrader-style timeframe names.
_TIMEFRAMES = {60: "M1", 300: "M5", 900: "M15", 1800: "M30", 3600: "H1", 14400: "H4", 86400: "D1", 604800: "W1"}

TimeLike = str | datetime | np.datetime64


class UnknownSymbolError(ValueError):
    """The store holds no bars for the requested symbol."""


@dataclass(frozen=True)
class ImportSummary:
    symbol: str
    source: str | None
    rows_in_file: int
    rows_inserted: int  # timestamps the symbol did not have yet
    rows_updated: int  # existing timestamps whose values changed
    rows_unchanged: int  # existing timestamps with identical values
    first_ts: np.datetime64  # range of the symbol's whole stored series after the import
    last_ts: np.datetime64
    total_bars: int


@dataclass(frozen=True)
class SymbolInfo:
    symbol: str
    first_ts: np.datetime64
    last_ts: np.datetime64
    bars: int
    timeframe: str


def timeframe_name(seconds: float | None) -> str:
    """Name a bar spacing: M1, M5, M15, M30, H1, H4, D1, W1, MN1, else e.g. '7min'."""
    if seconds is None or seconds <= 0:
        return "?"
    seconds = int(round(seconds))
    if seconds in _TIMEFRAMES:
        return _TIMEFRAMES[seconds]
    if 28 * 86400 <= seconds <= 31 * 86400:
        return "MN1"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def detect_timeframe(ts: np.ndarray) -> str:
    """Timeframe of a timestamp array from the median spacing (robust to weekend gaps)."""
    if len(ts) < 2:
        return "?"
    step = np.median(np.diff(ts.astype("datetime64[us]").astype(np.int64)))
    return timeframe_name(float(step) / 1e6)


def bars_fingerprint(bars: Bars) -> str:
    """sha256 over the timestamps and OHLCV arrays: a stable key for derived caches."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(bars.ts.astype("datetime64[us]").astype("<i8")).tobytes())
    for name in OHLCV:
        digest.update(np.ascontiguousarray(getattr(bars, name), dtype="<f8").tobytes())
    return digest.hexdigest()


def _to_timestamp(value: TimeLike) -> datetime:
    """Accept ISO strings, datetimes (aware ones are converted to UTC) or datetime64."""
    if isinstance(value, np.datetime64):
        return value.astype("datetime64[us]").item()
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _check_importable(bars: Bars) -> None:
    """Guard for bars not produced by the importers (which already validated them)."""
    if len(bars) == 0:
        raise ValueError("no bars to import")
    ts = bars.ts.astype("datetime64[us]")
    if not (np.diff(ts) > np.timedelta64(0)).all():
        raise ValueError("bar timestamps must be strictly increasing (at microsecond precision)")
    values = np.stack([getattr(bars, name) for name in OHLCV])
    if not np.isfinite(values).all():
        raise ValueError("bars contain NaN or infinite values")
    if (bars.high < bars.low).any():
        raise ValueError("bars contain high < low")


class BarStore:
    """OHLCV bars per symbol in a DuckDB file; symbols are upper-cased."""

    def __init__(self, path: str | os.PathLike[str], lock_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"BarStore({str(self.path)!r})"

    # ------------------------------------------------------------------ connections
    @contextmanager
    def _connect(self, write: bool) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """A connection for one operation; yields None for a read of a missing file."""
        if not write and not self.path.exists():
            yield None
            return
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=not write)
                break
            except duckdb.IOException as exc:  # another process holds the write lock
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        try:
            if write:
                con.execute(_SCHEMA)
            yield con
        finally:
            con.close()

    # ------------------------------------------------------------------ writing
    def import_bars(
        self, symbol: str, bars: Bars, source: str | None = None, sha256: str | None = None
    ) -> ImportSummary:
        """Upsert ``bars`` by (symbol, ts) in one transaction.

        Re-importing the same bars changes nothing (all rows count as unchanged);
        overlapping imports replace the values at shared timestamps. On any failure the
        transaction is rolled back, so no partial import can remain.
        """
        symbol = _normalise_symbol(symbol)
        _check_importable(bars)
        incoming = {"ts": bars.ts.astype("datetime64[us]"), **{name: getattr(bars, name) for name in OHLCV}}
        differs = " OR ".join(f"b.{c} IS DISTINCT FROM i.{c}" for c in OHLCV)
        with self._connect(write=True) as con:
            assert con is not None
            con.register("incoming", incoming)
            con.execute("BEGIN TRANSACTION")
            try:
                matched, changed = _one(
                    con.execute(
                        f"SELECT count(b.ts), count(*) FILTER (WHERE b.ts IS NOT NULL AND ({differs})) "
                        "FROM incoming i LEFT JOIN bars b ON b.symbol = ? AND b.ts = i.ts::TIMESTAMP",
                        [symbol],
                    )
                )
                updates = ", ".join(f"{c} = excluded.{c}" for c in OHLCV)
                con.execute(
                    f"INSERT INTO bars SELECT ?, i.ts::TIMESTAMP, {', '.join('i.' + c for c in OHLCV)} "
                    "FROM incoming i LEFT JOIN bars b ON b.symbol = ? AND b.ts = i.ts::TIMESTAMP "
                    f"WHERE b.ts IS NULL OR ({differs}) "
                    f"ON CONFLICT (symbol, ts) DO UPDATE SET {updates}",
                    [symbol, symbol],
                )
                inserted = len(bars) - matched
                con.execute(
                    "INSERT INTO imports VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [symbol, source, sha256, len(bars), inserted, changed, _utc_now()],
                )
                first, last, total = _one(
                    con.execute("SELECT min(ts), max(ts), count(*) FROM bars WHERE symbol = ?", [symbol])
                )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.unregister("incoming")
        return ImportSummary(
            symbol=symbol,
            source=source,
            rows_in_file=len(bars),
            rows_inserted=inserted,
            rows_updated=changed,
            rows_unchanged=matched - changed,
            first_ts=np.datetime64(first, "us"),
            last_ts=np.datetime64(last, "us"),
            total_bars=total,
        )

    def import_file(
        self,
        path: str | os.PathLike[str],
        symbol: str,
        format: str = "auto",
        tz: str | None = "UTC",
        on_stage: Callable[[str], None] | None = None,
        columns: str | dict[str, str] | None = None,
    ) -> ImportSummary:
        """Parse a bar file (all-or-nothing, see :mod:`shared.data.importers`) and import it.

        `on_stage` is called with "read" (hashing the file), "parse" and "store" as each
        stage begins (a million M1 bars take seconds: the CLI shows a progress bar).
        """
        stage = on_stage or (lambda _: None)
        path = Path(path)
        stage("read")
        try:
            with open(path, "rb") as fh:  # hashed in chunks: the file is never held whole
                sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
        except FileNotFoundError:
            raise FileNotFoundError(f"no such bar file: {path}") from None
        stage("parse")
        bars = parse_bars(path, format, tz, columns)
        stage("store")
        return self.import_bars(symbol, bars, source=path.name, sha256=sha256)

    def delete(self, symbol: str) -> int:
        """Forget a symbol's bars and import history; returns the number of bars removed."""
        symbol = _normalise_symbol(symbol)
        with self._connect(write=True) as con:
            assert con is not None
            (count,) = _one(con.execute("SELECT count(*) FROM bars WHERE symbol = ?", [symbol]))
            con.execute("BEGIN TRANSACTION")
            con.execute("DELETE FROM bars WHERE symbol = ?", [symbol])
            con.execute("DELETE FROM imports WHERE symbol = ?", [symbol])
            con.execute("COMMIT")
        return int(count)

    # ------------------------------------------------------------------ reading
    def symbols(self) -> list[str]:
        with self._connect(write=False) as con:
            if con is None or not _has_tables(con):
                return []
            return [row[0] for row in con.execute("SELECT DISTINCT symbol FROM bars ORDER BY symbol").fetchall()]

    def load(self, symbol: str, start: TimeLike | None = None, end: TimeLike | None = None) -> Bars:
        """Bars of ``symbol`` with ``start <= ts < end`` (UTC; either bound optional).

        Raises :class:`UnknownSymbolError` naming the stored symbols if there are none.
        """
        symbol = _normalise_symbol(symbol)
        where, params = ["symbol = ?"], [symbol]  # type: list[str], list[object]
        if start is not None:
            where.append("ts >= ?")
            params.append(_to_timestamp(start))
        if end is not None:
            where.append("ts < ?")
            params.append(_to_timestamp(end))
        with self._connect(write=False) as con:
            if con is None or not _has_tables(con) or not _has_symbol(con, symbol):
                raise self._unknown(symbol, con)
            cols = con.execute(
                f"SELECT ts, {', '.join(OHLCV)} FROM bars WHERE {' AND '.join(where)} ORDER BY ts", params
            ).fetchnumpy()
        return Bars(
            ts=np.asarray(cols["ts"]).astype("datetime64[ns]"),
            **{name: np.ascontiguousarray(cols[name], dtype=np.float64) for name in OHLCV},
        )

    def info(self) -> list[SymbolInfo]:
        """Per symbol: first/last timestamp, bar count and timeframe (median spacing)."""
        with self._connect(write=False) as con:
            if con is None or not _has_tables(con):
                return []
            rows = con.execute(
                """
                SELECT symbol, min(ts), max(ts), count(*), quantile_cont(step, 0.5)
                FROM (SELECT symbol, ts,
                             epoch_us(ts) - lag(epoch_us(ts)) OVER (PARTITION BY symbol ORDER BY ts) AS step
                      FROM bars)
                GROUP BY symbol ORDER BY symbol
                """
            ).fetchall()
        return [
            SymbolInfo(
                symbol,
                np.datetime64(first, "us"),
                np.datetime64(last, "us"),
                int(count),
                timeframe_name(step / 1e6 if step is not None else None),
            )
            for symbol, first, last, count, step in rows
        ]

    def content_hash(self, symbol: str) -> str:
        """sha256 fingerprint of a symbol's stored series (see :func:`bars_fingerprint`)."""
        return bars_fingerprint(self.load(symbol))

    def import_history(self, symbol: str | None = None) -> list[dict[str, object]]:
        """The recorded imports, oldest first (optionally of one symbol)."""
        with self._connect(write=False) as con:
            if con is None or not _has_tables(con):
                return []
            query = "SELECT symbol, source, sha256, rows, inserted, updated, imported_at FROM imports"
            params: list[object] = []
            if symbol is not None:
                query += " WHERE symbol = ?"
                params.append(_normalise_symbol(symbol))
            cursor = con.execute(query + " ORDER BY imported_at", params)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def _unknown(self, symbol: str, con: duckdb.DuckDBPyConnection | None) -> UnknownSymbolError:
        available = (
            [r[0] for r in con.execute("SELECT DISTINCT symbol FROM bars ORDER BY symbol").fetchall()]
            if con is not None and _has_tables(con)
            else []
        )
        if not available:
            return UnknownSymbolError(
                f"no bars for {symbol!r}: the bar store {self.path} is empty; "
                "run `microzero data sample` or `microzero data import PATH --symbol SYMBOL`"
            )
        return UnknownSymbolError(f"no bars for {symbol!r} in {self.path}; available symbols: {', '.join(available)}")


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _normalise_symbol(symbol: str) -> str:
    symbol = symbol.strip().upper()
    if not symbol:
        raise ValueError("symbol must not be empty")
    return symbol


def _one(cursor: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
    """The one row an aggregate query returns."""
    row = cursor.fetchone()
    assert row is not None, "an aggregate query returned no row"
    return row


def _has_tables(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'bars'").fetchone()
    return row is not None and row[0] > 0


def _has_symbol(con: duckdb.DuckDBPyConnection, symbol: str) -> bool:
    row = con.execute("SELECT count(*) FROM (SELECT 1 FROM bars WHERE symbol = ? LIMIT 1)", [symbol]).fetchone()
    return row is not None and row[0] > 0
