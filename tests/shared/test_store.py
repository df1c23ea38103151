"""The DuckDB bar store, the bundled sample and the ``microzero data`` commands."""

from __future__ import annotations

import argparse
import subprocess
import sys

import duckdb
import numpy as np
import pytest

from shared.config import Config
from shared.data import cli as data_cli
from shared.data.bars import Bars
from shared.data.importers import BarImportError
from shared.data.sample import SAMPLE_BARS, ensure_sample, load_sample_bars, sample_path
from shared.data.store import BarStore, UnknownSymbolError, detect_timeframe, timeframe_name

OHLCV = ("open", "high", "low", "close", "volume")


def make_bars(n, start="2017-01-02T00:00", step_minutes=60, base=1.1, seed=0):
    rng = np.random.default_rng(seed)
    close = base + np.cumsum(rng.normal(0, 1e-3, n))
    open_ = np.r_[base, close[:-1]]
    high = np.maximum(open_, close) + 2e-4
    low = np.minimum(open_, close) - 2e-4
    ts = np.datetime64(start, "ns") + np.arange(n) * np.timedelta64(step_minutes, "m")
    return Bars.from_arrays(ts, open_, high, low, close, rng.integers(0, 1000, n))


def write_generic(path, bars):
    lines = ["time,open,high,low,close,volume"]
    for i in range(len(bars)):
        ts = str(bars.ts[i].astype("datetime64[s]")).replace("T", " ")
        lines.append(",".join([ts, *(repr(float(getattr(bars, c)[i])) for c in OHLCV)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_same_bars(a, b):
    np.testing.assert_array_equal(a.ts, b.ts)
    for name in OHLCV:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.fixture
def store(tmp_path):
    return BarStore(tmp_path / "nested" / "dir" / "bars.duckdb")


def test_import_then_load_round_trips_and_upper_cases_symbols(store):
    bars = make_bars(50)
    summary = store.import_bars("eurusd", bars, source="unit")
    assert store.path.exists()
    assert (summary.symbol, summary.rows_in_file, summary.rows_inserted, summary.rows_updated) == ("EURUSD", 50, 50, 0)
    assert summary.total_bars == 50
    assert summary.first_ts == bars.ts[0] and summary.last_ts == bars.ts[-1]
    assert store.symbols() == ["EURUSD"]
    loaded = store.load("EurUsd")
    assert loaded.ts.dtype == np.dtype("datetime64[ns]")
    assert_same_bars(loaded, bars)


def test_reimporting_the_same_file_is_idempotent(store, tmp_path):
    path = write_generic(tmp_path / "bars.csv", make_bars(30))
    first = store.import_file(path, "EURUSD")
    before, fingerprint = store.load("EURUSD"), store.content_hash("EURUSD")
    again = store.import_file(path, "EURUSD")
    assert (first.rows_inserted, again.rows_inserted, again.rows_updated, again.rows_unchanged) == (30, 0, 0, 30)
    assert again.total_bars == 30
    assert_same_bars(store.load("EURUSD"), before)
    assert store.content_hash("EURUSD") == fingerprint
    history = store.import_history("EURUSD")
    assert [h["rows"] for h in history] == [30, 30]
    assert history[0]["source"] == "bars.csv" and len(history[0]["sha256"]) == 64


def test_overlapping_imports_upsert_by_timestamp(store):
    full = make_bars(15)
    a, b = full.slice(0, 10), full.slice(5, 15)
    changed = Bars(b.ts, b.open, b.high + 0.01, b.low, b.close, b.volume)  # rows 5..7 differ
    changed.high[3:] = b.high[3:]
    store.import_bars("EURUSD", a)
    summary = store.import_bars("EURUSD", changed)
    assert (summary.rows_inserted, summary.rows_updated, summary.rows_unchanged) == (5, 3, 2)
    merged = store.load("EURUSD")
    assert len(merged) == 15 == summary.total_bars
    assert (np.diff(merged.ts) > np.timedelta64(0)).all()
    np.testing.assert_array_equal(merged.high[:5], a.high[:5])
    np.testing.assert_array_equal(merged.high[5:], changed.high)


def test_symbols_are_kept_apart(store):
    store.import_bars("EURUSD", make_bars(10))
    store.import_bars("gbpjpy", make_bars(7, base=150.0))
    assert store.symbols() == ["EURUSD", "GBPJPY"]
    assert len(store.load("EURUSD")) == 10 and len(store.load("GBPJPY")) == 7
    assert store.delete("gbpjpy") == 7
    assert store.symbols() == ["EURUSD"] and store.import_history("GBPJPY") == []


def test_a_refused_file_leaves_the_store_unchanged(store, tmp_path):
    good = write_generic(tmp_path / "good.csv", make_bars(20))
    store.import_file(good, "EURUSD")
    before = store.load("EURUSD")
    later = make_bars(20, start="2017-02-01T00:00")
    bad = write_generic(tmp_path / "bad.csv", later)
    lines = bad.read_text().splitlines()
    lines[15] = lines[15].replace(",", ",-", 1)  # negative open on line 16, rest is fine
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(BarImportError) as info:
        store.import_file(bad, "EURUSD")
    assert [n for n, _ in info.value.errors] == [16]
    assert_same_bars(store.load("EURUSD"), before)
    assert len(store.import_history()) == 1


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_impossible_prices_refuse_the_file_and_leave_the_store_unchanged(store, tmp_path, kind):
    store.import_file(write_generic(tmp_path / "good.csv", make_bars(20)), "EURUSD")
    before, history = store.load("EURUSD"), store.import_history()
    bad = write_generic(tmp_path / "bad.csv", make_bars(20, start="2017-02-01T00:00"))
    lines = bad.read_text().splitlines()
    fields = lines[7].split(",")
    fields[2] = "1e308"  # high on line 8
    lines[7] = ",".join(fields)
    bad.write_text("\n".join(lines) + "\n")
    if kind == "parquet":  # the same rows as Parquet, written by DuckDB
        con = duckdb.connect()
        con.execute(
            f"COPY (SELECT time::TIMESTAMP AS time, * EXCLUDE (time) FROM read_csv('{bad}', all_varchar = true)) "
            f"TO '{tmp_path / 'bad.parquet'}' (FORMAT parquet)"
        )
        con.close()
        bad = tmp_path / "bad.parquet"
    with pytest.raises(BarImportError) as info:
        store.import_file(bad, "EURUSD")
    number = 8 if kind == "csv" else 7  # Parquet counts rows, the CSV counts its header line too
    assert info.value.errors == [(number, "implausible price (above 1e+06): high=1e+308")]
    assert_same_bars(store.load("EURUSD"), before)
    assert store.import_history() == history


def test_a_failure_inside_the_transaction_rolls_everything_back(store):
    store.import_bars("EURUSD", make_bars(10))
    before = store.load("EURUSD")
    # Sabotage the import log so the transaction fails *after* the bars were written.
    con = duckdb.connect(str(store.path))
    con.execute("DROP TABLE imports")
    con.execute("CREATE TABLE imports (symbol VARCHAR)")
    con.close()
    with pytest.raises(duckdb.Error):
        store.import_bars("EURUSD", make_bars(30, seed=1))
    assert_same_bars(store.load("EURUSD"), before)


@pytest.mark.parametrize(
    "bars, message",
    [
        (make_bars(3).slice(0, 0), "no bars"),
        (
            Bars.from_arrays(
                np.array(["2017-01-02T01", "2017-01-02T00"], "datetime64[ns]"), [1, 1], [1, 1], [1, 1], [1, 1]
            ),
            "strictly increasing",
        ),
        (Bars.from_arrays(np.array(["2017-01-02T00"], "datetime64[ns]"), [1], [np.nan], [1], [1]), "NaN"),
    ],
)
def test_import_bars_guards_unvalidated_bars(store, bars, message):
    with pytest.raises(ValueError, match=message):
        store.import_bars("EURUSD", bars)
    assert store.symbols() == []


def test_load_range_is_half_open_and_accepts_several_time_types(store):
    store.import_bars("EURUSD", make_bars(48))  # 2017-01-02 00:00 .. 2017-01-03 23:00
    day2 = store.load("EURUSD", "2017-01-03", np.datetime64("2017-01-03T06:00"))
    assert len(day2) == 6
    assert day2.ts[0] == np.datetime64("2017-01-03T00:00") and day2.ts[-1] == np.datetime64("2017-01-03T05:00")
    assert len(store.load("EURUSD", start="2017-01-03T22:00:00Z")) == 2
    assert len(store.load("EURUSD", start="2018-01-01")) == 0


def test_unknown_symbol_lists_the_available_ones(store):
    with pytest.raises(UnknownSymbolError, match="empty.*microzero data sample"):
        store.load("EURUSD")
    store.import_bars("EURUSD", make_bars(5))
    store.import_bars("USDJPY", make_bars(5, base=110.0))
    with pytest.raises(ValueError, match=r"no bars for 'GBPJPY' .*available symbols: EURUSD, USDJPY"):
        store.load("gbpjpy")


def test_reading_a_store_that_does_not_exist_creates_nothing(tmp_path):
    store = BarStore(tmp_path / "missing" / "bars.duckdb")
    assert store.symbols() == [] and store.info() == []
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    "step_minutes, name",
    [
        (1, "M1"),
        (5, "M5"),
        (15, "M15"),
        (30, "M30"),
        (60, "H1"),
        (240, "H4"),
        (1440, "D1"),
        (10080, "W1"),
        (7, "7min"),
        (120, "2h"),
    ],
)
def test_info_detects_the_timeframe_from_the_median_spacing(store, step_minutes, name):
    bars = make_bars(40, step_minutes=step_minutes)
    keep = np.ones(40, dtype=bool)
    keep[[10, 11, 25]] = False  # gaps (weekends, holidays) must not change the answer
    bars = Bars(*(getattr(bars, f)[keep] for f in ("ts", *OHLCV)))
    store.import_bars("EURUSD", bars)
    (info,) = store.info()
    assert (info.symbol, info.bars, info.timeframe) == ("EURUSD", 37, name)
    assert info.first_ts == bars.ts[0] and info.last_ts == bars.ts[-1]
    assert detect_timeframe(bars.ts) == name


def test_timeframe_names():
    assert [timeframe_name(s) for s in (60, 3600, 86400, 30 * 86400, 45, None)] == ["M1", "H1", "D1", "MN1", "45s", "?"]


def test_content_hash_changes_with_the_data(store):
    bars = make_bars(10)
    store.import_bars("EURUSD", bars)
    first = store.content_hash("EURUSD")
    tweaked = Bars(bars.ts[:1], bars.open[:1], bars.high[:1], bars.low[:1], bars.close[:1], bars.volume[:1] + 1)
    store.import_bars("EURUSD", tweaked)
    assert store.content_hash("EURUSD") != first


# --------------------------------------------------------------------------- sample
def test_bundled_sample_is_the_2017_eurusd_h1_series(store):
    bars = load_sample_bars()
    assert len(bars) == SAMPLE_BARS == 6225
    assert bars.ts[0] == np.datetime64("2017-01-01T22:00") and bars.ts[-1] == np.datetime64("2017-12-29T21:00")
    assert bars.close[0] == 1.05227 and bars.volume[0] == 143539993.3
    assert sample_path().name == "FOREX_EURUSD_1H_ASK.csv"
    assert ensure_sample(store) is True
    assert ensure_sample(store) is False
    (info,) = store.info()
    assert (info.symbol, info.bars, info.timeframe) == ("EURUSD", 6225, "H1")
    assert info.first_ts == np.datetime64("2017-01-01T22:00") and info.last_ts == np.datetime64("2017-12-29T21:00")
    assert_same_bars(store.load("EURUSD"), bars)


# --------------------------------------------------------------------------- CLI
def run_cli(argv, capsys):
    parser = argparse.ArgumentParser(prog="microzero")
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args, Config())
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_sample_import_and_info(tmp_path, capsys):
    db = str(tmp_path / "cli.duckdb")
    code, out, _ = run_cli(["data", "sample", "--db", db], capsys)
    assert code == 0 and "inserted 6225" in out and "2017-01-01 22:00:00 to 2017-12-29 21:00:00" in out
    code, out, _ = run_cli(["data", "sample", "--db", db], capsys)
    assert code == 0 and "inserted 0, updated 0, unchanged 6225" in out

    path = tmp_path / "DAT_ASCII_GBPJPY_M1.csv"
    path.write_text("20170102 000000;140.1;140.2;140.0;140.1;0\n20170102 000100;140.1;140.3;140.1;140.2;0\n")
    code, out, _ = run_cli(["data", "import", str(path), "--symbol", "gbpjpy", "--tz", "Etc/GMT+5", "--db", db], capsys)
    assert code == 0 and "histdata" in out and "inserted 2" in out and "2017-01-02 05:00:00" in out

    code, out, _ = run_cli(["data", "info", "--db", db], capsys)
    lines = out.splitlines()
    assert lines[0].split() == ["symbol", "first", "(UTC)", "last", "(UTC)", "bars", "timeframe"]
    assert lines[1].split() == ["EURUSD", "2017-01-01", "22:00:00", "2017-12-29", "21:00:00", "6225", "H1"]
    assert lines[2].split() == ["GBPJPY", "2017-01-02", "05:00:00", "2017-01-02", "05:01:00", "2", "M1"]


def test_cli_import_of_a_bad_file_raises_a_user_error_and_stores_nothing(tmp_path, capsys):
    db = tmp_path / "cli.duckdb"
    path = tmp_path / "bad.csv"
    path.write_text("time,open,high,low,close\n2017-01-02 00:00,1,0.5,2,1\n")
    with pytest.raises(ValueError, match="line 2: high 0.5 < low 2.0"):
        run_cli(["data", "import", str(path), "--symbol", "EURUSD", "--db", str(db)], capsys)
    assert BarStore(db).symbols() == []


def test_cli_imports_pandas_csv_parquet_and_odd_headers(tmp_path, capsys):
    db = str(tmp_path / "cli.duckdb")
    pandas_csv = tmp_path / "EURUSD.csv"  # as backtesting.py ships it: DataFrame.to_csv() output
    pandas_csv.write_text(
        ",Open,High,Low,Close,Volume\n2017-01-02 00:00:00,1.0460,1.0470,1.0450,1.0465,100\n"
        "2017-01-02 01:00:00,1.0465,1.0480,1.0460,1.0475,200\n"
    )
    code, out, _ = run_cli(["data", "import", str(pandas_csv), "--symbol", "eurusd", "--db", db], capsys)
    assert code == 0 and "pandas format" in out and "inserted 2" in out

    odd = tmp_path / "odd.csv"
    odd.write_text("Date,O,H,L,C,Vol\n2017-01-02 02:00,1.0475,1.0490,1.0470,1.0480,5\n")
    code, out, _ = run_cli(
        [
            "data",
            "import",
            str(odd),
            "--symbol",
            "EURUSD",
            "--db",
            db,
            "--columns",
            "ts=Date,open=O,high=H,low=L,close=C,volume=Vol",
        ],
        capsys,
    )
    assert code == 0 and "inserted 1" in out and "EURUSD now holds 3 bars" in out

    parquet = tmp_path / "bars.parquet"
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT column0::TIMESTAMP AS Datetime, * EXCLUDE (column0) FROM read_csv('{pandas_csv}')) "
        f"TO '{parquet}' (FORMAT parquet)"
    )
    con.close()
    code, out, _ = run_cli(["data", "import", str(parquet), "--symbol", "GBPUSD", "--db", db], capsys)
    assert code == 0 and "parquet format" in out and "inserted 2" in out
    with pytest.raises(ValueError, match="unknown column role price"):
        run_cli(["data", "import", str(odd), "--symbol", "X", "--db", db, "--columns", "price=C"], capsys)


def test_cli_defaults_to_the_configured_db_path(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    data_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "info"])
    config = Config(data={"db_path": tmp_path / "configured.duckdb"})
    args.func(args, config)
    assert "configured.duckdb" in capsys.readouterr().out


def test_console_entry_runs_data_commands(tmp_path):
    db = str(tmp_path / "e2e.duckdb")
    ok = subprocess.run(
        [sys.executable, "-m", "shared.cli", "data", "sample", "--db", db], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert "EURUSD now holds 6225 bars" in ok.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("nothing to see\n")
    refused = subprocess.run(
        [sys.executable, "-m", "shared.cli", "data", "import", str(bad), "--symbol", "X", "--db", db],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "cannot detect the bar format" in refused.stderr


def test_bench_import_generates_imports_and_measures_in_a_child():
    from shared.data.bench import bench_import, format_import

    report = bench_import(rows=3000)
    assert report["rows"] == 3000 and report["rows_per_s"] > 0
    assert report["peak_rss_mib"] >= report["rss_after_imports_mib"] > 0
    assert set(report["stage_seconds"]) == {"read", "parse", "store"}
    assert "3,000 generated M1 rows" in format_import(report) and "VmHWM" in format_import(report)
