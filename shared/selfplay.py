"""Self-play: B environments acting through the batched search, producing episodes.

Until a model exists (or when asked), a cheap warm-up policy plays instead of the
search so the replay buffer fills in seconds; its episodes carry ``model_version`` 0,
their policy target is the warm-up policy's own distribution and their root values
are the discounted returns actually obtained (there was no search to estimate them).
"""

from __future__ import annotations

import uuid

import numpy as np
import torch

from shared.actions import NUM_ACTIONS
from shared.baselines import Momentum, RandomLegal
from shared.config import Config
from shared.env import VecTradingEnv
from shared.episode import Episode
from shared.market import MarketData
from shared.search import SearchConfig, SearchOutput, run_search
from shared.splits import Split

WARMUP_POLICIES = ("random", "sticky", "momentum")
STICKY_HOLD = 0.9  # "sticky": random trades held ~10 bars, long enough to see a move pay off


def discounted_returns(rewards: np.ndarray, discount: float) -> np.ndarray:
    """[B, T] -> [B, T]: sum_i discount^i r_{t+i} to the end of each episode."""
    out = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + discount * running
        out[:, t] = running
    return out


class SearchPolicy:
    """Acts by running the search on the current observations; keeps its outputs."""

    def __init__(self, model, config: SearchConfig, device: torch.device, seed: int | None = None) -> None:
        self.model, self.config, self.device = model, config, torch.device(device)
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.last: SearchOutput | None = None

    @torch.no_grad()
    def __call__(self, env: VecTradingEnv, obs: np.ndarray) -> np.ndarray:
        self.model.eval()
        self.last = run_search(
            self.model,
            torch.from_numpy(obs).to(self.device),
            torch.from_numpy(env.legal_mask()).to(self.device),
            torch.from_numpy(env.side.astype(np.int64)).to(self.device),
            self.config,
            self.generator,
        )
        return self.last.action.cpu().numpy()

    def last_output(self) -> SearchOutput:
        """The search output of the latest call."""
        if self.last is None:
            raise RuntimeError("the policy has not searched yet")
        return self.last


class SelfPlay:
    """Plays batches of `num_envs` lock-stepped episodes on one split of a market."""

    @classmethod
    def from_config(
        cls,
        config: Config,
        market: MarketData,
        *,
        seed: int = 0,
        run_id: str | None = None,
        num_envs: int | None = None,
        episode_length: int | None = None,
    ) -> SelfPlay:
        """Self-play on `market`'s train split with the env, train and learning settings
        of `config` (`num_envs` / `episode_length` override theirs)."""
        return cls(
            market,
            market.splits(config)["train"],
            num_envs=num_envs or config.train.num_envs,
            window=config.env.window,
            episode_length=episode_length or config.env.episode_length,
            drawdown_penalty=config.env.drawdown_penalty,
            discount=config.learning.discount,
            seed=seed,
            run_id=run_id,
        )

    def __init__(
        self,
        market: MarketData,
        split: Split,
        *,
        num_envs: int,
        window: int,
        episode_length: int,
        drawdown_penalty: float,
        discount: float,
        seed: int = 0,
        run_id: str | None = None,
    ) -> None:
        self.market, self.split, self.discount = market, split, discount
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.env = VecTradingEnv.for_market(
            market,
            num_envs=num_envs,
            window=window,
            episode_length=episode_length,
            drawdown_penalty=drawdown_penalty,
        )
        self.rng = np.random.default_rng(seed)
        self.episodes_played = 0

    def play(self, policy: SearchPolicy | str, model_version: int = 0) -> list[Episode]:
        """Play one batch of episodes with the search policy or a warm-up policy name."""
        env = self.env
        B, T = env.num_envs, env.episode_length
        obs = env.reset(seed=int(self.rng.integers(2**63)), low=self.split.start, high=self.split.stop)
        actions = np.zeros((B, T), dtype=np.uint8)
        rewards = np.zeros((B, T), dtype=np.float32)
        root_values = np.zeros((B, T), dtype=np.float32)
        targets = np.zeros((B, T, NUM_ACTIONS), dtype=np.float32)
        masks = np.zeros((B, T, NUM_ACTIONS), dtype=bool)
        search = policy if isinstance(policy, SearchPolicy) else None
        warmup = None if isinstance(policy, SearchPolicy) else self._warmup(policy)
        for k in range(T):
            masks[:, k] = env.legal_mask()
            if search is not None:
                act = search(env, obs)
                out = search.last_output()
                targets[:, k] = out.policy_target.cpu().numpy()
                root_values[:, k] = out.root_value.cpu().numpy()
            else:
                assert warmup is not None and isinstance(policy, str)
                act = warmup(env, obs)
                targets[:, k] = self._warmup_target(policy, masks[:, k], act)
            actions[:, k] = act
            rewards[:, k] = env.step(act).reward
            obs = env.observe(out=obs)
        if warmup is not None:
            root_values[:] = discounted_returns(rewards, self.discount)
        self.episodes_played += B
        return [
            Episode(
                run_id=self.run_id,
                symbol=self.market.symbol,
                split=self.split.name,
                start_bar=int(env.start[b]),
                model_version=model_version if warmup is None else 0,
                actions=actions[b],
                rewards=rewards[b],
                root_values=root_values[b],
                policy_targets=targets[b],
                legal_masks=masks[b],
            )
            for b in range(B)
        ]

    def _warmup(self, name: str):
        if name == "random":
            return RandomLegal(int(self.rng.integers(2**31)))
        if name == "sticky":
            return RandomLegal(int(self.rng.integers(2**31)), hold_probability=STICKY_HOLD)
        if name == "momentum":
            return Momentum()
        raise ValueError(f"unknown warm-up policy {name!r}; choose from {', '.join(WARMUP_POLICIES)}")

    @staticmethod
    def _warmup_target(name: str, mask: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The warm-up policy's target: uniform over legal actions for the random policies
        (they know nothing; a sticky policy's Hold-heavy distribution would teach the
        prior to stay flat), one-hot for the momentum rule."""
        if name in ("random", "sticky"):
            return mask / mask.sum(axis=1, keepdims=True)
        return np.eye(NUM_ACTIONS, dtype=np.float32)[actions]
