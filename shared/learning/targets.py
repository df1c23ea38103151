"""n-step value targets (MuZero, Schrittwieser et al. 2020, eq. 2), with a time limit.

    z_t = sum_{i < m} gamma^i r_{t+i} + gamma^m v(s_{t+m}),   m = min(n, T - t)

with r the environment's rewards and v a value estimate. The episode end is a *time
limit*, not a terminal (Pardo et al. 2018, "Time limits in RL"): the market goes on
after bar T and the state carries no "bars left", so a target that drops the future at
the cut teaches the value head an artefact. Near the end the sum stops at r_{T-1} and
bootstraps from v(s_T), the value of the (flat) state the episode was cut in.

The split into a reward part and a bootstrap part lets the learner refresh v with a
recent network at sample time (EfficientZero, Ye et al. 2021): the replay stores
``reward_sums`` and the bootstrap offsets ``m``, the learner supplies v.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def n_step_returns(rewards: np.ndarray, td_steps: int, discount: float) -> tuple[np.ndarray, np.ndarray]:
    """rewards [T] -> (reward_sums [T] float64, offsets m [T] int64), m = min(n, T - t).

    reward_sums[t] = sum_{i < m} discount^i r_{t+i}; the bootstrap state is s_{t+m}.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be [T], got {rewards.shape}")
    if td_steps < 1:
        raise ValueError(f"td_steps must be >= 1, got {td_steps}")
    T, n = len(rewards), td_steps
    powers = discount ** np.arange(n)  # [n]
    padded = np.concatenate([rewards, np.zeros(n)])  # [T + n], zeros past the end
    sums = sliding_window_view(padded, n)[:T] @ powers  # [T]
    offsets = np.minimum(n, T - np.arange(T))  # [T]
    return sums, offsets


def n_step_targets(
    rewards: np.ndarray, values: np.ndarray, td_steps: int, discount: float, final_value: float = 0.0
) -> np.ndarray:
    """rewards [T], values [T] (v(s_t) at each decision), v(s_T) = final_value -> z [T] float64."""
    values = np.asarray(values, dtype=np.float64)
    sums, offsets = n_step_returns(rewards, td_steps, discount)
    if values.shape != sums.shape:
        raise ValueError(f"rewards {sums.shape} and values {values.shape} must both be [T]")
    bootstrap = np.append(values, final_value)[np.arange(len(sums)) + offsets]  # v(s_{t+m})
    return sums + discount**offsets * bootstrap
