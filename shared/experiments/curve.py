"""Learning curves: pips on a held-out split against environment steps played, MuZero
beside PPO, several seeds (``microzero experiment ppo --curve ...``).

Each seed trains one MuZero run (``training.train`` with an env-step budget, saving a
checkpoint at every milestone once the data played by then has been learned from) and
one PPO run (a checkpoint at the first rollout boundary at or after each milestone,
after PPO's update on it). Both agents therefore see about the same number of
environment steps at each point; the exact counts are recorded and plotted. Every
checkpoint is backtested greedily over the whole split (16 contiguous chunks), beside
the baselines on the same bars. Settings are chosen with ``--split validation``; the
test split is read once, for the report. Runs are resumable: a finished
``OUT/<agent>/seed<k>/curve.json`` is reused when it was made with the same settings and
data (``run_settings``), else trained again. ``agents`` picks a subset (``--agents
muzero`` screens a MuZero setting on validation without retraining PPO each time).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np

from shared.backtest import backtest
from shared.baselines import COMPARISON_LABELS, comparison_policies
from shared.config import Config
from shared.experiments.jobs import run_all
from shared.experiments.runner import market_fingerprint
from shared.experiments.stats import t_interval
from shared.market import MarketData

CHUNKS = 16
AGENTS = ("muzero", "ppo")
LABELS = {"muzero": "MuZero", "ppo": "PPO"}


def _pips(policy, config: Config, market: MarketData, split: str) -> dict:
    result = backtest(
        market,
        market.splits(config)[split],
        policy,
        window=config.env.window,
        drawdown_penalty=config.env.drawdown_penalty,
        chunks=CHUNKS,
    )
    return {"total_pips": float(result.metrics.total_pips), "trades": int(result.metrics.trades)}


def _muzero_points(
    config: Config, market: MarketData, run_dir: Path, seed: int, milestones: list[int], split: str, device: str
) -> list[dict]:
    from shared.device import pick_device
    from shared.learning.checkpoint import load_checkpoint
    from shared.model.networks import StochasticMuZeroNet
    from shared.training import greedy_policy, train

    start = time.monotonic()
    result = train(
        config,
        market,
        run_dir,
        env_steps=max(milestones),
        milestones=milestones,
        device=device,
        seed=seed,
        progress=False,
    )
    train_s = time.monotonic() - start
    points = []
    for env_steps, learner_steps, path in result.curve:
        model = StochasticMuZeroNet(config.model).to(pick_device(device))
        model.load_state_dict(load_checkpoint(path).state_dict)
        points.append(
            {
                "env_steps": env_steps,
                "learner_steps": learner_steps,
                **_pips(greedy_policy(model, config, model.device), config, market, split),
            }
        )
    return [dict(p, train_s=train_s) for p in points]


def _ppo_points(
    config: Config, market: MarketData, run_dir: Path, seed: int, milestones: list[int], split: str, device: str
) -> list[dict]:
    from shared.experiments.ppo import PPOPolicy, load_ppo, train_ppo

    start = time.monotonic()
    saved = train_ppo(
        config, market, run_dir, timesteps=max(milestones), seed=seed, device=device, milestones=milestones
    )
    train_s = time.monotonic() - start
    return [
        {
            "env_steps": steps,
            "learner_steps": None,
            "train_s": train_s,
            **_pips(PPOPolicy(load_ppo(path, device)), config, market, split),
        }
        for steps, path in saved
    ]


def run_settings(agent: str, config: Config, market: MarketData) -> dict:
    """What one agent's points depend on besides seed, milestones and split; a stored run
    is reused only if these are equal. PPO reads only the environment, the splits and the
    bars, so screening a MuZero setting does not retrain it."""
    sections = {"splits", "env"} | (
        {"features", "model", "search", "learning", "train"} if agent == "muzero" else set()
    )
    settings = config.model_dump(mode="json", include=sections)
    for unrelated in ("output_dir", "checkpoint_every"):  # where and when to save change no result
        settings.get("train", {}).pop(unrelated, None)
    return json.loads(json.dumps({"config": settings, "market": market_fingerprint(market)}))


def stored_points(run_dir: Path, milestones: list[int], split: str, settings: dict) -> list[dict] | None:
    """A finished run's points from ``run_dir/curve.json``, if it holds these milestones
    scored on this split; else None. A run made with other settings or data is refused,
    not retrained: training in its folder would resume from its checkpoints."""
    done = run_dir / "curve.json"
    if not done.exists():
        return None
    stored = json.loads(done.read_text())
    if stored.get("settings") != settings:
        old = stored.get("settings") or {}
        differ = sorted(
            {k for k in settings["config"] if old.get("config", {}).get(k) != settings["config"][k]}
            | ({"bars"} if old.get("market") != settings["market"] else set())
        )
        raise ValueError(
            f"{run_dir} holds a run made with other settings ({', '.join(differ)}); "
            "give another --out, or delete that folder to train it again"
        )
    if stored.get("milestones") == milestones and stored.get("split") == split:
        return stored["points"]
    return None


def curve_points(
    agent: str,
    config: Config,
    market: MarketData,
    run_dir: Path,
    seed: int,
    milestones: list[int],
    split: str,
    device: str,
) -> list[dict]:
    """Train one agent for one seed, score its checkpoints and write ``run_dir/curve.json``."""
    make = _muzero_points if agent == "muzero" else _ppo_points
    points = make(config, market, run_dir, seed, milestones, split, device)
    stored = {
        "milestones": milestones,
        "split": split,
        "settings": run_settings(agent, config, market),
        "points": points,
    }
    (run_dir / "curve.json").write_text(json.dumps(stored, indent=2))
    return points


def run_curves(
    config: Config,
    market: MarketData,
    out_dir: Path,
    *,
    seeds: list[int],
    milestones: list[int],
    split: str = "validation",
    device: str = "cpu",
    progress: bool = True,
    jobs: int = 1,
    agents: tuple[str, ...] = AGENTS,
) -> dict:
    """Every agent x seed (resumable; `jobs` runs at once, see jobs.py), then the
    baselines; returns the report dict."""
    from shared.experiments.ppo import require_sb3

    unknown = set(agents) - set(AGENTS)
    if unknown or not agents:
        raise ValueError(f"agents must be some of {AGENTS}, got {agents}")
    if "ppo" in agents:
        require_sb3()
    milestones = sorted(set(milestones))
    units = [(agent, seed) for seed in seeds for agent in agents]
    done: dict[int, list[dict]] = {}
    calls: dict[int, tuple] = {}
    for i, (agent, seed) in enumerate(units):
        run_dir = Path(out_dir) / agent / f"seed{seed}"
        stored = stored_points(run_dir, milestones, split, run_settings(agent, config, market))
        if stored is None:
            calls[i] = (agent, config, market, run_dir, seed, milestones, split, device)
        else:
            done[i] = stored
    for i, points in itertools.chain(list(done.items()), run_all(curve_points, calls, jobs)):
        done[i] = points
        if progress:
            agent, seed = units[i]
            line = ", ".join(f"{p['env_steps']:,} steps {p['total_pips']:,.0f} pips" for p in points)
            print(f"{agent} seed {seed}: {line}", flush=True)
    runs = {agent: [done[i] for i, (a, _) in enumerate(units) if a == agent] for agent in agents}
    baselines = {
        COMPARISON_LABELS[name]: float(np.mean([_pips(p, config, market, split)["total_pips"] for p in policies]))
        for name, policies in comparison_policies(market, seeds).items()
    }
    return {
        "split": split,
        "seeds": seeds,
        "milestones": milestones,
        "symbol": market.symbol,
        "curves": {agent: summarise_curve(points) for agent, points in runs.items()},
        "runs": runs,
        "baselines": baselines,
    }


def summarise_curve(runs: list[list[dict]]) -> list[dict]:
    """Per milestone: mean env steps, and the t-interval of pips across seeds."""
    out = []
    for i in range(min(len(points) for points in runs)):
        column = [points[i] for points in runs]
        out.append(
            {
                "env_steps": float(np.mean([p["env_steps"] for p in column])),
                "total_pips": t_interval([p["total_pips"] for p in column]).as_dict(),
                "trades": float(np.mean([p["trades"] for p in column])),
            }
        )
    return out


def plot_curves(report: dict, path: Path) -> Path:
    """PNG: pips against env steps, mean and 95 % t-band per agent, baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = {"muzero": "tab:blue", "ppo": "tab:orange"}
    for agent, curve in report["curves"].items():
        x = [p["env_steps"] for p in curve]
        mean = [p["total_pips"]["mean"] for p in curve]
        low = [p["total_pips"]["low"] if p["total_pips"]["low"] is not None else m for p, m in zip(curve, mean)]
        high = [p["total_pips"]["high"] if p["total_pips"]["high"] is not None else m for p, m in zip(curve, mean)]
        ax.plot(x, mean, marker="o", color=colours.get(agent), label=f"{agent} (mean of {len(report['seeds'])} seeds)")
        ax.fill_between(x, low, high, color=colours.get(agent), alpha=0.2)
    styles = ["k--", "g:", "c--", "m-.", "r:", "y:"]
    for (name, pips), style in zip(report["baselines"].items(), itertools.cycle(styles)):
        ax.axhline(pips, linestyle=style[1:], color=style[0], linewidth=1, label=f"{name}: {pips:,.0f}")
    ax.set_xlabel("environment steps played")
    ax.set_ylabel(f"net pips on the {report['split']} split (greedy, spread paid)")
    ax.set_title(f"{report['symbol']}: learning curves, 95% t-intervals across seeds")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curve_table(report: dict) -> str:
    """Markdown: one row per milestone, each agent's mean [95% CI] and % of perfect foresight."""
    pf = report["baselines"]["perfect foresight"]
    labels = [LABELS[agent] for agent in report["curves"]]
    lines = [
        f"| env steps ({' / '.join(labels)}) | "
        + " | ".join(f"{label} pips [95% CI]" for label in labels)
        + " | "
        + " | ".join(f"{label} % of PF" for label in labels)
        + " |",
        "|---" * (1 + 2 * len(labels)) + "|",
    ]

    def cell(p: dict) -> str:
        t = p["total_pips"]
        band = f" [{t['low']:,.0f}, {t['high']:,.0f}]" if t["low"] is not None else ""
        return f"{t['mean']:,.0f}{band}"

    for row in zip(*report["curves"].values()):
        steps = " / ".join(f"{p['env_steps']:,.0f}" for p in row)
        pips = " | ".join(cell(p) for p in row)
        shares = " | ".join(f"{100 * p['total_pips']['mean'] / pf:.0f} %" for p in row)
        lines.append(f"| {steps} | {pips} | {shares} |")
    lines.append("")
    lines += [f"- {name}: {pips:,.0f} pips" for name, pips in report["baselines"].items()]
    return "\n".join(lines)
