"""A model-free reference: PPO (stable-baselines3) on the same gymnasium environment.

stable-baselines3 is the optional ``[baselines]`` extra; :func:`require_sb3` turns its
absence into a clear message. PPO trains on ``shared.env.gym.TradingEnv`` over the train
split (random 360-bar episodes, illegal actions played as Hold, as the env documents)
and is evaluated by the same greedy backtest as MuZero through :class:`PPOPolicy`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from shared.actions import Action
from shared.config import Config
from shared.env import VecTradingEnv
from shared.env.gym import TradingEnv
from shared.market import MarketData

INSTALL_HINT = "PPO needs stable-baselines3: pip install -e '.[baselines]'"


class MissingDependency(RuntimeError):
    """An optional extra is not installed (the CLI exits 2 with the message)."""


def require_sb3():
    try:
        import stable_baselines3
    except ImportError as exc:
        raise MissingDependency(INSTALL_HINT) from exc
    return stable_baselines3


class PPOPolicy:
    """An sb3 model as a ``shared.baselines.Policy``: deterministic actions on the
    environment's observations; an action illegal for an environment becomes Hold
    (what TradingEnv played during training, so the agent is judged as it learned)."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, env: VecTradingEnv, obs: np.ndarray) -> np.ndarray:
        actions, _ = self.model.predict(obs, deterministic=True)  # obs [B, W, 15] -> [B]
        actions = np.asarray(actions, dtype=np.int64).reshape(env.num_envs)
        legal = env.legal_mask()[np.arange(env.num_envs), actions]
        return np.where(legal, actions, int(Action.HOLD))


def _deadline(seconds: float):
    """An sb3 callback that ends training after `seconds` (the --minutes budget)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Deadline(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.end = time.monotonic() + seconds

        def _on_step(self) -> bool:
            return time.monotonic() < self.end

    return Deadline()


def _milestone_saver(milestones: list[int], folder: Path, saved: list[tuple[int, Path]]):
    """An sb3 callback saving ``folder/ppo-env-<n>.zip`` at the first rollout start at or
    after each milestone: the policy has then been updated on every step played."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Milestones(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.pending = sorted(milestones)

        def _on_rollout_start(self) -> None:
            while self.pending and self.num_timesteps >= self.pending[0]:
                self.pending.pop(0)
                path = folder / f"ppo-env-{self.num_timesteps}.zip"
                self.model.save(path)
                saved.append((int(self.num_timesteps), path))

        def _on_step(self) -> bool:
            return True

    return Milestones()


def train_ppo(
    config: Config,
    market: MarketData,
    out_dir: Path,
    *,
    timesteps: int,
    minutes: float | None = None,
    seed: int = 0,
    device: str = "cpu",
    milestones: list[int] | None = None,
):
    """Train PPO (sb3 defaults, MLP on the flattened window) for `timesteps` environment
    steps, or until `minutes` pass when given; saves ``out_dir/ppo.zip``. With
    `milestones`, returns [(env steps, checkpoint)] of the learning curve instead
    (the last one taken after training, at the final step count)."""
    require_sb3()
    from stable_baselines3 import PPO

    env = TradingEnv(
        market,
        market.splits(config)["train"],
        window=config.env.window,
        episode_length=config.env.episode_length,
        drawdown_penalty=config.env.drawdown_penalty,
    )
    model = PPO("MlpPolicy", env, seed=seed, device=device, verbose=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [] if minutes is None else [_deadline(60 * minutes)]
    saved: list[tuple[int, Path]] = []
    if milestones:
        (out_dir / "curve").mkdir(exist_ok=True)
        callbacks.append(_milestone_saver(milestones, out_dir / "curve", saved))
    model.learn(total_timesteps=timesteps, callback=callbacks or None)
    model.save(out_dir / "ppo.zip")
    if milestones is None:
        return model
    if len(saved) < len(set(milestones)):  # the last milestone falls after the last rollout
        saved.append((int(model.num_timesteps), out_dir / "ppo.zip"))
    return saved


def load_ppo(path: Path, device: str = "cpu"):
    require_sb3()
    from stable_baselines3 import PPO

    return PPO.load(path, device=device)
