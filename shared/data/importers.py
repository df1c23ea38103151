"""Read OHLCV bar files from the usual forex sources into :class:`Bars`.

An import is all-or-nothing: every bad row is reported with its 1-based line number in
the file (the header counts; for Parquet, the row number) and the reason, and a file
with any bad row is refused as a whole, so a half-broken file can never silently shift
a backtest.

DuckDB does the reading (:mod:`shared.data.sqlscan`): it splits, types and checks every
row in SQL, so a ten-year M1 file never becomes millions of Python objects. Only the
rows it flags are read again by Python (:mod:`shared.data.checks`) to say exactly what
is wrong with them.

Formats (``format=``):

* ``generic``    CSV with a header (``,`` ``;`` or tab, sniffed). Column names are
  case-insensitive: a timestamp column (``time``/``timestamp``/``date``/``datetime``/
  ``gmt time``/``local time``/``ts``, or an unnamed first column) or separate ``date`` +
  ``time`` columns, then ``open``, ``high``, ``low``, ``close`` and an optional
  ``volume``. Timestamps are ISO-8601-ish (``2017-01-02 13:00``,
  ``2017-01-02T13:00:00.5Z``, ``2017/01/02``, with an optional ``Z``/``±HH:MM`` offset)
  or Unix epoch seconds (10 digits) / milliseconds (13 digits).
* ``pandas``     what ``DataFrame.to_csv()`` writes for a time-indexed frame: a generic
  CSV whose first column is the unnamed index (header ``,Open,High,Low,Close,Volume``),
  e.g. backtesting.py's bundled ``EURUSD.csv``.
* ``histdata``   HistData.com ASCII M1: no header, ``YYYYMMDD HHMMSS;o;h;l;c;volume``.
  HistData timestamps are in EST *without* daylight saving (fixed UTC-5): import them
  with ``tz="Etc/GMT+5"`` (POSIX sign: ``Etc/GMT+5`` is UTC-5).
* ``dukascopy``  header ``Time``/``Gmt time``/``Local time``,``Open,High,Low,Close,Volume``
  and timestamps ``dd.mm.yyyy HH:MM:SS.fff`` (an optional `` GMT+0200`` suffix, as in
  Dukascopy's local-time exports, is honoured). The bundled sample uses this format.
* ``metatrader`` MT4 history export ``YYYY.MM.DD,HH:MM,o,h,l,c,volume`` (no header) or
  MT5 export (tab-separated, header ``<DATE> <TIME> <OPEN> <HIGH> <LOW> <CLOSE>
  <TICKVOL> <VOL> <SPREAD>``; volume is ``<TICKVOL>``).
* ``parquet``    a Parquet file with the same column names as ``generic``; the
  timestamp column may be a Parquet timestamp (with a zone: taken as that instant) or
  text. ``pandas.DataFrame.to_parquet()`` output works (its index column is used).
* ``auto``       detected from the first bytes; an undetectable file is refused.

``columns`` maps the roles ``ts`` (or ``date`` + ``time``), ``open``, ``high``, ``low``,
``close`` and ``volume`` to a header's own names (``{"ts": "Date", "open": "O"}``), for
files whose header the rules above do not understand.

``tz`` names the timezone the file's timestamps are written in (default UTC): an IANA
name (``Europe/Berlin``, ``Etc/GMT+5``) or a fixed offset (``+02:00``, ``UTC-5``).
Bars come out in UTC. Local times that fall in a DST gap or overlap are resolved with
Python's ``fold=0`` rule; prefer fixed-offset zones for data without DST.

Checks, each reported per line: unparsable line, wrong number of fields, bad
timestamp, non-numeric value, NaN or infinite value, non-positive price, implausible
price (above ``MAX_PRICE`` = 1e6: no traded currency pair comes near it, while 1e308 or
a shifted decimal point would poison every later computation), high < low, open or
close outside [low, high], negative volume, timestamp outside [1970-01-01, now + 1 day]
(UTC), duplicate timestamp, non-increasing timestamp; and a file without data rows.
The bundled real EURUSD sample passes all of them.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from shared.data.bars import Bars

FORMATS = ("auto", "generic", "pandas", "histdata", "dukascopy", "metatrader", "parquet")

FORMAT_HELP = (
    "generic (CSV with a header: time/date, open, high, low, close[, volume]); "
    "pandas (DataFrame.to_csv(): header ',Open,High,Low,Close,Volume'); "
    "histdata (no header: 'YYYYMMDD HHMMSS;o;h;l;c;v'); "
    "dukascopy (header 'Time,Open,High,Low,Close,Volume', 'dd.mm.yyyy HH:MM:SS.fff'); "
    "metatrader (MT4 'YYYY.MM.DD,HH:MM,o,h,l,c,v' or MT5 '<DATE>\\t<TIME>\\t<OPEN>...'); "
    "parquet (generic's column names)"
)

MAX_LISTED_ERRORS = 20
MAX_EXPLAINED = 10_000  # bad lines read back and explained; a wrong --format can flag millions
MAX_PRICE = 1e6  # above any traded pair's price; 1e308 or a lost decimal point is refused
ROLES = ("ts", "date", "time", "open", "high", "low", "close", "volume")


class BarImportError(ValueError):
    """A refused bar file; ``errors`` holds ``(line_number, reason)`` for every bad line
    (the first ``MAX_EXPLAINED`` when there are more; ``bad_count`` counts them all). For
    Parquet files the numbers are rows: ``unit`` says which."""

    def __init__(
        self,
        source: str,
        errors: Sequence[tuple[int, str]],
        summary: str | None = None,
        unit: str = "line",
        bad_count: int | None = None,
    ) -> None:
        self.source = source
        self.unit = unit
        self.errors: list[tuple[int, str]] = list(errors)
        self.bad_count = len(self.errors) if bad_count is None else bad_count
        super().__init__(_error_message(source, self.errors, summary, unit, self.bad_count))


def _error_message(source: str, errors: list[tuple[int, str]], summary: str | None, unit: str, count: int) -> str:
    if summary is not None:
        head = f"cannot import {source}: {summary}"
        if not errors:
            return head
    else:
        head = f"cannot import {source}: {count} bad {unit}{'s' if count != 1 else ''}; the whole file is refused"
    lines = [head] + [f"  {unit} {n}: {reason}" for n, reason in errors[:MAX_LISTED_ERRORS]]
    if count > MAX_LISTED_ERRORS:
        lines.append(f"  ... and {count - MAX_LISTED_ERRORS} more")
    return "\n".join(lines)


def parse_columns(spec: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """``"ts=Date,open=O"`` (or a mapping) → ``{"ts": "Date", "open": "O"}``, checked."""
    if spec is None or isinstance(spec, Mapping):
        pairs = dict(spec or {})
    else:
        pairs = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            role, sep, name = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"bad --columns item {item!r}: expected ROLE=NAME, e.g. ts=Date")
            pairs[role.strip().lower()] = name.strip()
    unknown = sorted(set(pairs) - set(ROLES))
    if unknown:
        raise ValueError(
            f"unknown column role{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; roles are {', '.join(ROLES)}"
        )
    if "ts" in pairs and ("date" in pairs or "time" in pairs):
        raise ValueError("map either ts or date + time, not both")
    if ("date" in pairs) != ("time" in pairs):
        raise ValueError("date and time must be mapped together (or map ts)")
    return pairs or None


# --------------------------------------------------------------------------- timestamps
# A timestamp parser maps the (stripped) text to (naive datetime, explicit UTC offset in
# minutes or None) and raises ValueError on anything it does not accept. DuckDB runs the
# same regular expressions (RE2 reads this syntax) over the whole file; Python's copy
# only explains the rows DuckDB could not read.
TsParser = Callable[[str], "tuple[datetime, int | None]"]

_ISO_RE = re.compile(
    r"(?P<Y>\d{4})[-/.](?P<Mo>\d{1,2})[-/.](?P<D>\d{1,2})"
    r"(?:(?:T|\s+)(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?"
    r"\s*(?P<z>Z|UTC|GMT|[+-]\d{2}:?\d{2})?",
    re.IGNORECASE,
)
EPOCH_S_RE = r"\d{9,10}(?:\.\d+)?"
EPOCH_MS_RE = r"\d{12,13}"
_HISTDATA_RE = re.compile(r"(?P<Y>\d{4})(?P<Mo>\d{2})(?P<D>\d{2}) (?P<h>\d{2})(?P<mi>\d{2})(?P<s>\d{2})")
_DUKASCOPY_RE = re.compile(
    r"(?P<D>\d{2})\.(?P<Mo>\d{2})\.(?P<Y>\d{4}) (?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?: GMT(?P<z>[+-]\d{2}:?\d{2}))?"
)
_METATRADER_RE = re.compile(r"(?P<Y>\d{4})\.(?P<Mo>\d{2})\.(?P<D>\d{2}) (?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?")
_ISO_FAST = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")
_EPOCH0 = datetime(1970, 1, 1)


def _offset_minutes(text: str) -> int:
    """``Z``/``UTC``/``GMT``/``+02:00``/``-0530`` → minutes east of UTC."""
    if text.upper() in ("Z", "UTC", "GMT"):
        return 0
    digits = text[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + int(digits[2:])
    return -minutes if text[0] == "-" else minutes


def _regex_parser(pattern: re.Pattern[str]) -> TsParser:
    def parse(text: str) -> tuple[datetime, int | None]:
        m = pattern.fullmatch(text)
        if m is None:
            raise ValueError("unrecognised layout")
        g = m.groupdict()
        frac = g.get("f")
        dt = datetime(
            int(g["Y"]),
            int(g["Mo"]),
            int(g["D"]),
            int(g["h"] or 0),
            int(g["mi"] or 0),
            int(g.get("s") or 0),
            int((frac + "00000")[:6]) if frac else 0,
        )
        z = g.get("z")
        return dt, (_offset_minutes(z) if z else None)

    return parse


_parse_iso = _regex_parser(_ISO_RE)


def _parse_generic_ts(text: str) -> tuple[datetime, int | None]:
    if re.fullmatch(EPOCH_S_RE, text) or re.fullmatch(EPOCH_MS_RE, text):
        value = float(text)
        seconds = value / 1000.0 if len(text.split(".")[0]) >= 12 else value
        return _EPOCH0 + timedelta(seconds=seconds), 0
    return _parse_iso(text)


# --------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    """Where the fields of one format live, found from the header or fixed."""

    format: str
    delimiter: str
    data_start: int  # 0-based index of the first line after the header (if any)
    n_fields: int
    ts_cols: tuple[int, ...]  # one column, or date + time joined by a space
    price_cols: tuple[int, int, int, int]
    volume_col: int | None
    ts_pattern: re.Pattern[str]  # what DuckDB matches; parse_ts explains failures
    parse_ts: TsParser
    ts_hint: str
    epoch: bool = False  # Unix epoch seconds/milliseconds accepted too
    fast_formats: tuple[str, ...] = ()  # DuckDB strptime formats for the usual spellings
    unit: str = "line"
    names: tuple[str, ...] = ()  # Parquet: the file's column names, by index

    @property
    def value_cols(self) -> tuple[int | None, ...]:
        return (*self.price_cols, self.volume_col)


_TS_NAMES = ("timestamp", "ts", "datetime", "date time", "gmt time", "local time", "time", "date")
_VOLUME_NAMES = ("volume", "tickvol", "tick_volume", "tick volume", "vol", "real_volume")
# pandas.DataFrame.to_parquet() stores an unnamed index under this name.
_PANDAS_INDEX = "__index_level_0__"


def _normalise(name: str) -> str:
    return name.strip().strip('"').strip().strip("<>").strip().lower()


def _sniff_delimiter(line: str, candidates: str = ",;\t") -> str:
    counts = {d: line.count(d) for d in candidates}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _default_ts(names: list[str], refuse: Callable[[str], Exception], shown: str) -> tuple[int, ...]:
    if "date" in names and "time" in names:
        return names.index("date"), names.index("time")
    found = next((n for n in (*_TS_NAMES, _PANDAS_INDEX) if n in names), None)
    if found is None and names and names[0] == "":  # pandas' unnamed index column
        found = ""
    if found is None:
        raise refuse(
            f"no timestamp column (one of {', '.join(_TS_NAMES)}, or an unnamed first column; "
            f"or pass --columns ts=NAME) in {shown}"
        )
    return (names.index(found),)


def find_columns(
    names: Sequence[str],
    columns: Mapping[str, str] | None,
    refuse: Callable[[str], Exception],
    shown: str,
) -> tuple[tuple[int, ...], tuple[int, int, int, int], int | None]:
    """(timestamp columns, price columns, volume column) among a header's normalised
    ``names``; ``columns`` maps roles to names, unmapped roles keep their usual names."""
    names, columns = list(names), dict(columns or {})

    def index(role: str) -> int:
        name = columns.get(role, role)
        if _normalise(name) not in names:
            how = " (from --columns)" if role in columns else " (map another name with --columns, e.g. open=O)"
            raise refuse(f"no {role} column {name!r}{how} in {shown}")
        return names.index(_normalise(name))

    missing = [r for r in ("open", "high", "low", "close") if _normalise(columns.get(r, r)) not in names]
    if missing and not any(r in columns for r in missing):
        raise refuse(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} in {shown} "
            "(map other names with --columns, e.g. open=O)"
        )
    ts: tuple[int, ...]
    if "date" in columns:
        ts = (index("date"), index("time"))
    else:
        ts = (index("ts"),) if "ts" in columns else _default_ts(names, refuse, shown)
    prices = tuple(index(r) for r in ("open", "high", "low", "close"))
    if "volume" in columns:
        volume: int | None = index("volume")
    else:
        volume = next((names.index(n) for n in _VOLUME_NAMES if n in names), None)
    return ts, prices, volume  # type: ignore[return-value]


def _header_layout(
    fmt: str,
    lines: list[str],
    header_idx: int,
    pattern: re.Pattern[str],
    parse_ts: TsParser,
    ts_hint: str,
    source: str,
    columns: Mapping[str, str] | None,
    fast: tuple[str, ...],
    epoch: bool = False,
) -> Layout:
    header = lines[header_idx]
    delimiter = _sniff_delimiter(header)
    fields = next(csv.reader([header], delimiter=delimiter))
    line_no = header_idx + 1

    def refuse(reason: str) -> BarImportError:
        return BarImportError(source, [(line_no, reason)], summary=f"bad header ({reason})")

    ts_cols, prices, volume = find_columns([_normalise(f) for f in fields], columns, refuse, repr(header.strip()))
    return Layout(
        fmt, delimiter, header_idx + 1, len(fields), ts_cols, prices, volume, pattern, parse_ts, ts_hint, epoch, fast
    )


def _layout(fmt: str, lines: list[str], first: int, source: str, columns: Mapping[str, str] | None = None) -> Layout:
    """Build the layout of an explicitly named format; ``first`` is the first non-blank line."""
    head = lines[first]
    if fmt in ("generic", "pandas"):
        return _header_layout(
            fmt,
            lines,
            first,
            _ISO_RE,
            _parse_generic_ts,
            "ISO-8601 like 2017-01-02 13:00:00",
            source,
            columns,
            _ISO_FAST,
            epoch=True,
        )
    if fmt == "dukascopy":
        return _header_layout(
            fmt,
            lines,
            first,
            _DUKASCOPY_RE,
            _regex_parser(_DUKASCOPY_RE),
            "dd.mm.yyyy HH:MM:SS.fff",
            source,
            columns,
            ("%d.%m.%Y %H:%M:%S.%g", "%d.%m.%Y %H:%M:%S"),
        )
    headerless = fmt == "histdata" or (fmt == "metatrader" and "<" not in head)
    if headerless and columns:
        raise ValueError(f"--columns needs a file with a header; {fmt} files without one have fixed columns")
    if fmt == "metatrader":
        parse, fast = _regex_parser(_METATRADER_RE), ("%Y.%m.%d %H:%M", "%Y.%m.%d %H:%M:%S")
        if not headerless and _normalise(head.split("\t")[0].split(",")[0]) == "date":
            return _header_layout(
                fmt, lines, first, _METATRADER_RE, parse, "YYYY.MM.DD + HH:MM[:SS]", source, columns, fast
            )
        return Layout(
            fmt, ",", first, 7, (0, 1), (2, 3, 4, 5), 6, _METATRADER_RE, parse, "YYYY.MM.DD,HH:MM", fast_formats=fast
        )
    if fmt == "histdata":
        delimiter = ";" if ";" in head or "," not in head else ","
        return Layout(
            fmt,
            delimiter,
            first,
            6,
            (0,),
            (1, 2, 3, 4),
            5,
            _HISTDATA_RE,
            _regex_parser(_HISTDATA_RE),
            "YYYYMMDD HHMMSS",
            fast_formats=("%Y%m%d %H%M%S",),
        )
    raise ValueError(f"unknown bar format {fmt!r}; choose one of {', '.join(FORMATS)}")


def parquet_layout(names: Sequence[str], source: str, columns: Mapping[str, str] | None) -> Layout:
    """A layout over a Parquet file's columns; text timestamps are read as ``generic``'s."""

    def refuse(reason: str) -> BarImportError:
        return BarImportError(source, [], summary=f"bad columns ({reason})")

    normalised = [_normalise(n) for n in names]
    ts_cols, prices, volume = find_columns(normalised, columns, refuse, f"columns {list(names)}")
    return Layout(
        "parquet",
        "",
        0,
        len(names),
        ts_cols,
        prices,
        volume,
        _ISO_RE,
        _parse_generic_ts,
        "a Parquet timestamp or ISO-8601 text",
        epoch=True,
        fast_formats=_ISO_FAST,
        unit="row",
        names=tuple(names),
    )


_MT4_START = re.compile(r"\d{4}\.\d{2}\.\d{2},\d{2}:\d{2}")
_HISTDATA_START = re.compile(r"\d{8} \d{6}[;,]")
_DUKASCOPY_START = re.compile(r"\d{2}\.\d{2}\.\d{4} \d{2}:\d{2}")


def _non_blank(lines: list[str], start: int = 0) -> int | None:
    return next((i for i in range(start, len(lines)) if lines[i].strip()), None)


def _detect(lines: list[str], first: int, source: str, columns: Mapping[str, str] | None = None) -> str:
    head = lines[first].strip()
    if head.upper().startswith("<DATE>"):
        return "metatrader"
    if _MT4_START.match(head):
        return "metatrader"
    if _HISTDATA_START.match(head):
        return "histdata"
    names = [_normalise(n) for n in re.split(r"[,;\t]", lines[first])]
    if {"open", "high", "low", "close"} <= set(names):
        second = _non_blank(lines, first + 1)
        if names[0] in ("time", "gmt time", "local time") and (
            second is None or _DUKASCOPY_START.match(lines[second].strip())
        ):
            return "dukascopy"
        return "pandas" if names[0] == "" else "generic"
    if columns and {_normalise(n) for n in columns.values()} <= set(names):  # an odd header, mapped
        return "generic"
    shown = head if len(head) <= 120 else head[:117] + "..."
    raise BarImportError(
        source,
        [],
        summary=f"cannot detect the bar format from the first line {shown!r}; "
        f"pass --format, supported formats: {FORMAT_HELP}",
    )


# --------------------------------------------------------------------------- text → lines
def decode_bytes(data: bytes) -> str:
    """Decode a bar file: UTF-8 (with or without BOM) or UTF-16 (MT5 exports), else Latin-1."""
    encoding = _encoding(data)
    if encoding == "utf-8-sig":
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    return data.decode(encoding, errors="replace")


def _encoding(head: bytes) -> str:
    """The encoding a file's first bytes suggest; "utf-8-sig" means UTF-8 with or without BOM."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    sample = head[:200]
    if len(sample) >= 4 and sample[1::2].count(0) > len(sample) // 4:  # BOM-less UTF-16-LE
        return "utf-16-le"
    return "utf-8-sig"


def _split_lines(text: str) -> list[str]:
    """Split on \\n, \\r\\n or \\r only, so list index + 1 is the file's line number."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def detect_format(text: str, source_name: str = "<text>") -> str:
    """Name the format of ``text`` (a whole file or just its first lines)."""
    lines = _split_lines(text[1:] if text.startswith("\ufeff") else text)
    first = _non_blank(lines)
    if first is None:
        raise BarImportError(source_name, [], summary="the file is empty (no data rows)")
    return _detect(lines, first, source_name)


_HEAD_BYTES = 65536


def _head_lines(path: Path) -> list[str]:
    """The first 64 KiB of a file as lines, a possibly cut last line dropped."""
    with open(path, "rb") as fh:
        head = fh.read(_HEAD_BYTES)
    text = decode_bytes(head)
    if len(head) == _HEAD_BYTES:
        text = text[: text.rfind("\n") + 1] or text
    return _split_lines(text[1:] if text.startswith("\ufeff") else text)


def sniff_file_format(path: str | os.PathLike[str], columns: str | Mapping[str, str] | None = None) -> str:
    """:func:`detect_format` on the first 64 KiB of a file (cheap for large files); a
    header holding every name ``columns`` maps is read as ``generic``."""
    with open(path, "rb") as fh:
        if fh.read(4) == b"PAR1":
            return "parquet"
    lines = _head_lines(Path(path))
    first = _non_blank(lines)
    if first is None:
        raise BarImportError(str(path), [], summary="the file is empty (no data rows)")
    return _detect(lines, first, str(path), parse_columns(columns))


# --------------------------------------------------------------------------- timezones
_UTC_NAMES = {"utc", "z", "gmt", "etc/utc", "etc/gmt", "utc+0", "utc-0", "+00:00", "+0000"}
_FIXED_TZ_RE = re.compile(r"(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?", re.IGNORECASE)


def resolve_tz(tz: str | None) -> ZoneInfo | int | None:
    """None for UTC, minutes east of UTC for a fixed offset, else a ZoneInfo."""
    if tz is None or tz.strip().lower() in _UTC_NAMES:
        return None
    tz = tz.strip()
    m = _FIXED_TZ_RE.fullmatch(tz)
    if m:
        minutes = int(m.group(2)) * 60 + int(m.group(3) or 0)
        return -minutes if m.group(1) == "-" else minutes
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown timezone {tz!r}: use an IANA name such as 'Europe/Berlin' or 'Etc/GMT+5' "
            "(POSIX sign: that is UTC-5), or a fixed offset such as '+02:00'"
        ) from exc


def local_to_utc(ts: np.ndarray, zone: ZoneInfo | int) -> np.ndarray:
    """Convert naive local ``datetime64[us]`` values to UTC.

    Offsets are looked up once per distinct 15-minute slot (DST transitions happen on
    quarter hours), so a year of M1 bars needs ~35k lookups instead of ~370k.
    """
    if isinstance(zone, int):
        return ts - np.timedelta64(zone, "m")
    slots = ts.astype("datetime64[m]").astype(np.int64) // 15
    unique, inverse = np.unique(slots, return_inverse=True)
    offsets = np.empty(len(unique), dtype=np.int64)
    for i, slot in enumerate(unique.tolist()):
        local = _EPOCH0 + timedelta(minutes=slot * 15)
        offsets[i] = int(local.replace(tzinfo=zone).utcoffset().total_seconds()) * 1_000_000  # type: ignore[union-attr]
    return ts - offsets[inverse].astype("timedelta64[us]")


# --------------------------------------------------------------------------- files
@contextlib.contextmanager
def _utf8(path: Path, encoding: str) -> Iterator[Path]:
    """``path`` itself when DuckDB can read it as UTF-8, else a UTF-8 copy (UTF-16 MT5
    exports, Latin-1 files), made in 1 MiB chunks so memory stays flat. Line endings
    are copied untouched, so line numbers do not move."""
    if encoding == "utf-8-sig":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mz-import-") as folder:
        copy = Path(folder) / "utf8.csv"
        with (
            open(path, encoding=encoding, errors="replace", newline="") as src,
            open(copy, "w", encoding="utf-8", newline="") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
        yield copy


def parse_bars(
    path: str | os.PathLike[str],
    format: str = "auto",
    tz: str | None = "UTC",
    columns: str | Mapping[str, str] | None = None,
    source_name: str | None = None,
) -> Bars:
    """Read a bar file (see the module docstring) into UTC :class:`Bars`.

    Raises :class:`BarImportError` listing every bad line, or ValueError for a bad
    ``format``/``tz``/``columns`` argument.
    """
    from shared.data import checks, sqlscan  # they import this module's layouts

    if format not in FORMATS:
        raise ValueError(f"unknown bar format {format!r}; choose one of {', '.join(FORMATS)}")
    zone, mapping, path = resolve_tz(tz), parse_columns(columns), Path(path)
    source = source_name or str(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such bar file: {path}")
    fmt = sniff_file_format(path, mapping) if format == "auto" else format
    if fmt == "parquet":
        scan = sqlscan.scan_parquet(path, source, mapping)
        return checks.bars_or_refuse(scan, zone, source, lambda rows: sqlscan.parquet_rows(path, scan.layout, rows))
    lines = _head_lines(path)
    first = _non_blank(lines)
    if first is None:
        raise BarImportError(source, [], summary="the file is empty (no data rows)")
    layout = _layout(fmt, lines, first, source, mapping)
    with open(path, "rb") as fh:
        encoding = _encoding(fh.read(200))
    for attempt in (encoding, "latin-1"):
        with _utf8(path, attempt) as readable:
            try:
                scan = sqlscan.scan_csv(readable, layout, source)
            except sqlscan.NotUtf8:
                continue  # not UTF-8 after all: read it as Latin-1, which accepts any byte
            return checks.bars_or_refuse(scan, zone, source, lambda rows: sqlscan.csv_lines(readable, rows))
    raise AssertionError("unreachable: Latin-1 decodes any byte")


def parse_bars_text(
    text: str,
    format: str = "auto",
    tz: str | None = "UTC",
    source_name: str = "<text>",
    columns: str | Mapping[str, str] | None = None,
) -> Bars:
    """Parse the text of a bar file; see :func:`parse_bars` (the text goes through a
    temporary file, which is what DuckDB reads)."""
    with tempfile.TemporaryDirectory(prefix="mz-import-") as folder:
        path = Path(folder) / "bars.csv"
        path.write_text(text[1:] if text.startswith("\ufeff") else text, encoding="utf-8", newline="")
        return parse_bars(path, format, tz, columns, source_name)
