"""Bar importers: every format round-trips, auto-detection, and every bad row is refused
with its exact line number."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pytest

from shared.data import checks
from shared.data.importers import (
    BarImportError,
    detect_format,
    parse_bars,
    parse_bars_text,
    parse_columns,
)

# Four H1 bars (UTC) with distinct, exactly representable-in-text values.
ROWS = [
    (datetime(2017, 1, 2, 0, 0), 1.05236, 1.05253, 1.05221, 1.05227, 143.5),
    (datetime(2017, 1, 2, 1, 0), 1.05227, 1.05426, 1.05226, 1.05282, 253.0),
    (datetime(2017, 1, 2, 2, 0), 1.05282, 1.0531, 1.0511, 1.0512, 0.0),
    (datetime(2017, 1, 2, 3, 0), 1.0512, 1.0525, 1.0501, 1.0524, 17.25),
]


def write_generic(rows, delimiter=",", ts=lambda t: t.strftime("%Y-%m-%d %H:%M:%S")):
    lines = [delimiter.join(["Timestamp", "Open", "High", "Low", "Close", "Volume"])]
    lines += [delimiter.join([ts(t), *map(str, v)]) for t, *v in rows]
    return "\n".join(lines) + "\n"


def write_histdata(rows):
    return "".join(f"{t:%Y%m%d %H%M%S};{o};{h};{lo};{c};{v}\n" for t, o, h, lo, c, v in rows)


def write_dukascopy(rows, head="Time"):
    lines = [f"{head},Open,High,Low,Close,Volume"]
    lines += [f"{t:%d.%m.%Y %H:%M:%S}.000,{o},{h},{lo},{c},{v}" for t, o, h, lo, c, v in rows]
    return "\n".join(lines) + "\n"


def write_mt4(rows):
    return "".join(f"{t:%Y.%m.%d,%H:%M},{o},{h},{lo},{c},{v}\n" for t, o, h, lo, c, v in rows)


def write_mt5(rows):
    lines = ["<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>"]
    lines += [f"{t:%Y.%m.%d}\t{t:%H:%M:%S}\t{o}\t{h}\t{lo}\t{c}\t{v}\t0\t12" for t, o, h, lo, c, v in rows]
    return "\n".join(lines) + "\n"


WRITERS = {
    "generic": write_generic,
    "histdata": write_histdata,
    "dukascopy": write_dukascopy,
    "metatrader": write_mt4,
    "mt5": write_mt5,
}
FORMAT_OF = {"mt5": "metatrader"}


def assert_bars_equal_rows(bars, rows, shift=timedelta(0)):
    expected_ts = np.array([t + shift for t, *_ in rows], dtype="datetime64[ns]")
    np.testing.assert_array_equal(bars.ts, expected_ts)
    assert bars.ts.dtype == np.dtype("datetime64[ns]")
    for k, name in enumerate(("open", "high", "low", "close", "volume")):
        np.testing.assert_array_equal(getattr(bars, name), [r[k + 1] for r in rows], err_msg=name)


@pytest.mark.parametrize("kind", sorted(WRITERS))
@pytest.mark.parametrize("fmt", ["explicit", "auto"])
def test_each_format_round_trips_through_a_file(tmp_path, kind, fmt):
    path = tmp_path / f"{kind}.csv"
    path.write_text(WRITERS[kind](ROWS))
    bars = parse_bars(path, format=FORMAT_OF.get(kind, kind) if fmt == "explicit" else "auto")
    assert_bars_equal_rows(bars, ROWS)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_auto_detection_names_the_format(kind):
    assert detect_format(WRITERS[kind](ROWS)) == FORMAT_OF.get(kind, kind)


@pytest.mark.parametrize("head", ["Gmt time", "Local time"])
def test_dukascopy_header_variants_are_detected(head):
    assert detect_format(write_dukascopy(ROWS, head=head)) == "dukascopy"
    assert_bars_equal_rows(parse_bars_text(write_dukascopy(ROWS, head=head)), ROWS)


def test_undetectable_file_is_refused_with_its_first_line_and_the_formats(tmp_path):
    path = tmp_path / "mystery.txt"
    path.write_text("price list for tuesday\n1,2,3\n")
    with pytest.raises(BarImportError) as info:
        parse_bars(path)
    message = str(info.value)
    assert str(path) in message and "'price list for tuesday'" in message
    for name in ("generic", "histdata", "dukascopy", "metatrader"):
        assert name in message


@pytest.mark.parametrize(
    "delimiter, ts, volume",
    [
        (",", lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"), True),
        (";", lambda t: t.strftime("%Y/%m/%d %H:%M"), True),
        ("\t", lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.000+00:00"), False),
        (",", lambda t: str(int((t - datetime(1970, 1, 1)).total_seconds() * 1000)), True),  # epoch ms
        (",", lambda t: str(int((t - datetime(1970, 1, 1)).total_seconds())), True),  # epoch s
    ],
)
def test_generic_variants(delimiter, ts, volume):
    rows = ROWS if volume else [(*r[:5], 0.0) for r in ROWS]
    text = write_generic(rows, delimiter, ts)
    if not volume:
        text = "\n".join(delimiter.join(line.split(delimiter)[:5]) for line in text.splitlines()) + "\n"
    assert_bars_equal_rows(parse_bars_text(text, "generic"), rows)


def test_generic_separate_date_and_time_columns_in_any_order_and_case():
    text = "CLOSE,Date,Time,open,High,LOW\n" + "".join(
        f"{c},{t:%Y-%m-%d},{t:%H:%M},{o},{h},{lo}\n" for t, o, h, lo, c, _ in ROWS
    )
    assert_bars_equal_rows(parse_bars_text(text), [(*r[:5], 0.0) for r in ROWS])


def test_generic_mixed_timestamp_spellings_agree():
    """The vectorised fast path and the per-row parser must give the same instants."""
    spellings = ["2017-01-02 00:00:00", "2017-01-02T01:00:00Z", "2017/1/2 02:00", "2017-01-02 04:00:00+01:00"]
    text = "time,open,high,low,close\n" + "".join(f"{s},1,2,0.5,1.5\n" for s in spellings)
    bars = parse_bars_text(text)
    np.testing.assert_array_equal(bars.ts, np.array([r[0] for r in ROWS], dtype="datetime64[ns]"))


def test_fractional_seconds_are_kept():
    text = "Time,Open,High,Low,Close,Volume\n02.01.2017 00:00:00.250,1,1,1,1,0\n02.01.2017 00:00:01.5,1,1,1,1,0\n"
    bars = parse_bars_text(text)
    assert bars.ts.tolist() == [
        np.datetime64("2017-01-02T00:00:00.250", "ns").astype(int),
        np.datetime64("2017-01-02T00:00:01.500", "ns").astype(int),
    ]


# --------------------------------------------------------------------------- timezones
def test_histdata_est_is_converted_to_utc_with_etc_gmt_plus_5(tmp_path):
    path = tmp_path / "DAT_ASCII_EURUSD_M1_2017.csv"
    path.write_text(write_histdata(ROWS))
    assert_bars_equal_rows(parse_bars(path, tz="Etc/GMT+5"), ROWS, shift=timedelta(hours=5))


@pytest.mark.parametrize(
    "tz, when, utc_hour",
    [
        ("America/New_York", datetime(2017, 1, 10, 12), 17),  # EST, UTC-5
        ("America/New_York", datetime(2017, 7, 10, 12), 16),  # EDT, UTC-4
        ("Europe/Berlin", datetime(2017, 7, 10, 12), 10),
        ("+02:00", datetime(2017, 1, 10, 12), 10),
        ("UTC-3", datetime(2017, 1, 10, 12), 15),
        ("UTC", datetime(2017, 1, 10, 12), 12),
    ],
)
def test_tz_argument_names_the_files_timezone(tz, when, utc_hour):
    rows = [(when, *ROWS[0][1:])]
    bars = parse_bars_text(write_histdata(rows), "histdata", tz=tz)
    assert bars.ts[0] == np.datetime64(when.replace(hour=utc_hour), "ns")


def test_explicit_offsets_in_the_file_override_tz():
    text = "Local time,Open,High,Low,Close,Volume\n02.01.2017 02:00:00.000 GMT+0200,1,1,1,1,0\n"
    bars = parse_bars_text(text, tz="America/New_York")
    assert bars.ts[0] == np.datetime64("2017-01-02T00:00", "ns")


def test_unknown_timezone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Olympus'"):
        parse_bars_text(write_histdata(ROWS), tz="Mars/Olympus")


# --------------------------------------------------------------------------- encodings
def test_bom_crlf_and_utf16_mt5_exports(tmp_path):
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(b"\xef\xbb\xbf" + write_dukascopy(ROWS).replace("\n", "\r\n").encode())
    assert_bars_equal_rows(parse_bars(crlf), ROWS)
    utf16 = tmp_path / "mt5.csv"
    utf16.write_bytes(write_mt5(ROWS).encode("utf-16"))
    assert_bars_equal_rows(parse_bars(utf16), ROWS)


# --------------------------------------------------------------------------- bad rows
GOOD = write_dukascopy(ROWS).splitlines()  # line 1 header, lines 2..5 the bars


BAD_ROWS = [
    ("02.01.2017 01:00:00.000,1.05,1.06,1.04", "wrong number of fields: expected 6, got 4"),
    ("02.01.2017 01:00:00.000,1.05,1.06,1.04,1.05,1,9", "wrong number of fields: expected 6, got 7"),
    ("2017-01-02 01:00,1.05,1.06,1.04,1.05,1", "bad timestamp '2017-01-02 01:00'"),
    ("30.02.2017 01:00:00.000,1.05,1.06,1.04,1.05,1", "bad timestamp '30.02.2017 01:00:00.000'"),
    ("02.01.2017 25:00:00.000,1.05,1.06,1.04,1.05,1", "bad timestamp"),
    ("02.01.2017 01:00:00.000,1.05,abc,1.04,1.05,1", "non-numeric high 'abc'"),
    ("02.01.2017 01:00:00.000,1.05,1.06,1.04,1.05,", "non-numeric volume ''"),
    ("02.01.2017 01:00:00.000,1.05,1.06,nan,1.05,1", "NaN or infinite low (nan)"),
    ("02.01.2017 01:00:00.000,1.05,inf,1.04,1.05,1", "NaN or infinite high (inf)"),
    ("02.01.2017 01:00:00.000,1.05,1.04,1.06,1.05,1", "high 1.04 < low 1.06"),
    ("02.01.2017 01:00:00.000,1.07,1.06,1.04,1.05,1", "open 1.07 outside [low, high] = [1.04, 1.06]"),
    ("02.01.2017 01:00:00.000,1.05,1.06,1.04,1.03,1", "close 1.03 outside [low, high] = [1.04, 1.06]"),
    ("02.01.2017 01:00:00.000,0,1.06,0,1.05,1", "non-positive price: open=0.0, low=0.0"),
    ("02.01.2017 01:00:00.000,-1,1.06,-2,1.05,1", "non-positive price: open=-1.0, low=-2.0"),
    ("02.01.2017 01:00:00.000,1.05,1.06,1.04,1.05,-3", "negative volume -3.0"),
    ("02.01.2017 01:00:00.000,1.05,1e308,1.04,1.05,1", "implausible price (above 1e+06): high=1e+308"),
    ("02.01.2017 01:00:00.000,1.05,1e999,1.04,1.05,1", "NaN or infinite high (inf)"),
    (
        "02.01.2017 01:00:00.000,1.05e7,1.06e7,1.04e7,1.05e7,1",
        "implausible price (above 1e+06): open=10500000.0, high=10600000.0, low=10400000.0, close=10500000.0",
    ),
    (
        "02.01.2017 00:00:00.000,1.05,1.06,1.04,1.05,1",
        "duplicate timestamp '02.01.2017 00:00:00.000' (same instant as line 2)",
    ),
    ("01.01.2017 23:00:00.000,1.05,1.06,1.04,1.05,1", "non-increasing timestamp '01.01.2017 23:00:00.000' (line 2 has"),
    ('02.01.2017 01:00:00.000,1.05,"1.06"x,1.04,1.05,1', "unparsable line: ',' expected after"),
    ('02.01.2017 01:00:00.000,1.05,"1.06,1.04,1.05,1', "unparsable line: unexpected end of data"),
    ("02.01.2017 01:00:00.000,1.05,1.06,1.04,1.05," + "9" * 200_000, "unparsable line: field larger"),
]


@pytest.mark.parametrize("line3, reason", BAD_ROWS, ids=[reason[:40] for _, reason in BAD_ROWS])
def test_each_bad_row_is_refused_with_its_line_number_and_reason(tmp_path, line3, reason):
    path = tmp_path / "bars.csv"
    path.write_text("\n".join([*GOOD[:2], line3, *GOOD[3:]]) + "\n")
    with pytest.raises(BarImportError) as info:
        parse_bars(path, format="dukascopy")
    err = info.value
    assert isinstance(err, ValueError)
    assert [n for n, _ in err.errors] == [3], err.errors
    assert err.errors[0][1].startswith(reason), err.errors
    assert str(path) in str(err) and f"line 3: {reason}" in str(err)


def test_all_bad_rows_are_reported_with_exact_line_numbers_across_blank_lines():
    lines = [
        "20170102 000000;1.05;1.06;1.04;1.05;0",  # 1 ok
        "",  # 2 blank: skipped, still counted
        "20170102 000100;1.05;1.04;1.06;1.05;0",  # 3 high < low
        "20170102 000200;1.05;1.06;1.04;1.05;0",  # 4 ok
        "   ",  # 5 blank
        "20170102 000200;1.05;1.06;1.04;1.05;0",  # 6 duplicate of 4
        "garbage",  # 7 wrong fields
        "20170102 000400;1.05;1.06;1.04;1.05;-1",  # 8 negative volume
        "20170102 000300;1.05;1.06;1.04;1.05;0",  # 9 goes back in time
    ]
    with pytest.raises(BarImportError) as info:
        parse_bars_text("\n".join(lines), "histdata", source_name="hd.csv")
    errors = info.value.errors
    assert [n for n, _ in errors] == [3, 6, 7, 8, 9]
    assert errors[0][1].startswith("high")
    assert errors[1][1].startswith("duplicate timestamp") and "line 4" in errors[1][1]
    assert errors[2][1].startswith("wrong number of fields")
    assert errors[3][1].startswith("negative volume")
    assert errors[4][1].startswith("non-increasing timestamp") and "line 8" in errors[4][1]
    assert str(info.value).startswith("cannot import hd.csv: 5 bad lines")


def test_a_row_with_several_problems_lists_them_all():
    text = "time,open,high,low,close\n2017-01-02 00:00,1,2,1,1\n2017-01-01 00:00,1,1,2,1\n"
    with pytest.raises(BarImportError) as info:
        parse_bars_text(text)
    ((line, reason),) = info.value.errors
    assert line == 3 and "high 1.0 < low 2.0" in reason and "non-increasing timestamp" in reason


def test_message_lists_the_first_20_bad_lines_then_a_count():
    text = "".join(f"20170102 {i:02d}0000;1;1;2;1;0\n" for i in range(23))  # all high < low
    with pytest.raises(BarImportError) as info:
        parse_bars_text(text, "histdata")
    assert len(info.value.errors) == 23
    message = str(info.value)
    assert "line 20:" in message and "line 21:" not in message and "... and 3 more" in message


@pytest.mark.parametrize("text", ["", "\n\n  \n", "Time,Open,High,Low,Close,Volume\n"])
def test_files_without_data_rows_are_refused(text):
    with pytest.raises(BarImportError, match="no data rows"):
        parse_bars_text(text, source_name="empty.csv")


def test_header_without_a_price_column_is_refused():
    with pytest.raises(BarImportError) as info:
        parse_bars_text("time,open,high,close\n2017-01-02,1,1,1\n", "generic")
    assert info.value.errors[0][0] == 1 and "missing column low" in info.value.errors[0][1]


def test_missing_file_and_bad_format_argument():
    with pytest.raises(FileNotFoundError, match="no such bar file"):
        parse_bars("/nonexistent/bars.csv")
    with pytest.raises(ValueError, match="unknown bar format 'excel'"):
        parse_bars_text(write_histdata(ROWS), "excel")


# --------------------------------------------------------------------------- impossible timestamps
@pytest.mark.parametrize(
    "line, reason",
    [
        (
            "31.12.1969 23:00:00.000,1.05,1.06,1.04,1.05,1",
            "timestamp '31.12.1969 23:00:00.000' is before 1970-01-01 (1969-12-31 23:00:00 UTC)",
        ),
        (
            "01.01.9999 00:00:00.000,1.05,1.06,1.04,1.05,1",
            "timestamp '01.01.9999 00:00:00.000' is more than a day in the future (9999-01-01 00:00:00 UTC)",
        ),
    ],
)
def test_timestamps_outside_1970_to_tomorrow_are_refused_with_line_and_value(tmp_path, line, reason):
    lines = GOOD[:]
    lines.insert(1 if "1969" in line else len(lines), line)  # first or last, so the order stays right
    path = tmp_path / "bars.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BarImportError) as info:
        parse_bars(path)
    number = 2 if "1969" in line else len(lines)
    assert info.value.errors == [(number, reason)]
    assert f"line {number}: {reason}" in str(info.value)


def test_a_timestamp_two_days_ahead_is_refused_one_a_few_hours_ahead_is_not():
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0, second=0)
    for ahead, refused in ((timedelta(hours=3), False), (timedelta(days=2), True)):
        text = write_generic([(now - timedelta(hours=1), *ROWS[0][1:]), (now + ahead, *ROWS[1][1:])])
        if refused:
            with pytest.raises(BarImportError, match="line 3: timestamp .* is more than a day in the future"):
                parse_bars_text(text)
        else:
            assert len(parse_bars_text(text)) == 2


# --------------------------------------------------------------------------- pandas, Parquet, --columns
def write_pandas(rows):
    """What ``DataFrame.to_csv()`` writes for a DatetimeIndex frame (e.g. backtesting.py's EURUSD.csv)."""
    lines = [",Open,High,Low,Close,Volume"]
    lines += [f"{t:%Y-%m-%d %H:%M:%S},{o},{h},{lo},{c},{int(v)}" for t, o, h, lo, c, v in rows]
    return "\n".join(lines) + "\n"


def test_pandas_to_csv_output_with_its_unnamed_index_imports(tmp_path):
    path = tmp_path / "EURUSD.csv"
    path.write_text(write_pandas(ROWS))
    rows = [(*r[:5], float(int(r[5]))) for r in ROWS]
    assert detect_format(path.read_text()) == "pandas"
    assert_bars_equal_rows(parse_bars(path), rows)
    assert_bars_equal_rows(parse_bars(path, format="pandas"), rows)
    assert_bars_equal_rows(parse_bars(path, format="generic"), rows)


def test_pandas_csv_errors_name_the_line(tmp_path):
    lines = write_pandas(ROWS).splitlines()
    lines[2] = "2017-01-02 01:00:00,1.05,1.04,1.06,1.05,1"
    path = tmp_path / "EURUSD.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BarImportError, match=r"line 3: high 1.04 < low 1.06"):
        parse_bars(path)


def write_parquet(path, select):
    """A Parquet file written by DuckDB (no pyarrow needed)."""
    con = duckdb.connect()
    con.execute(f"COPY ({select}) TO '{path}' (FORMAT parquet)")
    con.close()
    return path


def _rows_sql(rows, ts="TIMESTAMP", names=("ts", "open", "high", "low", "close", "volume"), zone=""):
    values = ", ".join(
        f"({ts} '{t:%Y-%m-%d %H:%M:%S}{zone}', {o!r}, {h!r}, {lo!r}, {c!r}, {v!r})" for t, o, h, lo, c, v in rows
    )
    return f"SELECT * FROM (VALUES {values}) v({', '.join(names)})"


@pytest.mark.parametrize("ts", ["TIMESTAMP", "VARCHAR"])
def test_parquet_round_trips_and_is_detected(tmp_path, ts):
    cast = "TIMESTAMP" if ts == "TIMESTAMP" else ""
    path = write_parquet(tmp_path / "bars.parquet", _rows_sql(ROWS, ts=cast))
    assert_bars_equal_rows(parse_bars(path), ROWS)
    assert_bars_equal_rows(parse_bars(path, format="parquet"), ROWS)


def test_parquet_zoned_timestamps_are_instants_and_naive_ones_follow_tz(tmp_path):
    shifted = [(t + timedelta(hours=2), *v) for t, *v in ROWS]  # written as Berlin-summer-like local + offset
    zoned = write_parquet(tmp_path / "zoned.parquet", _rows_sql(shifted, ts="TIMESTAMPTZ", zone="+02"))
    assert_bars_equal_rows(parse_bars(zoned, tz="America/New_York"), ROWS)  # an instant ignores --tz
    naive = write_parquet(tmp_path / "naive.parquet", _rows_sql(ROWS))
    assert_bars_equal_rows(parse_bars(naive, tz="+02:00"), ROWS, shift=timedelta(hours=-2))


def test_parquet_with_odd_names_uses_columns_and_errors_name_the_row(tmp_path):
    names = ("Date", "O", "H", "L", "C", "Vol")
    path = write_parquet(tmp_path / "odd.parquet", _rows_sql(ROWS, names=names))
    with pytest.raises(
        BarImportError, match=r"bad columns \(missing columns open, high, low, close in columns \['Date'"
    ):
        parse_bars(path)
    mapping = "ts=Date,open=O,high=H,low=L,close=C,volume=Vol"
    assert_bars_equal_rows(parse_bars(path, columns=mapping), ROWS)
    bad = [ROWS[0], (ROWS[1][0], 1.05, 1e308, 1.04, 1.05, 1.0), *ROWS[2:]]
    path = write_parquet(tmp_path / "bad.parquet", _rows_sql(bad, names=names))
    with pytest.raises(BarImportError) as info:
        parse_bars(path, columns=mapping)
    assert info.value.errors == [(2, "implausible price (above 1e+06): high=1e+308")]
    assert "1 bad row;" in str(info.value) and "row 2: implausible price" in str(info.value)


def test_parquet_nulls_and_duplicates_are_reported_by_row(tmp_path):
    select = (
        "SELECT * FROM (VALUES (TIMESTAMP '2017-01-02 00:00', 1.0, 2.0, 0.5, 1.5), "
        "(TIMESTAMP '2017-01-02 01:00', NULL, 2.0, 0.5, 1.5), (TIMESTAMP '2017-01-02 01:00', 1.0, 2.0, 0.5, 1.5)) "
        "v(time, open, high, low, close)"
    )
    with pytest.raises(BarImportError) as info:
        parse_bars(write_parquet(tmp_path / "nulls.parquet", select))
    assert info.value.errors == [
        (2, "missing open"),
        (3, "duplicate timestamp '2017-01-02 01:00:00' (same instant as row 2)"),
    ]


def test_pandas_to_parquet_index_column_is_the_timestamp(tmp_path):
    path = write_parquet(
        tmp_path / "pd.parquet", _rows_sql(ROWS, names=("__index_level_0__", "Open", "High", "Low", "Close", "Volume"))
    )
    assert_bars_equal_rows(parse_bars(path), ROWS)


def test_columns_maps_an_odd_csv_header(tmp_path):
    lines = ["Date;O;H;L;C;Qty"] + [f"{t:%Y-%m-%d %H:%M};{o};{h};{lo};{c};{v}" for t, o, h, lo, c, v in ROWS]
    path = tmp_path / "odd.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BarImportError, match="line 1: missing columns open, high, low, close"):
        parse_bars(path, format="generic")
    assert_bars_equal_rows(parse_bars(path, "generic", columns="ts=Date,open=O,high=H,low=L,close=C,volume=Qty"), ROWS)
    no_volume = parse_bars(path, "generic", columns={"open": "O", "high": "H", "low": "L", "close": "C"})
    assert not no_volume.volume.any()  # Qty is no known volume name and was not mapped
    with pytest.raises(BarImportError, match=r"line 1: no close column 'Last' \(from --columns\)"):
        parse_bars(path, "generic", columns="open=O,high=H,low=L,close=Last")


def test_columns_maps_separate_date_and_time(tmp_path):
    path = tmp_path / "dt.csv"
    path.write_text(
        "Day,Clock,open,high,low,close\n"
        + "".join(f"{t:%Y-%m-%d},{t:%H:%M},{o},{h},{lo},{c}\n" for t, o, h, lo, c, _ in ROWS)
    )
    assert_bars_equal_rows(parse_bars(path, columns="date=Day,time=Clock"), [(*r[:5], 0.0) for r in ROWS])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ts=Date,price=P", "unknown column role price"),
        ("ts", "bad --columns item 'ts'"),
        ("ts=Date,date=D,time=T", "either ts or date"),
        ("date=D", "date and time must be mapped together"),
    ],
)
def test_bad_columns_specs_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_columns(spec)


def test_columns_need_a_header():
    with pytest.raises(ValueError, match="--columns needs a file with a header"):
        parse_bars_text(write_histdata(ROWS), "histdata", columns="ts=Date")


def test_latin1_file_with_a_mapped_accented_header(tmp_path):
    path = tmp_path / "latin1.csv"
    text = "Heure d'été;Open;High;Low;Close\n" + "".join(
        f"{t:%Y-%m-%d %H:%M};{o};{h};{lo};{c}\n" for t, o, h, lo, c, _ in ROWS
    )
    path.write_bytes(text.encode("latin-1"))
    assert_bars_equal_rows(parse_bars(path, columns="ts=Heure d'été"), [(*r[:5], 0.0) for r in ROWS])


# --------------------------------------------------------------------------- big files
def test_line_numbers_stay_exact_deep_in_a_large_file_with_blank_lines(tmp_path):
    """DuckDB scans in parallel: numbering must still follow the file."""
    n = 120_000
    start = datetime(2017, 1, 2)
    lines = [f"{start + timedelta(minutes=i):%Y%m%d %H%M%S};1.1;1.2;1.0;1.1;0" for i in range(n)]
    lines[50_000] = ""
    lines[99_998] = lines[99_998].replace(";1.2;", ";0.9;")  # high < low on line 99,999
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BarImportError) as info:
        parse_bars(path, "histdata")
    assert info.value.errors == [(99_999, "high 0.9 < low 1.0")]
    lines[99_998] = lines[99_998].replace(";0.9;", ";1.2;")
    path.write_text("\n".join(lines) + "\n")
    assert len(parse_bars(path)) == n - 1


def test_only_the_first_bad_lines_are_explained_but_all_are_counted(monkeypatch):
    monkeypatch.setattr(checks, "MAX_EXPLAINED", 5)
    text = "".join(f"20170102 {i:02d}0000;1;1;2;1;0\n" for i in range(23))  # all high < low
    with pytest.raises(BarImportError) as info:
        parse_bars_text(text, "histdata")
    assert [n for n, _ in info.value.errors] == [1, 2, 3, 4, 5] and info.value.bad_count == 23
    assert "23 bad lines" in str(info.value) and "... and 3 more" in str(info.value)


def test_fully_quoted_fields_are_read_and_a_quoted_delimiter_is_explained():
    text = '"time","open","high","low","close"\n' + "".join(
        f'"{t:%Y-%m-%d %H:%M:%S}","{o}","{h}","{lo}","{c}"\n' for t, o, h, lo, c, _ in ROWS
    )
    assert_bars_equal_rows(parse_bars_text(text), [(*r[:5], 0.0) for r in ROWS])
    lines = text.splitlines()
    lines[2] = lines[2].replace(f'"{ROWS[1][1]}"', '"1,05"', 1)  # line 3: a decimal comma inside quotes
    with pytest.raises(BarImportError) as info:
        parse_bars_text("\n".join(lines) + "\n")
    assert info.value.errors == [(3, "non-numeric open '1,05'")]


def test_a_line_too_long_for_duckdb_is_refused_with_its_number(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text(
        "time,open,high,low,close\n2017-01-02 00:00,1,2,0.5,1\n2017-01-02 01:00,1,2,0.5," + "1" * 3_000_000 + "\n"
    )
    with pytest.raises(BarImportError, match="CSV Error on Line: 3; Maximum line size"):
        parse_bars(path)
