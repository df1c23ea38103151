"""n-step value targets (MuZero, Schrittwieser et al. 2020, eq. 2).

    z_t = sum_{i < n} gamma^i r_{t+i} + gamma^n v_{t+n}

with r the environment's rewards and v the search's root values. The episode end is
terminal (the environment force-closes any open trade there), so terms past the last
step are 0 and nothing is bootstrapped from beyond it: if t + n >= T the sum simply
stops at r_{T-1}. The state after the last step has value 0 by the same rule.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def n_step_targets(rewards: np.ndarray, root_values: np.ndarray, td_steps: int, discount: float) -> np.ndarray:
    """rewards [T], root_values [T] -> z [T] float64, truncated at the episode end."""
    rewards = np.asarray(rewards, dtype=np.float64)
    root_values = np.asarray(root_values, dtype=np.float64)
    T, n = len(rewards), td_steps
    if root_values.shape != (T,) or rewards.ndim != 1:
        raise ValueError(f"rewards {rewards.shape} and root_values {root_values.shape} must both be [T]")
    if n < 1:
        raise ValueError(f"td_steps must be >= 1, got {n}")
    powers = discount ** np.arange(n)                                   # [n]
    padded = np.concatenate([rewards, np.zeros(n)])                     # [T + n], zeros past the end
    z = sliding_window_view(padded, n)[:T] @ powers                     # [T]: discounted n-step reward sums
    bootstrap = np.concatenate([root_values, np.zeros(n)])[n : n + T]   # [T]: v_{t+n}, 0 at/after the end
    return z + discount**n * bootstrap
