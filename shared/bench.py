"""``microzero bench``: speed measured, reported as ratios to a baseline of the same run."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from shared.config import Config
from shared.env import VecTradingEnv
from shared.market import MarketData, load_market

ENV_TARGET = 200_000  # env-steps/s at B = 4096 on one core (issue #2)


def _market(config: Config, symbol: str | None) -> MarketData:
    from shared.data.sample import ensure_sample
    from shared.data.store import BarStore

    store = BarStore(config.data.db_path)
    ensure_sample(store)
    return load_market(config, symbol, store)


def _env(market: MarketData, config: Config, num_envs: int) -> VecTradingEnv:
    return VecTradingEnv(
        market.features,
        market.close,
        num_envs=num_envs,
        pip=market.pip,
        spread_pips=market.spread_pips,
        window=config.env.window,
        episode_length=config.env.episode_length,
        drawdown_penalty=config.env.drawdown_penalty,
        strict=False,  # random actions; illegal ones play as Hold
    )


def _steps_per_second(env: VecTradingEnv, seconds: float, observe: bool, seed: int = 0) -> float:
    """Env-steps/s (steps x B) of random play, resetting when episodes end."""
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, 4, size=(env.episode_length, env.num_envs))
    obs = env.reset(seed=seed)
    steps, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for k in range(env.episode_length):
            env.step(actions[k])
            if observe:
                env.observe(out=obs)
        steps += env.episode_length
        env.reset()
    return steps * env.num_envs / elapsed


def _looped_steps_per_second(market: MarketData, config: Config, num_envs: int, seconds: float) -> float:
    """Baseline: `num_envs` single environments stepped one by one in a Python loop."""
    envs = [_env(market, config, 1) for _ in range(num_envs)]
    rng = np.random.default_rng(0)
    for i, env in enumerate(envs):
        env.reset(seed=i)
    steps, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        if envs[0].done.all():
            for env in envs:
                env.reset()
        actions = rng.integers(0, 4, size=(num_envs, 1))
        for env, action in zip(envs, actions):
            env.step(action)
            env.observe()
        steps += num_envs
    return steps / elapsed


def bench_env(config: Config, batch_sizes: list[int], seconds: float, symbol: str | None) -> dict:
    market = _market(config, symbol)
    loop_baseline = _looped_steps_per_second(market, config, 64, seconds)
    rows = []
    for num_envs in batch_sizes:
        env = _env(market, config, num_envs)
        step_only = _steps_per_second(env, seconds, observe=False)
        with_obs = _steps_per_second(env, seconds, observe=True)
        rows.append(
            {
                "B": num_envs,
                "env_steps_per_s": with_obs,
                "env_steps_per_s_without_observation": step_only,
                "speedup_over_loop": with_obs / loop_baseline,
            }
        )
    return {"loop_baseline_env_steps_per_s": loop_baseline, "target_at_4096": ENV_TARGET, "rows": rows}


def _print_env(report: dict) -> None:
    print("environment: random actions, numpy, one process")
    print(f"baseline: 64 single envs stepped in a Python loop = {report['loop_baseline_env_steps_per_s']:,.0f} env-steps/s")
    print(f"{'B':>6} {'env-steps/s':>14} {'(no observe)':>14} {'x loop':>8}")
    for row in report["rows"]:
        print(
            f"{row['B']:>6} {row['env_steps_per_s']:>14,.0f} {row['env_steps_per_s_without_observation']:>14,.0f}"
            f" {row['speedup_over_loop']:>8.1f}"
        )
    print(f"target: >= {report['target_at_4096']:,} env-steps/s at B = 4096 (observation included)")


def _run(args: argparse.Namespace, config: Config) -> int:
    if args.what == "env":
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        report = bench_env(config, sizes, args.seconds, args.symbol)
        print(json.dumps(report, indent=2)) if args.json else _print_env(report)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="measure speed (ratios against a baseline of the same run)")
    parser.add_argument("what", choices=["env"], help="what to measure")
    parser.add_argument("--batch-sizes", default="1,256,4096", help="comma-separated B values")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--symbol", default=None)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_run)
