"""``microzero evaluate``: backtest a checkpoint on held-out bars and write a report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.config import Config
from shared.splits import SPLIT_NAMES

HELD_OUT = tuple(name for name in SPLIT_NAMES if name != "train")  # never score on training bars


def _run(args: argparse.Namespace, config: Config) -> int:
    # Heavy imports here, so `microzero --help` stays fast.
    from shared.device import pick_device
    from shared.evaluation.checkpoints import (
        count_trials,
        load_model,
        resolve_checkpoint,
        with_checkpoint_features,
    )
    from shared.evaluation.report import ReportInputs, column_label, write_report
    from shared.evaluation.run import AGENT, evaluate_split
    from shared.evaluation.stats import bootstrap_mean_ci, verdict
    from shared.market import open_market
    from shared.metrics import format_metrics_table
    from shared.splits import make_splits
    from shared.training import greedy_policy

    if args.chunks < 1 or args.resamples < 1:
        raise ValueError("--chunks and --resamples must be >= 1")
    path = resolve_checkpoint(args.checkpoint, config)
    model, ckpt = load_model(path)
    config = with_checkpoint_features(config, ckpt)
    # The network's own window decides the observations (and so the split bounds, as in training).
    model_config = ckpt.model_config()
    window = model_config.window
    if window != config.env.window:
        print(
            f"note: using the checkpoint's window of {window} bars (config env.window is {config.env.window})",
            file=sys.stderr,
        )
    # The search must expand as many chance codes as this network has (as the API does).
    search = config.search.model_copy(update={"num_chance_codes": model_config.chance_codes})
    config = config.model_copy(update={"search": search})
    trials = count_trials(config, ckpt)
    symbol = (args.symbol or trials.symbol or config.data.default_symbol).upper()
    market = open_market(config, symbol)
    split = make_splits(len(market), config.splits, window)[args.split]
    device = pick_device(args.device)
    evaluation = evaluate_split(
        market,
        split,
        greedy_policy(model.to(device), config, device),
        window=window,
        drawdown_penalty=config.env.drawdown_penalty,
        chunks=args.chunks,
        seed=args.seed,
        n_trials=trials.n,
        progress=not args.quiet,
    )
    interval = bootstrap_mean_ci(evaluation.results[AGENT].trades.net_pips, resamples=args.resamples, seed=args.seed)
    judged = verdict(interval)
    inputs = ReportInputs(evaluation, interval, judged, trials, path, ckpt.sha256, ckpt.step, args.seed)
    block = max(1, split.decisions(window) // 40)  # about 40 blocks in the action chart
    paths = write_report(Path(args.report), inputs, block)

    print(f"{symbol} {args.split} split, {split.decisions(window)} decision bars, checkpoint {path} (step {ckpt.step})")
    print(format_metrics_table({column_label(n): r.metrics for n, r in evaluation.results.items()}))
    print(f"n_trials = {trials.n} from the {trials.source}: {trials.detail}")
    if interval.trades:
        print(
            f"expectancy {interval.mean:.2f} pips/trade, {interval.confidence:.0%} bootstrap interval "
            f"[{interval.low:.2f}, {interval.high:.2f}] over {interval.trades} trades"
        )
    print(f"verdict: {judged}")
    print(f"report: {paths['report']}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="backtest a checkpoint on held-out bars against the baselines; write an HTML report",
        description=(
            "Backtest a checkpoint greedily on a held-out split (never used for training; the test split "
            "is never used for selection either), with spread costs, against the baselines. Writes "
            "DIR/report.html (self-contained), the PNG charts, DIR/trades.csv and DIR/metrics.json."
        ),
    )
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint file, or 'best' (the validator's best.pt in pipeline.best_dir)"
    )
    parser.add_argument("--split", choices=HELD_OUT, default="test", help="held-out split (default: test)")
    parser.add_argument(
        "--symbol", default=None, help="symbol (default: the checkpoint's run in the registry, else config)"
    )
    parser.add_argument("--report", required=True, metavar="DIR", help="folder for the report files (created)")
    parser.add_argument(
        "--chunks", type=int, default=16, help="contiguous pieces played in parallel (default 16, as the validator)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline and the bootstrap")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
