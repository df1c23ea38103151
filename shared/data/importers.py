"""Read OHLCV bar files from the usual forex sources into :class:`Bars`.

An import is all-or-nothing: every bad row is collected with its 1-based line number
in the file and the reason, and a file with any bad row is refused as a whole, so a
half-broken file can never silently shift a backtest.

Formats (``format=``):

* ``generic``    CSV with a header (``,`` ``;`` or tab, sniffed). Column names are
  case-insensitive: a timestamp column (``time``/``timestamp``/``date``/``datetime``/
  ``gmt time``/``local time``) or separate ``date`` + ``time`` columns, then ``open``,
  ``high``, ``low``, ``close`` and an optional ``volume``. Timestamps are ISO-8601-ish
  (``2017-01-02 13:00``, ``2017-01-02T13:00:00.5Z``, ``2017/01/02``, with an optional
  ``Z``/``±HH:MM`` offset) or Unix epoch seconds (10 digits) / milliseconds (13 digits).
* ``histdata``   HistData.com ASCII M1: no header, ``YYYYMMDD HHMMSS;o;h;l;c;volume``.
  HistData timestamps are in EST *without* daylight saving (fixed UTC-5): import them
  with ``tz="Etc/GMT+5"`` (POSIX sign: ``Etc/GMT+5`` is UTC-5).
* ``dukascopy``  header ``Time``/``Gmt time``/``Local time``,``Open,High,Low,Close,Volume``
  and timestamps ``dd.mm.yyyy HH:MM:SS.fff`` (an optional `` GMT+0200`` suffix, as in
  Dukascopy's local-time exports, is honoured). The bundled sample uses this format.
* ``metatrader`` MT4 history export ``YYYY.MM.DD,HH:MM,o,h,l,c,volume`` (no header) or
  MT5 export (tab-separated, header ``<DATE> <TIME> <OPEN> <HIGH> <LOW> <CLOSE>
  <TICKVOL> <VOL> <SPREAD>``; volume is ``<TICKVOL>``).
* ``auto``       detected from the first lines; an undetectable file is refused.

``tz`` names the timezone the file's timestamps are written in (default UTC): an IANA
name (``Europe/Berlin``, ``Etc/GMT+5``) or a fixed offset (``+02:00``, ``UTC-5``).
Bars come out in UTC. Local times that fall in a DST gap or overlap are resolved with
Python's ``fold=0`` rule; prefer fixed-offset zones for data without DST.

Checks, each reported per line: unparsable line, wrong number of fields, bad
timestamp, non-numeric value, NaN or infinite value, non-positive price, high < low,
open or close outside [low, high], negative volume, duplicate timestamp, non-increasing
timestamp; and a file without data rows. The bundled real EURUSD sample passes all of
them, including the strict open/close-in-range check.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from shared.data.bars import Bars

FORMATS = ("auto", "generic", "histdata", "dukascopy", "metatrader")

FORMAT_HELP = (
    "generic (CSV with a header: time/date, open, high, low, close[, volume]); "
    "histdata (no header: 'YYYYMMDD HHMMSS;o;h;l;c;v'); "
    "dukascopy (header 'Time,Open,High,Low,Close,Volume', 'dd.mm.yyyy HH:MM:SS.fff'); "
    "metatrader (MT4 'YYYY.MM.DD,HH:MM,o,h,l,c,v' or MT5 '<DATE>\\t<TIME>\\t<OPEN>...')"
)

MAX_LISTED_ERRORS = 20


class BarImportError(ValueError):
    """A refused bar file; ``errors`` holds every ``(line_number, reason)`` found."""

    def __init__(self, source: str, errors: Sequence[tuple[int, str]], summary: str | None = None) -> None:
        self.source = source
        self.errors: list[tuple[int, str]] = list(errors)
        super().__init__(_error_message(source, self.errors, summary))


def _error_message(source: str, errors: list[tuple[int, str]], summary: str | None) -> str:
    if summary is not None:
        head = f"cannot import {source}: {summary}"
        if not errors:
            return head
    else:
        head = (
            f"cannot import {source}: {len(errors)} bad line{'s' if len(errors) != 1 else ''}; "
            "the whole file is refused"
        )
    lines = [head] + [f"  line {n}: {reason}" for n, reason in errors[:MAX_LISTED_ERRORS]]
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"  ... and {len(errors) - MAX_LISTED_ERRORS} more")
    return "\n".join(lines)


# --------------------------------------------------------------------------- timestamps
# A timestamp parser maps the (stripped) text to (naive datetime, explicit UTC offset in
# minutes or None) and raises ValueError on anything it does not accept.
TsParser = Callable[[str], "tuple[datetime, int | None]"]

_ISO_RE = re.compile(
    r"(?P<Y>\d{4})[-/.](?P<Mo>\d{1,2})[-/.](?P<D>\d{1,2})"
    r"(?:(?:T|\s+)(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?"
    r"\s*(?P<z>Z|UTC|GMT|[+-]\d{2}:?\d{2})?",
    re.IGNORECASE,
)
_EPOCH_RE = re.compile(r"\d{9,10}(?:\.\d+)?|\d{12,13}")
_HISTDATA_RE = re.compile(r"(?P<Y>\d{4})(?P<Mo>\d{2})(?P<D>\d{2}) (?P<h>\d{2})(?P<mi>\d{2})(?P<s>\d{2})")
_DUKASCOPY_RE = re.compile(
    r"(?P<D>\d{2})\.(?P<Mo>\d{2})\.(?P<Y>\d{4}) (?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?: GMT(?P<z>[+-]\d{2}:?\d{2}))?"
)
_METATRADER_RE = re.compile(r"(?P<Y>\d{4})\.(?P<Mo>\d{2})\.(?P<D>\d{2}) (?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?")
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
    if _EPOCH_RE.fullmatch(text):
        value = float(text)
        seconds = value / 1000.0 if len(text.split(".")[0]) >= 12 else value
        return _EPOCH0 + timedelta(seconds=seconds), 0
    return _parse_iso(text)


# --------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class _Layout:
    """Where the fields of one format live, found from the header or fixed."""

    format: str
    delimiter: str
    data_start: int  # 0-based index of the first line after the header (if any)
    n_fields: int
    ts_cols: tuple[int, ...]  # one column, or date + time joined by a space
    price_cols: tuple[int, int, int, int]
    volume_col: int | None
    parse_ts: TsParser
    ts_hint: str
    ts_templates: tuple[str, ...] = ()  # fixed-width layouts parsed vectorised first


_TS_NAMES = ("timestamp", "datetime", "date time", "gmt time", "local time", "time", "date")
_VOLUME_NAMES = ("volume", "tickvol", "tick_volume", "tick volume", "vol", "real_volume")


def _normalise(name: str) -> str:
    return name.strip().strip('"').strip().strip("<>").strip().lower()


def _sniff_delimiter(line: str, candidates: str = ",;\t") -> str:
    counts = {d: line.count(d) for d in candidates}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _header_layout(
    fmt: str,
    lines: list[str],
    header_idx: int,
    parse_ts: TsParser,
    ts_hint: str,
    templates: tuple[str, ...],
    source: str,
) -> _Layout:
    header = lines[header_idx]
    delimiter = _sniff_delimiter(header)
    fields = next(csv.reader([header], delimiter=delimiter))
    names = [_normalise(f) for f in fields]
    line_no = header_idx + 1

    def refuse(reason: str) -> BarImportError:
        return BarImportError(source, [(line_no, reason)], summary=f"bad header ({reason})")

    if "date" in names and "time" in names:
        ts_cols: tuple[int, ...] = (names.index("date"), names.index("time"))
    else:
        found = next((n for n in _TS_NAMES if n in names), None)
        if found is None:
            raise refuse(f"no timestamp column (one of {', '.join(_TS_NAMES)}) in {header.strip()!r}")
        ts_cols = (names.index(found),)
    missing = [c for c in ("open", "high", "low", "close") if c not in names]
    if missing:
        raise refuse(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} in {header.strip()!r}")
    price_cols = tuple(names.index(c) for c in ("open", "high", "low", "close"))
    volume_col = next((names.index(n) for n in _VOLUME_NAMES if n in names), None)
    return _Layout(
        fmt,
        delimiter,
        header_idx + 1,
        len(fields),
        ts_cols,
        price_cols,  # type: ignore[arg-type]
        volume_col,
        parse_ts,
        ts_hint,
        templates,
    )


def _layout(fmt: str, lines: list[str], first: int, source: str) -> _Layout:
    """Build the layout of an explicitly named format; ``first`` is the first non-blank line."""
    head = lines[first]
    if fmt == "generic":
        templates: tuple[str, ...] = ("YYYY-MM-DD hh:mm:ss", "YYYY-MM-DDThh:mm:ss", "YYYY-MM-DD hh:mm", "YYYY-MM-DD")
        return _header_layout(
            fmt, lines, first, _parse_generic_ts, "ISO-8601 like 2017-01-02 13:00:00", templates, source
        )
    if fmt == "dukascopy":
        templates = ("DD.MM.YYYY hh:mm:ss.fff", "DD.MM.YYYY hh:mm:ss")
        return _header_layout(
            fmt, lines, first, _regex_parser(_DUKASCOPY_RE), "dd.mm.yyyy HH:MM:SS.fff", templates, source
        )
    if fmt == "metatrader":
        parse, templates = _regex_parser(_METATRADER_RE), ("YYYY.MM.DD hh:mm", "YYYY.MM.DD hh:mm:ss")
        if _normalise(head.split("\t")[0].split(",")[0]) == "date" and "<" in head:
            return _header_layout(fmt, lines, first, parse, "YYYY.MM.DD + HH:MM[:SS]", templates, source)
        return _Layout(fmt, ",", first, 7, (0, 1), (2, 3, 4, 5), 6, parse, "YYYY.MM.DD,HH:MM", templates)
    if fmt == "histdata":
        delimiter = ";" if ";" in head or "," not in head else ","
        return _Layout(
            fmt,
            delimiter,
            first,
            6,
            (0,),
            (1, 2, 3, 4),
            5,
            _regex_parser(_HISTDATA_RE),
            "YYYYMMDD HHMMSS",
            ("YYYYMMDD hhmmss",),
        )
    raise ValueError(f"unknown bar format {fmt!r}; choose one of {', '.join(FORMATS)}")


_MT4_START = re.compile(r"\d{4}\.\d{2}\.\d{2},\d{2}:\d{2}")
_HISTDATA_START = re.compile(r"\d{8} \d{6}[;,]")
_DUKASCOPY_START = re.compile(r"\d{2}\.\d{2}\.\d{4} \d{2}:\d{2}")


def _non_blank(lines: list[str], start: int = 0) -> int | None:
    return next((i for i in range(start, len(lines)) if lines[i].strip()), None)


def _detect(lines: list[str], first: int, source: str) -> str:
    head = lines[first].strip()
    if head.upper().startswith("<DATE>"):
        return "metatrader"
    if _MT4_START.match(head):
        return "metatrader"
    if _HISTDATA_START.match(head):
        return "histdata"
    names = [_normalise(n) for n in re.split(r"[,;\t]", head)]
    if {"open", "high", "low", "close"} <= set(names):
        second = _non_blank(lines, first + 1)
        if names[0] in ("time", "gmt time", "local time") and (
            second is None or _DUKASCOPY_START.match(lines[second].strip())
        ):
            return "dukascopy"
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
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    sample = data[:200]
    if len(sample) >= 4 and sample[1::2].count(0) > len(sample) // 4:  # BOM-less UTF-16-LE
        return data.decode("utf-16-le", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _split_lines(text: str) -> list[str]:
    """Split on \\n, \\r\\n or \\r only, so list index + 1 is the file's line number."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def detect_format(text: str, source_name: str = "<text>") -> str:
    """Name the format of ``text`` (a whole file or just its first lines)."""
    lines = _split_lines(text)
    first = _non_blank(lines)
    if first is None:
        raise BarImportError(source_name, [], summary="the file is empty (no data rows)")
    return _detect(lines, first, source_name)


def sniff_file_format(path: str | os.PathLike[str]) -> str:
    """:func:`detect_format` on the first 64 KiB of a file (cheap for large files)."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
    text = decode_bytes(head)
    if len(head) == 65536:  # drop a possibly cut last line
        text = text[: text.rfind("\n") + 1] or text
    return detect_format(text, str(path))


# --------------------------------------------------------------------------- timezones
_UTC_NAMES = {"utc", "z", "gmt", "etc/utc", "etc/gmt", "utc+0", "utc-0", "+00:00", "+0000"}
_FIXED_TZ_RE = re.compile(r"(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d{2}))?", re.IGNORECASE)


def _resolve_tz(tz: str | None) -> ZoneInfo | int | None:
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


def _local_to_utc(ts: np.ndarray, zone: ZoneInfo | int) -> np.ndarray:
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


# --------------------------------------------------------------------------- fast timestamps
_US_PER = {"h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000, "f": 1_000}


def _parse_template(texts: list[str], template: str) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised parse of fixed-width timestamps such as ``DD.MM.YYYY hh:mm:ss.fff``.

    ``texts`` must all have the template's length. Returns (ok mask, microseconds since
    the epoch). Rows that do not match the template exactly, or name an impossible
    date/time, are left to the per-row regex parser, which accepts variants and explains
    errors. Letters: Y M D h m s, f = milliseconds.
    """
    n = len(texts)
    size = len(template)
    arr = np.array(texts, dtype=f"<U{size}")  # callers pass texts of exactly this length
    codes = arr.view(np.uint32).reshape(n, size)
    ok = np.ones(n, dtype=bool)
    fields: dict[str, np.ndarray] = {}
    pos = 0
    while pos < size:
        ch = template[pos]
        end = pos
        while end < size and template[end] == ch:
            end += 1
        block = codes[:, pos:end]
        if ch in "YMDhmsf":
            ok &= ((block >= 48) & (block <= 57)).all(axis=1)
            fields[ch] = (block.astype(np.int64) - 48) @ (10 ** np.arange(end - pos - 1, -1, -1, dtype=np.int64))
        else:
            ok &= (block == ord(ch)).all(axis=1)
        pos = end
    zero = np.zeros(n, dtype=np.int64)
    year, month, day = fields["Y"], fields["M"], fields["D"]
    ok &= (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1)
    months = (year - 1970) * 12 + np.clip(month, 1, 12) - 1
    first = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    month_len = (months + 1).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) - first
    ok &= day <= month_len
    ok &= (fields.get("h", zero) < 24) & (fields.get("m", zero) < 60) & (fields.get("s", zero) < 60)
    us = (first + day - 1) * 86_400_000_000
    for key, scale in _US_PER.items():
        if key in fields:
            us = us + fields[key] * scale
    return ok, us


_EPOCH_US = np.datetime64(0, "us")


def _parse_timestamps(texts: list[str], layout: _Layout) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Parse a timestamp column: (µs since epoch, explicit UTC offset in minutes or
    ``_NO_OFFSET``, {row: error}). Template fast path first, per-row regex for the rest."""
    n = len(texts)
    us = np.zeros(n, dtype=np.int64)
    offsets = np.full(n, _NO_OFFSET, dtype=np.int64)
    todo = np.ones(n, dtype=bool)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    for template in layout.ts_templates:
        rest = np.flatnonzero(todo & (lengths == len(template)))  # never widen the array to a long outlier
        if len(rest) == 0:
            continue
        ok, values = _parse_template([texts[i] for i in rest.tolist()] if len(rest) < n else texts, template)
        us[rest[ok]] = values[ok]
        todo[rest[ok]] = False
    bad: dict[int, str] = {}
    one_us = timedelta(microseconds=1)
    for i in np.flatnonzero(todo).tolist():
        text = texts[i].strip()
        try:
            dt, offset = layout.parse_ts(text)
        except (ValueError, OverflowError) as exc:
            detail = "" if str(exc) == "unrecognised layout" else f": {exc}"
            bad[i] = f"bad timestamp {text!r} (expected {layout.ts_hint}){detail}"
            continue
        us[i] = (dt - _EPOCH0) // one_us
        if offset is not None:
            offsets[i] = offset
    return us, offsets, bad


_NO_OFFSET = np.iinfo(np.int64).min


# --------------------------------------------------------------------------- parsing
_COLUMNS = ("open", "high", "low", "close", "volume")


def _split_rows(lines: list[str], layout: _Layout, errors: dict[int, list[str]]) -> tuple[np.ndarray, list[list[str]]]:
    """CSV-split the data lines; returns (line numbers, rows) of rows with the right field
    count, skipping blank lines and recording bad ones in ``errors``."""
    start, n_fields = layout.data_start, layout.n_fields
    body = lines[start:]
    reader = csv.reader(body, delimiter=layout.delimiter, strict=True)
    try:
        rows = list(reader)
        aligned = reader.line_num == len(body) and len(rows) == len(body)
    except csv.Error:
        aligned = False
    if aligned:  # the usual case: one row per line, so row i is on line start + i + 1
        line_no = np.arange(start + 1, start + 1 + len(rows), dtype=np.int64)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        wrong = np.flatnonzero(lengths != n_fields)
        if len(wrong) == 0:
            return line_no, rows
        numbered = [(int(line_no[i]), rows[i]) for i in wrong.tolist()]
        right = np.flatnonzero(lengths == n_fields)
        line_no, rows = line_no[right], [rows[i] for i in right.tolist()]
    else:  # a quoting error somewhere: split line by line, so it stays on its own line
        numbered = []
        for number, line in enumerate(body, start=start + 1):
            try:
                numbered.append((number, next(csv.reader([line], delimiter=layout.delimiter, strict=True), [])))
            except csv.Error as exc:
                errors[number] = [f"unparsable line: {exc}"]
        keep = [(n, row) for n, row in numbered if len(row) == n_fields]
        line_no, rows = np.array([n for n, _ in keep], dtype=np.int64), [row for _, row in keep]
    for number, row in numbered:
        if len(row) != n_fields and row and not (len(row) == 1 and not row[0].strip()):
            errors[number] = [f"wrong number of fields: expected {n_fields}, got {len(row)}"]
    return line_no, rows


def _parse_floats(column: list[str], name: str, bad: dict[int, list[str]]) -> np.ndarray:
    try:
        return np.array(column, dtype=np.float64)
    except ValueError:
        out = np.empty(len(column), dtype=np.float64)
        for i, text in enumerate(column):
            try:
                out[i] = float(text)
            except ValueError:
                out[i] = np.nan
                bad.setdefault(i, []).append(f"non-numeric {name} {text!r}")
        return out


def _report(
    errors: dict[int, list[str]], line_no: np.ndarray, mask: np.ndarray, describe: Callable[[int], str]
) -> None:
    for i in np.flatnonzero(mask).tolist():
        errors.setdefault(int(line_no[i]), []).append(describe(i))


def _validate_values(line_no: np.ndarray, values: np.ndarray, errors: dict[int, list[str]]) -> None:
    """Vectorised price/volume checks; ``values`` is [n, 5] open, high, low, close, volume."""
    finite = np.isfinite(values)
    ok = finite.all(axis=1)
    _report(
        errors,
        line_no,
        ~ok,
        lambda i: (
            "NaN or infinite "
            + ", ".join(f"{name} ({float(values[i, k])!r})" for k, name in enumerate(_COLUMNS) if not finite[i, k])
        ),
    )
    o, h, lo, c, v = values.T
    with np.errstate(invalid="ignore"):
        _report(
            errors,
            line_no,
            ok & (values[:, :4] <= 0).any(axis=1),
            lambda i: (
                "non-positive price: "
                + ", ".join(
                    f"{name}={float(values[i, k])!r}" for k, name in enumerate(_COLUMNS[:4]) if values[i, k] <= 0
                )
            ),
        )
        high_low = ok & (h < lo)
        _report(errors, line_no, high_low, lambda i: f"high {float(h[i])!r} < low {float(lo[i])!r}")
        ordered = ok & ~high_low
        _report(
            errors,
            line_no,
            ordered & ((o < lo) | (o > h)),
            lambda i: f"open {float(o[i])!r} outside [low, high] = [{float(lo[i])!r}, {float(h[i])!r}]",
        )
        _report(
            errors,
            line_no,
            ordered & ((c < lo) | (c > h)),
            lambda i: f"close {float(c[i])!r} outside [low, high] = [{float(lo[i])!r}, {float(h[i])!r}]",
        )
        _report(errors, line_no, ok & (v < 0), lambda i: f"negative volume {float(v[i])!r}")


def _validate_order(line_no: np.ndarray, ts: np.ndarray, texts: list[str], errors: dict[int, list[str]]) -> None:
    """Each timestamp (UTC) must be later than the previous parsable row's."""
    step = np.diff(ts)
    _report(
        errors,
        line_no,
        np.r_[False, step == np.timedelta64(0)],
        lambda i: f"duplicate timestamp {texts[i].strip()!r} (same instant as line {line_no[i - 1]})",
    )
    _report(
        errors,
        line_no,
        np.r_[False, step < np.timedelta64(0)],
        lambda i: f"non-increasing timestamp {texts[i].strip()!r} (line {line_no[i - 1]} has {texts[i - 1].strip()!r})",
    )


def _to_utc(us: np.ndarray, offsets: np.ndarray, zone: ZoneInfo | int | None) -> np.ndarray:
    ts = _EPOCH_US + us.astype("timedelta64[us]")
    explicit = offsets != _NO_OFFSET
    if zone is not None and not explicit.all():
        local = ~explicit
        ts[local] = _local_to_utc(ts[local], zone)
    if explicit.any():
        ts[explicit] -= offsets[explicit].astype("timedelta64[m]")
    return ts


def parse_bars_text(text: str, format: str = "auto", tz: str | None = "UTC", source_name: str = "<text>") -> Bars:
    """Parse the text of a bar file (see the module docstring) into UTC :class:`Bars`.

    Raises :class:`BarImportError` listing every bad line, or ValueError for a bad
    ``format``/``tz`` argument.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown bar format {format!r}; choose one of {', '.join(FORMATS)}")
    zone = _resolve_tz(tz)
    lines = _split_lines(text[1:] if text.startswith("\ufeff") else text)
    first = _non_blank(lines)
    if first is None:
        raise BarImportError(source_name, [], summary="the file is empty (no data rows)")
    fmt = _detect(lines, first, source_name) if format == "auto" else format
    layout = _layout(fmt, lines, first, source_name)

    errors: dict[int, list[str]] = {}
    line_no, rows = _split_rows(lines, layout, errors)
    if not rows and not errors:
        raise BarImportError(source_name, [], summary=f"no data rows (read as {fmt})")
    column = lambda k: [row[k] for row in rows]  # noqa: E731
    a, *b = layout.ts_cols
    texts = column(a) if not b else [f"{row[a].strip()} {row[b[0]].strip()}" for row in rows]
    us, offsets, bad_ts = _parse_timestamps(texts, layout)
    bad: dict[int, list[str]] = {i: [reason] for i, reason in bad_ts.items()}
    cols = (*layout.price_cols, layout.volume_col)
    values = np.zeros((len(rows), 5), dtype=np.float64)
    for k, (name, col) in enumerate(zip(_COLUMNS, cols)):
        if col is not None:
            values[:, k] = _parse_floats(column(col), name, bad)
    for i, reasons in bad.items():
        errors[int(line_no[i])] = reasons
    parsed = np.ones(len(rows), dtype=bool)
    parsed[list(bad)] = False
    ts = _to_utc(us, offsets, zone)
    _validate_values(line_no[parsed], values[parsed], errors)
    if bad_ts:  # order is checked over the rows whose timestamp could be read
        keep = np.ones(len(rows), dtype=bool)
        keep[list(bad_ts)] = False
        line_no, ts, texts = line_no[keep], ts[keep], [t for t, k in zip(texts, keep.tolist()) if k]
    _validate_order(line_no, ts, texts, errors)
    if errors:
        raise BarImportError(source_name, [(n, "; ".join(r)) for n, r in sorted(errors.items())])
    return Bars(ts.astype("datetime64[ns]"), *(np.ascontiguousarray(values[:, k]) for k in range(5)))


def parse_bars(path: str | os.PathLike[str], format: str = "auto", tz: str | None = "UTC") -> Bars:
    """Read and parse a bar file; see :func:`parse_bars_text`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such bar file: {path}") from None
    return parse_bars_text(decode_bytes(data), format, tz, str(path))
