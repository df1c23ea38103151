"""Baseline policies, vectorised over the environments of a ``VecTradingEnv``.

A policy maps the environment (its sides, legal masks, current rows and prices) and
the current observation to one action per environment.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from shared.actions import Action
from shared.env import VecTradingEnv


class Policy(Protocol):
    def __call__(self, env: VecTradingEnv, obs: np.ndarray) -> np.ndarray: ...


def _move_to(side: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The action taking each position from `side` to `target` (Hold when already there)."""
    actions = np.full(side.shape, Action.HOLD, dtype=np.int64)
    change = target != side
    actions[change & (target == 1)] = Action.BUY
    actions[change & (target == -1)] = Action.SELL
    actions[change & (target == 0)] = Action.CLOSE
    return actions


def flat(env: VecTradingEnv, obs: np.ndarray) -> np.ndarray:
    """Never trades: the zero line every strategy must beat after costs."""
    return np.full(env.num_envs, Action.HOLD, dtype=np.int64)


def buy_and_hold(env: VecTradingEnv, obs: np.ndarray) -> np.ndarray:
    """Goes long at the first bar and stays long until the forced close at the end."""
    return _move_to(env.side, np.ones_like(env.side))


class RandomLegal:
    """Uniform over the legal actions at each bar, reproducible from `seed`."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, env: VecTradingEnv, obs: np.ndarray) -> np.ndarray:
        scores = self.rng.random((env.num_envs, 4))
        return np.argmax(np.where(env.legal_mask(), scores, -1.0), axis=1)


class Momentum:
    """Holds the side of the `lookback`-bar momentum: long when close > close[t-L],
    short when below, flat when equal."""

    def __init__(self, lookback: int = 60) -> None:
        self.lookback = lookback

    def __call__(self, env: VecTradingEnv, obs: np.ndarray) -> np.ndarray:
        row = env.row
        momentum = env.close[row] - env.close[np.maximum(row - self.lookback, 0)]
        return _move_to(env.side, np.sign(momentum).astype(np.int8))


BASELINES: dict[str, Callable[[int], Policy]] = {
    "flat": lambda seed: flat,
    "buy_hold": lambda seed: buy_and_hold,
    "random": lambda seed: RandomLegal(seed),
    "momentum": lambda seed: Momentum(),
}


def make_baseline(name: str, seed: int = 0) -> Policy:
    if name not in BASELINES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(BASELINES)}")
    return BASELINES[name](seed)
