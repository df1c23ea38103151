"""``microzero data``: import bar files, load the bundled sample, inspect the store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.config import Config
from shared.data.importers import FORMAT_HELP, FORMATS, ROLES, parse_columns, sniff_file_format
from shared.data.sample import SAMPLE_SYMBOL, import_sample
from shared.data.store import BarStore, ImportSummary
from shared.data.synthetic import KINDS, synthetic_bars


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="import and inspect market bars",
        description="Import bar files, load the bundled sample, inspect the bar store.",
    )
    commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    def add(name: str, help: str, func) -> argparse.ArgumentParser:  # noqa: A002
        parser = commands.add_parser(name, help=help, description=help)
        parser.add_argument("--db", type=Path, default=None, help="bar store file (default: config data.db_path)")
        parser.set_defaults(func=func)
        return parser

    imp = add("import", "import a bar file (all-or-nothing; re-importing is idempotent)", cmd_import)
    imp.add_argument("path", type=Path, help="CSV/text or Parquet file of bars")
    imp.add_argument("--symbol", required=True, help="symbol to store the bars under, e.g. EURUSD")
    imp.add_argument("--format", choices=FORMATS, default="auto", help=f"file format (default: auto). {FORMAT_HELP}")
    imp.add_argument(
        "--tz",
        default="UTC",
        help="timezone the file's timestamps are in (default UTC), e.g. Europe/Berlin, +02:00; "
        "HistData files are EST without DST: use Etc/GMT+5",
    )
    imp.add_argument(
        "--columns",
        default=None,
        metavar="ROLE=NAME,...",
        help=f"the header's names for odd headers, e.g. ts=Date,open=O,high=H,low=L,close=C,volume=Vol "
        f"(roles: {', '.join(ROLES)})",
    )
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    sample = add("sample", "import the bundled EURUSD H1 2017 sample (idempotent)", cmd_sample)
    sample.add_argument("--symbol", default=SAMPLE_SYMBOL, help=f"symbol to store it under (default {SAMPLE_SYMBOL})")
    synth = add("synthetic", "generate bars with a learnable structure and import them", cmd_synthetic)
    synth.add_argument(
        "--kind",
        choices=KINDS,
        default="sine",
        help="sine: periodic drift plus noise; mean_reverting: an Ornstein-Uhlenbeck price; regime: trends that "
        "flip at random; intraday: a drift set by the hour of day; random_walk: no edge (a control)",
    )
    synth.add_argument("--symbol", default="SYNTH", help="symbol to store them under (default SYNTH)")
    synth.add_argument("--bars", type=int, default=20_000, help="number of bars (default 20000)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--period", type=float, default=48.0, help="sine period in bars (default 48)")
    synth.add_argument(
        "--drift-pips",
        type=float,
        help="sine: peak drift, regime: trend, intraday: hourly drift, per bar in pips (per-kind default)",
    )
    synth.add_argument("--noise-pips", type=float, help="noise per bar in pips (per-kind default)")
    synth.add_argument("--theta", type=float, default=0.05, help="mean_reverting: pull back per bar (default 0.05)")
    synth.add_argument("--regime-bars", type=float, default=150.0, help="regime: mean bars per trend (default 150)")
    add("info", "list the stored symbols: range, bar count, timeframe", cmd_info)
    delete = add("delete", "remove a symbol's bars from the store", cmd_delete)
    delete.add_argument("symbol")


def _store(args: argparse.Namespace, config: Config) -> BarStore:
    return BarStore(args.db if args.db is not None else config.data.db_path)


def _fmt(ts: np.datetime64) -> str:
    return str(ts.astype("datetime64[s]")).replace("T", " ")


def _print_summary(summary: ImportSummary, store: BarStore) -> None:
    print(
        f"{summary.symbol}: read {summary.rows_in_file} rows; inserted {summary.rows_inserted}, "
        f"updated {summary.rows_updated}, unchanged {summary.rows_unchanged}"
    )
    print(
        f"{summary.symbol} now holds {summary.total_bars} bars from {_fmt(summary.first_ts)} "
        f"to {_fmt(summary.last_ts)} UTC in {store.path}"
    )


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    store = _store(args, config)
    columns = parse_columns(args.columns)  # a bad mapping fails before any reading
    fmt = sniff_file_format(args.path, columns) if args.format == "auto" else args.format
    stages = ("read", "parse", "store")
    with tqdm(total=len(stages), unit="stage", file=sys.stderr, disable=args.quiet, leave=False) as bar:

        def on_stage(name: str) -> None:
            bar.set_description(f"{name} {Path(args.path).name}", refresh=False)
            bar.update(stages.index(name) - bar.n)

        summary = store.import_file(args.path, args.symbol, format=fmt, tz=args.tz, on_stage=on_stage, columns=columns)
        bar.update(len(stages) - bar.n)
    print(f"{args.path}: {fmt} format, timestamps read as {args.tz}")
    _print_summary(summary, store)
    return 0


def cmd_sample(args: argparse.Namespace, config: Config) -> int:
    store = _store(args, config)
    _print_summary(import_sample(store, args.symbol), store)
    return 0


def cmd_synthetic(args: argparse.Namespace, config: Config) -> int:
    store = _store(args, config)
    bars = synthetic_bars(
        args.kind,
        args.bars,
        seed=args.seed,
        period=args.period,
        drift_pips=args.drift_pips,
        noise_pips=args.noise_pips,
        theta=args.theta,
        regime_bars=args.regime_bars,
        pip=config.market.spec(args.symbol).pip,
    )
    source = (
        f"synthetic:{args.kind}:n={args.bars}:seed={args.seed}:period={args.period}:drift={args.drift_pips}"
        f":noise={args.noise_pips}:theta={args.theta}:regime_bars={args.regime_bars}"
    )
    _print_summary(store.import_bars(args.symbol, bars, source=source), store)
    return 0


def cmd_info(args: argparse.Namespace, config: Config) -> int:
    store = _store(args, config)
    infos = store.info()
    if not infos:
        print(f"no bars in {store.path}; run `microzero data sample` or `microzero data import PATH --symbol SYMBOL`")
        return 0
    header = ("symbol", "first (UTC)", "last (UTC)", "bars", "timeframe")
    rows = [(i.symbol, _fmt(i.first_ts), _fmt(i.last_ts), str(i.bars), i.timeframe) for i in infos]
    widths = [max(len(r[k]) for r in (header, *rows)) for k in range(len(header))]
    for row in (header, *rows):
        print(
            "  ".join(
                cell.rjust(w) if k == 3 else cell.ljust(w) for k, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()
        )
    return 0


def cmd_delete(args: argparse.Namespace, config: Config) -> int:
    store = _store(args, config)
    removed = store.delete(args.symbol)
    if removed == 0:
        print(f"{args.symbol.upper()}: nothing stored in {store.path}", file=sys.stderr)
        return 1
    print(f"{args.symbol.upper()}: removed {removed} bars from {store.path}")
    return 0
