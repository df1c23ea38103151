"""``microzero experiment NAME``: a named comparison, mean and 95 % CI across seeds.

The variants are declared in ``shared/experiments/variants.py``; the runner
(``runner.py``) trains and evaluates them, ``stats.py`` holds the intervals and
``report.py`` writes ``OUT/results.md`` and ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from shared.config import Config
from shared.experiments.variants import EXPERIMENTS


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs distinct integers, got {text!r}")
    return seeds


def _milestones(text: str) -> list[int]:
    try:
        values = sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--curve takes comma-separated env-step counts, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"--curve needs positive env-step counts, got {text!r}")
    return values


def _agents(text: str) -> tuple[str, ...]:
    from shared.experiments.curve import AGENTS

    agents = tuple(a.strip() for a in text.split(",") if a.strip())
    if not agents or len(set(agents)) != len(agents) or not set(agents) <= set(AGENTS):
        raise argparse.ArgumentTypeError(f"--agents takes distinct names among {','.join(AGENTS)}; got {text!r}")
    return agents


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _command(args: argparse.Namespace, symbol: str, out: Path) -> str:
    """The command line that repeats this run, rebuilt from the parsed options (sys.argv
    is not ours when main() is called from Python)."""
    words = ["microzero"] + (["--config", args.config] if args.config else []) + ["experiment", args.name]
    if args.curve:
        words += ["--curve", ",".join(map(str, args.curve)), "--split", args.split]
        words += ["--agents", ",".join(args.agents)] if args.agents else []
    elif args.steps is not None:
        words += ["--steps", str(args.steps)]
    else:
        words += ["--minutes", f"{args.minutes:g}"]
    words += ["--seeds", ",".join(map(str, args.seeds)), "--symbol", symbol, "--out", str(out)]
    words += ["--small"] * args.small + [w for text in args.set for w in ("--set", text)]
    words += ["--device", args.device, "--threads", str(args.threads)] + ["--jobs", str(args.jobs)] * (args.jobs > 1)
    for folder in args.reuse_runs_from:
        words += ["--reuse-runs-from", folder]
    return shlex.join(words)


def _run(args: argparse.Namespace, config: Config) -> int:
    import torch

    from shared.data.sample import ensure_sample
    from shared.data.store import BarStore
    from shared.device import pick_device
    from shared.experiments.ppo import MissingDependency
    from shared.experiments.report import write_results
    from shared.experiments.runner import Budget, run_experiment
    from shared.experiments.variants import SMALL, apply_overrides, get_experiment, parse_settings
    from shared.market import open_market

    # One thread by default: measured on the shared 2-core box, a small model trained
    # 8x slower with 2 threads than with 1 once other processes held the cores (the
    # threads spin waiting for each other). Run experiments side by side instead.
    torch.set_num_threads(args.threads)
    pick_device(args.device)
    experiment = get_experiment(args.name)
    if args.curve and args.name != "ppo":
        raise ValueError("--curve draws MuZero against PPO: use it with `experiment ppo`")
    if args.agents and not args.curve:
        raise ValueError("--agents picks the agents of a learning curve: use it with --curve")
    if not args.curve and (args.steps is None) == (args.minutes is None):
        raise ValueError("give a budget: --steps, --minutes or --curve")
    # The preset, then the user's --set on top of it (a config file or MZ_* variable would
    # be overridden by the preset); each variant's own overrides come last.
    config = apply_overrides(config, SMALL) if args.small else config
    config = apply_overrides(config, parse_settings(args.set))
    symbol = (args.symbol or config.data.default_symbol).upper()
    store = BarStore(config.data.db_path)
    ensure_sample(store, symbol)
    if symbol not in store.symbols():
        raise ValueError(f"no bars for {symbol} in {store.path}; import them first (e.g. `microzero data synthetic`)")
    out = Path(args.out or f"runs/experiments/{experiment.name}")
    command = _command(args, symbol, out)
    if args.curve:
        return _run_curve(args, config, symbol, store, out, command)
    budget = Budget(steps=args.steps, minutes=args.minutes)
    start = time.monotonic()
    try:
        result = run_experiment(
            experiment,
            config,
            lambda cfg: open_market(cfg, symbol, store=store),
            out,
            seeds=args.seeds,
            budget=budget,
            device=args.device,
            progress=not args.quiet,
            reuse_from=[Path(p) for p in args.reuse_runs_from],
            jobs=args.jobs,
        )
    except MissingDependency as exc:
        print(f"microzero experiment {experiment.name}: {exc}", file=sys.stderr)
        return 2
    rows = result["rows"]
    report = {
        "experiment": experiment.name,
        "question": experiment.question,
        "command": command,
        "symbol": symbol,
        "split": "validation",
        "seeds": args.seeds,
        "budget": {"steps": budget.steps, "minutes": budget.minutes},
        "small": args.small,
        "device": args.device,
        "decisions": rows[0]["summary"]["decisions"],
        "wall_s": time.monotonic() - start,
        "reused_runs": result["reused_runs"],
        "rows": rows,
    }
    print(write_results(out, report))
    print(f"wrote {out / 'results.md'} and {out / 'results.json'} ({report['wall_s']:.0f} s)")
    return 0


def _run_curve(args: argparse.Namespace, config: Config, symbol: str, store, out: Path, command: str) -> int:
    import json

    from shared.experiments.curve import AGENTS, curve_table, plot_curves, run_curves
    from shared.experiments.ppo import MissingDependency
    from shared.market import load_market

    start = time.monotonic()
    try:
        report = run_curves(
            config,
            load_market(config, symbol, store),
            out,
            seeds=args.seeds,
            milestones=args.curve,
            split=args.split,
            device=args.device,
            progress=not args.quiet,
            jobs=args.jobs,
            agents=args.agents or AGENTS,
        )
    except MissingDependency as exc:
        print(f"microzero experiment ppo: {exc}", file=sys.stderr)
        return 2
    report |= {"command": command, "small": args.small, "wall_s": time.monotonic() - start}
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    png = plot_curves(report, out / "curve.png")
    table = curve_table(report)
    (out / "curve.md").write_text(f"`{command}`\n\n{table}\n")
    print(table)
    print(f"wrote {png}, {out / 'curve.md'} and {out / 'curve.json'} ({report['wall_s']:.0f} s)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="run a named comparison over seeds and write a results table with 95%% CIs",
        description=(
            "Train every variant of an experiment with the same train split, seeds and budget, backtest each "
            "greedily on the validation split, and write OUT/results.md and OUT/results.json (mean and 95% "
            "t-interval across seeds, pooled-trade bootstrap, perfect foresight and the simple rules as reference rows). Re-running "
            "reuses finished runs. Experiments: "
            + "; ".join(f"{name}: {e.question}" for name, e in EXPERIMENTS.items())
        ),
    )
    parser.add_argument("name", choices=list(EXPERIMENTS), help="which comparison")
    budget = parser.add_mutually_exclusive_group(required=False)
    budget.add_argument(
        "--steps", type=int, help="learner steps per run (PPO: steps x batch / samples-per-insert env steps)"
    )
    budget.add_argument("--minutes", type=float, help="wall-clock training budget per run")
    budget.add_argument(
        "--curve",
        type=_milestones,
        metavar="N1,N2,...",
        help="ppo only: a learning curve, MuZero and PPO trained to the largest env-step count, each checkpoint "
        "at every count backtested on --split; writes curve.png, curve.md, curve.json",
    )
    parser.add_argument(
        "--split",
        default="validation",
        choices=["validation", "test"],
        help="--curve: the split the checkpoints are scored on (choose settings on validation; "
        "read test once, for the report)",
    )
    parser.add_argument(
        "--agents",
        type=_agents,
        default=None,
        metavar="A1,A2",
        help="--curve: which agents to train, among muzero,ppo (default both); e.g. muzero alone to screen a "
        "MuZero setting on validation",
    )
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    parser.add_argument(
        "--symbol",
        default=None,
        help="bars to use (default: the bundled EURUSD; SYNTH after `microzero data synthetic`)",
    )
    parser.add_argument("--out", default=None, help="output folder (default runs/experiments/NAME)")
    parser.add_argument(
        "--small",
        action="store_true",
        help="small preset for quick runs: ~145 k-parameter model, one chance code, 8 simulations, 16 envs, "
        "lr 1e-3, 16 samples per insert (shared/experiments/variants.py SMALL; --set and variant overrides "
        "still apply)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="a config setting applied after --small, e.g. --set learning.lr=0.003 (repeatable; "
        "the value is read as JSON, else as text)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads", type=_positive, default=1, help="torch CPU threads (default 1; see the comment in cli.py)"
    )
    parser.add_argument(
        "--reuse-runs-from",
        action="append",
        default=[],
        metavar="DIR",
        help="another experiment's output folder: a finished run there with identical settings (config, seed, "
        "budget, data) is copied instead of retrained, e.g. stochastic-16 = window-64 = with-time (repeatable)",
    )
    parser.add_argument(
        "--jobs",
        type=_positive,
        default=1,
        help="runs (variant or agent x seed) trained at once, each in a fresh process on --threads torch threads "
        "(default 1); with --threads 1 a seed's result is the same either way (a --minutes budget buys less "
        "on shared cores)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
