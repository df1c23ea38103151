"""One trading environment as a ``gymnasium.Env``, to compare with usual RL baselines.

Observations are the same ``[window, 15]`` float32 windows as the vectorised
environment; ``info["action_mask"]`` carries the legal actions. An illegal action is
played as Hold and flagged with ``info["illegal_action"]``, since gymnasium agents
that ignore masks would otherwise crash the episode.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from shared.env.vector import NUM_POSITION_FEATURES, VecTradingEnv
from shared.market import MarketData
from shared.splits import Split


class TradingEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(
        self,
        market: MarketData,
        split: Split,
        *,
        window: int = 64,
        episode_length: int = 360,
        drawdown_penalty: float = 0.01,
    ) -> None:
        self.market, self.split = market, split
        self._env = VecTradingEnv.for_market(
            market,
            num_envs=1,
            window=window,
            episode_length=episode_length,
            drawdown_penalty=drawdown_penalty,
            strict=False,
        )
        columns = market.features.shape[1] + NUM_POSITION_FEATURES
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(window, columns), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(4)

    def _info(self, illegal: bool = False) -> dict[str, Any]:
        return {
            "action_mask": self._env.legal_mask()[0].astype(np.int8),
            "row": int(self._env.row[0]),
            "side": int(self._env.side[0]),
            "illegal_action": illegal,
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # Draw the start from gymnasium's seeded generator so reset(seed=s) repeats.
        env = self._env
        first = self.split.first_decision(env.window)
        last = self.split.stop - 1 - env.episode_length
        if last < first:
            raise ValueError(f"the {self.split.name} split is too short for {env.episode_length}-step episodes")
        start = int(self.np_random.integers(first, last + 1))
        obs = env.reset(starts=np.array([start]))
        return obs[0].copy(), self._info()

    def step(self, action):
        legal = bool(self._env.legal_mask()[0, int(action)])
        result = self._env.step(np.array([int(action)]))
        obs = self._env.observe()[0].copy()
        # A fixed-length episode ends by time, not by reaching a terminal state.
        truncated = bool(result.done[0])
        info = self._info(illegal=not legal)
        info["pnl"] = float(result.pnl[0])
        return obs, float(result.reward[0]), False, truncated, info
