"""``microzero analyze tcn``: plots of the representation's TCN kernels and attention
pooling for a checkpoint (computation in ``shared.analysis.tcn``, figures in
``shared.analysis.plots``)."""

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
    tcn.add_argument("--checkpoint", required=True, help="checkpoint file, or 'best' (the validator's best.pt)")
    tcn.add_argument("--out", required=True, type=Path, help="directory for the PNGs and summary.json")
    tcn.add_argument("--symbol", help="symbol whose bars to read (default: data.default_symbol)")
    tcn.add_argument("--split", choices=SPLIT_NAMES, default="validation", help="split the windows come from")
    tcn.add_argument("--samples", type=int, default=4, help="sample windows to plot one by one (default 4)")
    tcn.add_argument(
        "--windows",
        type=int,
        default=MAX_WINDOWS,
        help=f"most windows to average the attention over, evenly spread (default {MAX_WINDOWS})",
    )
    tcn.add_argument("--db", help="bar store (default: data.db_path)")
    tcn.add_argument("--quiet", action="store_true", help="no progress bar")
    tcn.set_defaults(func=tcn_command)


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
    from shared.env import NUM_POSITION_FEATURES
    from shared.evaluation.checkpoints import (
        load_model,
        resolve_checkpoint,
        with_checkpoint_features,
    )
    from shared.market import open_market

    if args.samples < 1 or args.windows < 1:
        raise CommandError("--samples and --windows must be at least 1")
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
    W = cfg.window
    split = make_splits(len(market), config.splits, W)[args.split]  # the checkpoint's window sets the bounds

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
