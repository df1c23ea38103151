"""``microzero backtest``: baseline policies over a split, metrics side by side."""

from __future__ import annotations

import argparse
import json

import numpy as np

from shared.backtest import backtest
from shared.baselines import BASELINES, POLICIES, make_policy
from shared.config import Config
from shared.market import open_market
from shared.metrics import format_metrics_table
from shared.splits import SPLIT_NAMES


def _run(args: argparse.Namespace, config: Config) -> int:
    symbol = (args.symbol or config.data.default_symbol).upper()
    market = open_market(config, symbol, db_path=args.db, on_import=print)
    split = market.splits(config)[args.split]
    policies = args.policy or list(BASELINES)
    results = {
        name: backtest(
            market,
            split,
            make_policy(name, market, args.seed),
            window=config.env.window,
            drawdown_penalty=config.env.drawdown_penalty,
            chunks=args.chunks,
            progress=False if args.quiet else name,
        )
        for name in policies
    }
    first, last = (
        np.datetime_as_string(market.ts[i], unit="m") for i in (split.first_decision(config.env.window), split.stop - 1)
    )
    if args.json:
        print(
            json.dumps(
                {
                    "symbol": symbol,
                    "split": args.split,
                    "first_bar": str(first),
                    "last_bar": str(last),
                    "decisions": split.decisions(config.env.window),
                    "spread_pips": market.spread_pips,
                    "pip": market.pip,
                    "policies": {name: result.metrics.as_dict() for name, result in results.items()},
                },
                indent=2,
            )
        )
    else:
        print(
            f"{symbol} {args.split} split: {split.decisions(config.env.window)} decision bars, "
            f"{first} .. {last} UTC, spread {market.spread_pips} pips per round trip"
        )
        print(format_metrics_table({name: result.metrics for name, result in results.items()}))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "backtest",
        help="backtest baseline policies on a split and print the trading metrics",
        description="Backtest baseline policies over every decision bar of a split, with costs.",
    )
    parser.add_argument(
        "--policy",
        action="append",
        choices=list(POLICIES),
        help="policy to run (repeatable; default: every baseline). oracle = perfect foresight, a ceiling",
    )
    parser.add_argument("--split", choices=SPLIT_NAMES, default="test")
    parser.add_argument("--symbol", default=None, help="symbol in the bar store (default from config)")
    parser.add_argument("--db", default=None, help="DuckDB bar store (default from config)")
    parser.add_argument("--chunks", type=int, default=1, help="contiguous pieces played in parallel")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random policy")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (it goes to stderr)")
    parser.set_defaults(func=_run)
