"""Collection and learning in one process: ``microzero train``.

The services split these two loops across processes; here they alternate: play a
batch of episodes (warm-up policy until the replay holds enough positions, then the
search with the current weights), insert them, then take as many learner steps as the
samples-per-insert ratio allows. Checkpoints are written every
``train.checkpoint_every`` learner steps and at the end; a rerun resumes from the
latest one in the output folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from shared.actions import Action
from shared.backtest import BacktestResult, backtest
from shared.config import Config
from shared.device import pick_device
from shared.learning import Learner, ReplayBuffer, SamplesPerInsert
from shared.learning.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint
from shared.market import MarketData
from shared.model.networks import StochasticMuZeroNet
from shared.selfplay import SearchPolicy, SelfPlay

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    episodes: int
    checkpoints: list[Path] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  # learner metrics, one per step
    episode_pips: list[float] = field(default_factory=list)  # mean net reward of each played batch
    curve: list[tuple[int, int, Path]] = field(default_factory=list)  # (env steps, learner steps, checkpoint)


def greedy_policy(model: StochasticMuZeroNet, config: Config, device: torch.device) -> SearchPolicy:
    """The evaluation policy: the search without root noise, acting on its best action."""
    search = config.search.model_copy(update={"gumbel_scale": 0.0, "dirichlet_fraction": 0.0, "temperature": 0.0})
    return SearchPolicy(model, search, device, seed=0)


def evaluate(
    model: StochasticMuZeroNet, market: MarketData, config: Config, split: str, device, chunks: int = 16
) -> BacktestResult:
    """Greedy backtest of `model` over every decision bar of `split`."""
    return backtest(
        market,
        market.splits(config)[split],
        greedy_policy(model, config, device),
        window=config.env.window,
        drawdown_penalty=config.env.drawdown_penalty,
        chunks=chunks,
    )


def train(
    config: Config,
    market: MarketData,
    out_dir: Path,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    env_steps: int | None = None,
    milestones: Sequence[int] = (),
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Self-play on the train split and learn until `steps` learner steps, `minutes`, or
    `env_steps` environment steps played (whichever comes first).

    `milestones` (environment steps) save ``out_dir/curve/env-<played>.pt`` once the
    data played by then has been learned from (the samples-per-insert ratio reached):
    the points of a learning curve, ``TrainResult.curve``."""
    if steps is None and minutes is None and env_steps is None:
        raise ValueError("give a budget: steps, minutes or env_steps")
    device = pick_device(device)
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    checkpoints_dir = out_dir / "checkpoints"
    model = StochasticMuZeroNet(config.model).to(device)
    learner = Learner(model, config.learning, device, log_dir=out_dir / "tensorboard", search=config.search, seed=seed)
    latest = latest_checkpoint(checkpoints_dir)
    if latest is not None:
        learner.restore(load_checkpoint(latest, map_location=device))
        log.info("resumed from %s (step %d)", latest, learner.steps)
    replay = ReplayBuffer(market, config.learning, config.env.window, config.env.drawdown_penalty, seed=seed)
    selfplay = SelfPlay.from_config(config, market, seed=seed)
    policy = SearchPolicy(model, config.search, device, seed=seed)
    ratio = SamplesPerInsert.from_config(config.learning)
    batch_size = config.learning.batch_size
    result = TrainResult(steps=learner.steps, episodes=0)
    target = None if steps is None else learner.steps + steps
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    bar = tqdm(total=steps, disable=not progress, unit="step", desc="learning")
    pending = sorted(milestones)

    def played() -> int:
        return result.episodes * config.env.episode_length

    def finished() -> bool:
        return (target is not None and learner.steps >= target) or (
            deadline is not None and time.monotonic() >= deadline
        )

    while not finished() and (env_steps is None or played() < env_steps):
        warm = len(replay) < config.learning.min_replay_positions or learner.steps == 0
        episodes = selfplay.play(config.train.warmup_policy if warm else policy, model_version=learner.steps)
        for episode in episodes:
            replay.insert(episode)
        result.episodes += len(episodes)
        result.episode_pips.append(float(np.mean([e.rewards.sum() for e in episodes])))
        _log_selfplay(learner, episodes, warm)
        if progress:
            tqdm.write(
                f"step {learner.steps:>6}  {'warm-up' if warm else 'search '} episodes {result.episodes:>5}"
                f"  reward/episode {result.episode_pips[-1]:8.1f} pips"
                f"  trades/episode {np.mean([_entries(e.actions) for e in episodes]):5.1f}"
                + (f"  loss {result.history[-1]['loss']:.3f}" if result.history else "")
            )
        allowed = ratio.allowed_steps(replay.inserted, replay.sampled, batch_size)
        for _ in range(allowed):
            if finished():
                break
            metrics = learner.step(replay.sample(batch_size), replay)
            result.history.append(metrics)
            bar.update(1)
            if learner.steps % config.train.checkpoint_every == 0:
                result.checkpoints.append(_save(learner, checkpoints_dir, config))
        while pending and played() >= pending[0]:
            pending.pop(0)
            path = out_dir / "curve" / f"env-{played()}.pt"
            if not path.exists():
                learner.save(path, features_config=config.features)
            result.curve.append((played(), learner.steps, path))
        bar.set_postfix(loss=f"{result.history[-1]['loss']:.3f}" if result.history else "-", episodes=result.episodes)
    bar.close()
    if not result.checkpoints or result.checkpoints[-1] != checkpoint_path(checkpoints_dir, learner.steps):
        result.checkpoints.append(_save(learner, checkpoints_dir, config))
    learner.close()
    result.steps = learner.steps
    return result


def _log_selfplay(learner: Learner, episodes: list, warm: bool) -> None:
    """TensorBoard scalars of a played batch: reward, trades and action frequencies."""
    if learner.writer is None:
        return
    step, actions = learner.steps, np.concatenate([e.actions for e in episodes])
    prefix = "warmup" if warm else "selfplay"
    learner.writer.add_scalar(f"{prefix}/reward_per_episode_pips", np.mean([e.rewards.sum() for e in episodes]), step)
    learner.writer.add_scalar(f"{prefix}/trades_per_episode", np.mean([_entries(e.actions) for e in episodes]), step)
    for action in Action:
        learner.writer.add_scalar(f"{prefix}/action_frequency/{action.name.lower()}", np.mean(actions == action), step)


def _entries(actions: np.ndarray) -> int:
    """Trades opened in an episode: every Buy or Sell (a reversal opens one too)."""
    return int(np.isin(actions, (1, 2)).sum())


def _save(learner: Learner, directory: Path, config: Config) -> Path:
    path = checkpoint_path(directory, learner.steps)
    learner.save(path, features_config=config.features)
    return path
