"""``microzero analyze tcn``: plots of the representation's TCN kernels and attention
pooling for a checkpoint (computation in ``shared.analysis.tcn``, figures in
``shared.analysis.plots``). ``microzero analyze q``: the Q differences that decide
trades against the moves that followed (``shared.analysis.qvalues``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.splits import SPLIT_NAMES, make_splits

MAX_WINDOWS = 4096


def register(subparsers: argparse._SubParsersAction) -> None:
    analyze = subparsers.add_parser("analyze", help="look inside a trained model")
    commands = analyze.add_subparsers(dest="analyze_command", required=True, metavar="ANALYZE_COMMAND")
    tcn = commands.add_parser(
        "tcn",
        help="TCN kernels per dilation and attention pooling over the window: PNGs and summary.json",
        description="Plots the learned TCN kernels per dilation and the attention-pooling weights over the "
        "observation window (averaged over the split's windows, and for a few samples). Observations use a flat "
        "position state (the 6 position columns 0).",
    )
    _model_and_market_arguments(tcn, split_help="split the windows come from")
    tcn.add_argument("--out", required=True, type=Path, help="directory for the PNGs and summary.json")
    tcn.add_argument("--samples", type=int, default=4, help="sample windows to plot one by one (default 4)")
    tcn.add_argument(
        "--windows",
        type=int,
        default=MAX_WINDOWS,
        help=f"most windows to average the attention over, evenly spread (default {MAX_WINDOWS})",
    )
    tcn.add_argument("--quiet", action="store_true", help="no progress bar")
    tcn.set_defaults(func=tcn_command)

    q = commands.add_parser(
        "q",
        help="the Q differences that decide trades (Buy-Sell from flat, Hold-Close from long) against the "
        "price's coming move: summary.json",
        description="On every decision bar of the split: Q(Buy)-Q(Sell) from flat and Q(Hold)-Q(Close) from a "
        "long bought on the bar before, their spread and correlation with the move of the next --horizon bars, "
        "and with --level (a price the series reverts to) their slope on the distance from it.",
    )
    _model_and_market_arguments(q, split_help="split the decision bars come from")
    q.add_argument("--horizon", type=int, default=20, help="bars of the coming move (default 20)")
    q.add_argument(
        "--level",
        type=float,
        help="a price the series reverts to (synthetic mean_reverting bars: 1.2): adds each difference's slope "
        "on the distance from it, pips per pip",
    )
    q.add_argument("--out", type=Path, help="also write summary.json here")
    q.set_defaults(func=q_command)


def _model_and_market_arguments(parser: argparse.ArgumentParser, split_help: str) -> None:
    """The options `_model_and_market` reads."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint file, or 'best' (the validator's best.pt)")
    parser.add_argument("--symbol", help="symbol whose bars to read (default: data.default_symbol)")
    parser.add_argument("--split", choices=SPLIT_NAMES, default="validation", help=split_help)
    parser.add_argument("--db", help="bar store (default: data.db_path)")


def _model_and_market(args: argparse.Namespace, config):
    """The checkpoint's model and the market it reads, its own feature settings applied."""
    from shared.cli import CommandError
    from shared.env import NUM_POSITION_FEATURES
    from shared.evaluation.checkpoints import load_model, resolve_checkpoint, with_checkpoint_features
    from shared.market import open_market

    path = resolve_checkpoint(args.checkpoint, config)
    model, ckpt = load_model(path)  # CheckpointError (a ValueError): exit 2 with the reason
    config = with_checkpoint_features(config, ckpt)
    cfg = ckpt.model_config()
    symbol = (args.symbol or config.data.default_symbol).upper()
    market = open_market(config, symbol, db_path=args.db, on_import=print)
    if market.features.shape[1] + NUM_POSITION_FEATURES != cfg.input_features:
        raise CommandError(
            f"checkpoint {path} expects {cfg.input_features} inputs per bar; {symbol}'s features give "
            f"{market.features.shape[1]} + {NUM_POSITION_FEATURES} position columns"
        )
    split = make_splits(len(market), config.splits, cfg.window)[args.split]  # the checkpoint's window sets the bounds
    return path, model, ckpt, symbol, market, split


def q_command(args: argparse.Namespace, config) -> int:
    import numpy as np

    from shared.analysis.qvalues import q_differences, summarise
    from shared.cli import CommandError

    if args.horizon < 1:
        raise CommandError(f"--horizon must be at least 1, got {args.horizon}")
    path, model, ckpt, symbol, market, split = _model_and_market(args, config)
    window = ckpt.model_config().window
    # The long observation needs the bar before (bought there), the move `horizon` bars after.
    rows = np.arange(split.first_decision(window) + 1, split.stop - args.horizon)
    if len(rows) < 2:
        raise CommandError(f"the {args.split} split has no decision bar with {args.horizon} bars after it")
    move = (market.close[rows + args.horizon] - market.close[rows]) / market.pip
    distance = None if args.level is None else (market.close[rows] - args.level) / market.pip
    summary = {
        "checkpoint": str(path),
        "step": ckpt.step,
        "symbol": symbol,
        "split": args.split,
        "bars": len(rows),
        "horizon": args.horizon,
        "level": args.level,
        **summarise(q_differences(model, market, rows, window), move, distance),
    }
    print(
        f"checkpoint {path} (step {ckpt.step}); {symbol} {args.split} split, {len(rows)} bars, horizon {args.horizon}"
    )

    def signed(x: float | None, digits: int) -> str:
        return "n/a (constant)" if x is None else f"{x:+.{digits}f}"

    labels = {"open": "Q(Buy) - Q(Sell), flat", "hold": "Q(Hold) - Q(Close), long"}
    for name, label in labels.items():
        stats = summary[name]
        line = f"  {label}: mean {stats['mean']:+.2f} pips, std {stats['std']:.2f}, "
        line += f"corr with move {signed(stats['corr_with_move'], 2)}"
        if distance is not None:
            line += f", slope on the gap to {args.level} {signed(stats['slope_on_level_gap'], 3)} pips/pip"
        print(line)
    line = f"  the {args.horizon}-bar move: std {summary['move']['std']:.1f} pips"
    if distance is not None:
        line += f", slope on the gap {signed(summary['move']['slope_on_level_gap'], 3)} pips/pip"
    print(line)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"  wrote {args.out / 'summary.json'}")
    return 0


def tcn_command(args: argparse.Namespace, config) -> int:
    # Heavy imports here: every `microzero` command imports this module at start.
    import numpy as np
    import torch

    from shared.analysis import plots
    from shared.analysis.tcn import (
        NEWEST,
        attention_weights,
        flat_observations,
        interpret,
        split_attention,
        summarise,
        tcn_kernels,
    )
    from shared.cli import CommandError

    if args.samples < 1 or args.windows < 1:
        raise CommandError("--samples and --windows must be at least 1")
    path, model, ckpt, symbol, market, split = _model_and_market(args, config)
    W = ckpt.model_config().window

    kernels = tcn_kernels(model)
    stats = split_attention(model, market, split, W, max_windows=args.windows, progress=not args.quiet)
    picks = stats.rows[np.linspace(0, len(stats.rows) - 1, min(args.samples, len(stats.rows))).round().astype(int)]
    weights = attention_weights(model, torch.from_numpy(flat_observations(market, picks, W)))[0].double().numpy()
    samples = []
    for row, w in zip(picks, weights):
        ts = np.datetime_as_string(market.ts[row], unit="m")
        samples.append(
            (
                f"{symbol} decision bar {ts} UTC: newest {NEWEST} bars hold {w[-NEWEST:].sum():.0%}",
                w,
                market.close[row - W + 1 : row + 1],
            )
        )

    summary = {
        "checkpoint": str(path),
        "step": ckpt.step,
        "sha256": ckpt.sha256,
        "symbol": symbol,
        "split": args.split,
        "window": W,
        "position_state": "flat: the 6 position columns are 0 in every window (the market reading alone)",
        **summarise(kernels, stats, W),
        "samples": [
            {
                "row": int(row),
                "ts": np.datetime_as_string(market.ts[row], unit="m"),
                f"newest_{NEWEST}_share": float(w[-NEWEST:].sum()),
                "weights_oldest_first": [float(x) for x in w],
            }
            for row, w in zip(picks, weights)
        ],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    files = {
        "tcn_kernels.png": plots.kernels_png(kernels),
        "attention_mean.png": plots.attention_mean_png(stats, W),
        "attention_samples.png": plots.attention_samples_png(samples, W),
        "summary.json": (json.dumps(summary, indent=2) + "\n").encode(),
    }
    for name, data in files.items():
        (args.out / name).write_bytes(data)
    print(
        f"checkpoint {path} (step {ckpt.step}); {symbol} {args.split} split, {len(stats.rows)} windows of {W} bars, "
        "position state flat"
    )
    for name, data in files.items():
        print(f"  wrote {args.out / name} ({len(data):,} bytes)")
    print(interpret(summary, W))
    return 0
