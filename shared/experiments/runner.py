"""Train and evaluate every (variant, seed) of an experiment; resumable.

Each run lives in ``OUT/<variant>/seed<k>/``: checkpoints (or ``ppo.zip``), a
``trained.json`` marker once training finished, and ``result.json`` once evaluated.
A re-run returns a finished run's ``result.json`` without touching it, evaluates a
trained-but-unevaluated run, and resumes an interrupted ``--steps`` run from its last
checkpoint for the remaining steps (an interrupted ``--minutes`` run restarts, so every
run gets the same wall-clock budget from a fresh model). A run folder holding a run
with other settings is an error, never silently mixed in.

Evaluation is always the greedy backtest of the whole validation split (16 contiguous
chunks); the test split is never touched here.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from shared.backtest import BacktestResult, backtest
from shared.baselines import comparison_policies
from shared.config import Config
from shared.experiments.jobs import run_all
from shared.experiments.stats import bootstrap_mean_interval, t_interval
from shared.experiments.variants import Experiment, Variant, variant_config
from shared.market import MarketData

EVAL_SPLIT = "validation"
EVAL_CHUNKS = 16

MarketLoader = Callable[[Config], MarketData]


@dataclass(frozen=True)
class Budget:
    steps: int | None = None
    minutes: float | None = None

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.minutes is None):
            raise ValueError("give exactly one budget: steps or minutes")
        if (self.steps is not None and self.steps < 1) or (self.minutes is not None and self.minutes <= 0):
            raise ValueError(f"the budget must be positive, got {self}")

    def ppo_timesteps(self, config: Config) -> int:
        """PPO's environment steps for a --steps budget: as many as MuZero's replay ratio
        feeds N learner steps (N x batch / samples per insert), i.e. the same data."""
        if self.steps is None:
            return 10**12  # ended by the wall-clock deadline instead
        return max(1, round(self.steps * config.learning.batch_size / config.learning.samples_per_insert))


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    tmp.replace(path)  # atomic: a reader sees the old file or the whole new one


def market_fingerprint(market: MarketData) -> str:
    """Hash of the bars' closes and features: equal only for the same data, features included."""
    digest = hashlib.sha256(market.close.tobytes())
    digest.update(np.ascontiguousarray(market.features).tobytes())
    return digest.hexdigest()[:16]


def run_spec(config: Config, variant: Variant, seed: int, budget: Budget, market: MarketData) -> dict:
    """Everything that determines a run's result; a stored run is reused only if equal."""
    sections = config.model_dump(
        mode="json", include={"features", "splits", "env", "model", "search", "learning", "train"}
    )
    sections["train"].pop("output_dir", None)
    sections["train"].pop("checkpoint_every", None)  # when to save does not change the result
    spec = {
        "variant": variant.name,
        "agent": variant.agent,
        "seed": seed,
        "steps": budget.steps,
        "minutes": budget.minutes,
        "symbol": market.symbol,
        "market": market_fingerprint(market),
        "config": sections,
    }
    if variant.agent == "ppo":
        spec["ppo_timesteps"] = budget.ppo_timesteps(config)
    return json.loads(json.dumps(spec))  # tuples -> lists, as read back from disk


def _train_muzero(config: Config, market: MarketData, run_dir: Path, seed: int, budget: Budget, device: str):
    from shared.device import pick_device
    from shared.learning.checkpoint import latest_checkpoint, load_checkpoint
    from shared.model.networks import StochasticMuZeroNet
    from shared.training import train

    checkpoints = run_dir / "checkpoints"
    marker = run_dir / "trained.json"
    if not marker.exists():
        remaining: int | None = None
        if budget.minutes is not None:
            shutil.rmtree(checkpoints, ignore_errors=True)
        else:
            assert budget.steps is not None  # a budget is steps or minutes
            latest = latest_checkpoint(checkpoints)
            remaining = budget.steps - (load_checkpoint(latest).step if latest else 0)
        start = time.monotonic()
        if remaining is None or remaining > 0:
            result = train(
                config,
                market,
                run_dir,
                steps=remaining,
                minutes=budget.minutes,
                device=device,
                seed=seed,
                progress=False,
            )
            played: dict[str, int | None] = {
                "steps": result.steps,
                "episodes": result.episodes,
                "env_steps": result.episodes * config.env.episode_length,
            }
        else:  # killed between the last checkpoint and the marker
            played = {"steps": budget.steps, "episodes": None, "env_steps": None}
        _write_json(marker, played | {"train_s": time.monotonic() - start})
    model = StochasticMuZeroNet(config.model).to(pick_device(device))
    trained = latest_checkpoint(checkpoints)
    assert trained is not None, f"no checkpoint in {checkpoints}"
    model.load_state_dict(load_checkpoint(trained).state_dict)
    return model, json.loads(marker.read_text())


def _evaluate_muzero(model, config: Config, market: MarketData, device: str) -> BacktestResult:
    from shared.training import evaluate

    return evaluate(model, market, config, EVAL_SPLIT, device, chunks=EVAL_CHUNKS)


def _train_ppo(config: Config, market: MarketData, run_dir: Path, seed: int, budget: Budget, device: str):
    from shared.experiments.ppo import load_ppo, train_ppo

    marker = run_dir / "trained.json"
    if not marker.exists():
        start = time.monotonic()
        model = train_ppo(
            config,
            market,
            run_dir,
            timesteps=budget.ppo_timesteps(config),
            minutes=budget.minutes,
            seed=seed,
            device=device,
        )
        played = {"steps": None, "episodes": None, "env_steps": int(model.num_timesteps)}
        _write_json(marker, played | {"train_s": time.monotonic() - start})
    return load_ppo(run_dir / "ppo.zip", device=device), json.loads(marker.read_text())


def greedy_backtest(policy, config: Config, market: MarketData) -> BacktestResult:
    """The evaluation every row of a table gets: the whole validation split, 16 chunks."""
    return backtest(
        market,
        market.splits(config)[EVAL_SPLIT],
        policy,
        window=config.env.window,
        drawdown_penalty=config.env.drawdown_penalty,
        chunks=EVAL_CHUNKS,
    )


def _same_run(spec: dict, reuse_from: list[Path]) -> Path | None:
    """A finished run in another experiment folder with the same settings (config,
    seed, budget, data, agent; only the variant's name may differ), or None."""

    def key(s: dict) -> dict:
        return {k: v for k, v in s.items() if k != "variant"}

    for folder in reuse_from:
        for path in sorted(Path(folder).glob(f"*/seed{spec['seed']}/result.json")):
            if key(json.loads(path.read_text())["spec"]) == key(spec):
                return path
    return None


def stored_run(
    config: Config,
    variant: Variant,
    market: MarketData,
    run_dir: Path,
    seed: int,
    budget: Budget,
    reuse_from: Sequence[Path] = (),
) -> tuple[dict, dict | None]:
    """The run's spec (written to ``run_dir/spec.json``), and its finished result: stored
    there, or copied from an identical run in `reuse_from`; None if it is still to train.
    A folder holding a run with other settings is an error."""
    spec = run_spec(config, variant, seed, budget, market)
    result_path = run_dir / "result.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / "spec.json"
    if spec_path.exists() and json.loads(spec_path.read_text()) != spec:
        raise ValueError(
            f"{run_dir} holds a run with other settings (see its spec.json); use another --out or delete it"
        )
    _write_json(spec_path, spec)
    if result_path.exists():
        return spec, json.loads(result_path.read_text()) | {"reused": True}
    same = _same_run(spec, list(reuse_from))
    if same is not None:  # identical settings and seed: training again would repeat it
        result = json.loads(same.read_text()) | {"spec": spec, "copied_from": str(same.parent)}
        _write_json(result_path, result)
        return spec, result | {"reused": True}
    return spec, None


def train_and_evaluate(
    config: Config,
    variant: Variant,
    market: MarketData,
    run_dir: Path,
    seed: int,
    budget: Budget,
    device: str,
    spec: dict,
) -> dict:
    """Train (or resume) one run and backtest it; writes and returns ``run_dir/result.json``."""
    result_path = run_dir / "result.json"
    start = time.monotonic()
    if variant.agent == "ppo":
        from shared.experiments.ppo import PPOPolicy

        model, trained = _train_ppo(config, market, run_dir, seed, budget, device)
        evaluation = greedy_backtest(PPOPolicy(model), config, market)
    else:
        model, trained = _train_muzero(config, market, run_dir, seed, budget, device)
        evaluation = _evaluate_muzero(model, config, market, device)
    result = {
        "spec": spec,
        "trained": trained,
        "run_s": time.monotonic() - start,  # this process's share: (training +) loading + backtest
        "decisions": len(evaluation.bar_pnl),
        "metrics": evaluation.metrics.as_dict(),
        "trade_pips": [round(float(p), 4) for p in evaluation.trades.net_pips],
    }
    _write_json(result_path, result)
    return result | {"reused": False}


def summarise(results: list[dict]) -> dict:
    """The row of a table: t-intervals across runs and a pooled-trades bootstrap."""
    metrics = [r["metrics"] for r in results]
    pooled = [p for r in results for p in r["trade_pips"]]
    env_steps = [r["trained"]["env_steps"] for r in results if r.get("trained", {}).get("env_steps") is not None]
    return {
        "runs": len(results),
        "total_pips": t_interval([m["total_pips"] for m in metrics]).as_dict(),
        "expectancy": t_interval([m["expectancy"] for m in metrics]).as_dict(),
        "sqn": t_interval([m["sqn"] for m in metrics]).as_dict(),
        "trades_per_run": float(np.mean([m["trades"] for m in metrics])),
        "pooled_expectancy": bootstrap_mean_interval(pooled).as_dict(),
        "env_steps_per_run": float(np.mean(env_steps)) if env_steps else None,
        "train_s_per_run": _mean_or_none([r.get("trained", {}).get("train_s") for r in results]),
        "decisions": results[0]["decisions"],
    }


def _mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def baseline_results(config: Config, market: MarketData, seeds: list[int]) -> dict[str, list[dict]]:
    """The comparison rules (``baselines.COMPARISON_LABELS``: perfect foresight, the
    simple rules, buy & hold, random legal actions once per seed). Buy & hold is there
    because an undertrained agent often collapses to "always long" in every chunk, which
    then scores exactly it; each simple rule is what one kind of structure alone earns."""

    def one(policy) -> dict:
        evaluation = greedy_backtest(policy, config, market)
        return {
            "decisions": len(evaluation.bar_pnl),
            "metrics": evaluation.metrics.as_dict(),
            "trade_pips": [float(p) for p in evaluation.trades.net_pips],
        }

    return {name: [one(policy) for policy in policies] for name, policies in comparison_policies(market, seeds).items()}


def run_experiment(
    experiment: Experiment,
    config: Config,
    load_market: MarketLoader,
    out_dir: Path,
    *,
    seeds: list[int],
    budget: Budget,
    device: str = "cpu",
    progress: bool = True,
    reuse_from: Sequence[Path] = (),
    jobs: int = 1,
) -> dict:
    """Every variant x seed (`jobs` of them at once, see jobs.py), then the baselines;
    returns the rows of the results table. `config` already holds any preset
    (``--small``) and ``--set``; each variant's overrides go on top."""
    if not seeds:
        raise ValueError("give at least one seed")
    configs = {v.name: variant_config(config, v) for v in experiment.variants}  # validate all before any run
    if any(v.agent == "ppo" for v in experiment.variants):
        from shared.experiments.ppo import require_sb3

        require_sb3()  # fail before hours of MuZero training, not after
    markets: dict[str, MarketData] = {}
    for cfg in configs.values():
        key = cfg.features.model_dump_json()  # the features are all that differs between markets
        if key not in markets:
            markets[key] = load_market(cfg)
    units = [(variant, seed) for variant in experiment.variants for seed in seeds]
    bar = tqdm(total=len(units), desc=f"experiment {experiment.name}", unit="run", disable=not progress)

    def report(i: int, result: dict) -> None:
        (variant, seed), m = units[i], result["metrics"]
        bar.update(1)
        tqdm.write(
            f"{variant.name} seed {seed}: {m['total_pips']:.1f} pips, {m['trades']} trades"
            + (" (reused)" if result["reused"] else ""),
        )

    def start(i: int) -> None:
        variant, seed = units[i]
        bar.set_postfix_str(f"started {variant.name} seed {seed}")

    # Stored, copied and mismatched runs are settled here, before anything trains.
    done: dict[int, dict] = {}
    calls: dict[int, tuple] = {}
    for i, (variant, seed) in enumerate(units):
        cfg, run_dir = configs[variant.name], Path(out_dir) / variant.name / f"seed{seed}"
        market = markets[cfg.features.model_dump_json()]
        spec, stored = stored_run(cfg, variant, market, run_dir, seed, budget, reuse_from)
        if stored is None:
            calls[i] = (cfg, variant, market, run_dir, seed, budget, device, spec)
        else:
            done[i] = stored
    try:
        for i, result in itertools.chain(list(done.items()), run_all(train_and_evaluate, calls, jobs, started=start)):
            done[i] = result
            report(i, result)
    finally:
        bar.close()
    rows: list[dict[str, Any]] = []
    for variant in experiment.variants:
        runs = [done[i] for i, (v, _) in enumerate(units) if v is variant]
        rows.append(
            {
                "name": variant.name,
                "kind": "variant",
                "agent": variant.agent,
                "overrides": variant.overrides,
                "summary": summarise(runs),
                "runs": [_brief(r) for r in runs],
            }
        )
    # Baselines on the same split; the split bounds depend on the window, so once per window.
    windows: dict[int, Config] = {}
    for variant in experiment.variants:
        windows.setdefault(configs[variant.name].env.window, configs[variant.name])
    for window, cfg in windows.items():
        suffix = f" (window {window})" if len(windows) > 1 else ""
        for name, runs in baseline_results(cfg, markets[cfg.features.model_dump_json()], seeds).items():
            rows.append(
                {
                    "name": f"{name}{suffix}",
                    "kind": "baseline",
                    "summary": summarise(runs),
                    "runs": [_brief(r) for r in runs],
                }
            )
    reused = any(run.get("reused") for row in rows for run in row["runs"])
    return {"rows": rows, "reused_runs": reused}


def _brief(result: dict) -> dict:
    """What results.json keeps of a run (its trades stay in the run's result.json)."""
    out = {k: result["metrics"][k] for k in ("total_pips", "trades", "expectancy", "sqn")}
    if "spec" in result:
        out |= {
            "seed": result["spec"]["seed"],
            "reused": result["reused"],
            "copied_from": result.get("copied_from"),
            "run_s": result.get("run_s"),
        }
    return out
