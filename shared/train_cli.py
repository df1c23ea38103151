"""``microzero train``: self-play and learning in one process, then a held-out check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.config import Config


def _run(args: argparse.Namespace, config: Config) -> int:
    from shared.backtest import backtest
    from shared.baselines import make_policy
    from shared.market import open_market
    from shared.metrics import format_metrics_table
    from shared.training import evaluate, train

    symbol = (args.symbol or config.data.default_symbol).upper()
    market = open_market(config, symbol)
    out = Path(args.out or config.train.output_dir)
    result = train(
        config,
        market,
        out,
        steps=args.steps,
        minutes=args.minutes,
        device=args.device,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"{result.steps} learner steps, {result.episodes} episodes; checkpoint {result.checkpoints[-1]}")
    if args.eval_split == "none":
        return 0
    from shared.learning.checkpoint import load_checkpoint
    from shared.model.networks import StochasticMuZeroNet

    model = StochasticMuZeroNet(config.model)
    model.load_state_dict(load_checkpoint(result.checkpoints[-1]).state_dict)
    split = market.splits(config)[args.eval_split]
    rows = {"agent": evaluate(model, market, config, args.eval_split, "cpu").metrics}
    for name in ("flat", "random", "momentum", "oracle"):
        rows[name] = backtest(
            market,
            split,
            make_policy(name, market, args.seed),
            window=config.env.window,
            drawdown_penalty=config.env.drawdown_penalty,
            chunks=16,
        ).metrics
    share = rows["agent"].total_pips / rows["oracle"].total_pips if rows["oracle"].total_pips > 0 else float("nan")
    if args.json:
        print(json.dumps({name: m.as_dict() for name, m in rows.items()} | {"share_of_oracle": share}, indent=2))
    else:
        print(f"{symbol} {args.eval_split} split, greedy search, 16 chunks:")
        print(format_metrics_table(rows))
        print(f"agent earns {share:.1%} of the perfect-foresight pips")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="self-play and learn in one process, writing checkpoints",
        description="Self-play on the train split and learn; resumes from the latest checkpoint in --out.",
    )
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="wall-clock budget")
    budget.add_argument("--steps", type=int, help="learner steps")
    parser.add_argument("--symbol", default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None, help="run folder (default: config train.output_dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-split", default="validation", choices=["validation", "test", "none"])
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=_run)
