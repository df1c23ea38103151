"""A finished self-play episode: the small message collectors send (ARCHITECTURE §1).

Observations are not shipped: the position state is a deterministic function of the
actions and prices, so any holder of the feature matrix rebuilds them with
:func:`position_states`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.env import NUM_POSITION_FEATURES, VecTradingEnv
from shared.market import MarketData


@dataclass(frozen=True)
class Episode:
    run_id: str
    symbol: str
    split: str
    start_bar: int  # feature row of the first decision
    model_version: int  # 0 = warm-up policy without search
    actions: np.ndarray  # [T] uint8
    rewards: np.ndarray  # [T] float32, the environment's reward after each action
    root_values: np.ndarray  # [T] float32, search value at each decision
    policy_targets: np.ndarray  # [T, 4] float32, improved policy of the search
    legal_masks: np.ndarray  # [T, 4] bool
    episode_id: str = ""  # unique per episode (collector id + sequence), for deduplication

    def __post_init__(self) -> None:
        T = len(self.actions)
        expected = {
            "rewards": (T,),
            "root_values": (T,),
            "policy_targets": (T, 4),
            "legal_masks": (T, 4),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"episode {name} has shape {getattr(self, name).shape}, expected {shape}")
        if T == 0:
            raise ValueError("an episode needs at least one step")

    def __len__(self) -> int:
        return len(self.actions)


def position_states(
    market: MarketData, start_bar: int, actions: np.ndarray, window: int, drawdown_penalty: float
) -> tuple[np.ndarray, np.ndarray]:
    """Replay `actions` from `start_bar`: the position state before each decision and
    after the last one ([T+1, 6] float32), and the rewards ([T] float64).

    Raises ValueError if an action is illegal where it was taken.
    """
    env = VecTradingEnv.for_market(
        market,
        num_envs=1,
        window=window,
        episode_length=len(actions),
        drawdown_penalty=drawdown_penalty,
    )
    env.reset(starts=np.array([start_bar]))
    rewards = np.empty(len(actions))
    for k, action in enumerate(actions):
        rewards[k] = env.step(np.array([action], dtype=np.int64)).reward[0]
    states = env.position_history()[0, window - 1 : window + len(actions)].copy()
    assert states.shape == (len(actions) + 1, NUM_POSITION_FEATURES)
    return states, rewards
