"""Baseline policies, vectorised over the environments of a ``VecTradingEnv``.

A policy maps the environment (its sides, legal masks, current rows and prices) and
the current observation to one action per environment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from shared.actions import Action
from shared.env import VecTradingEnv
from shared.market import MarketData


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
    """Uniform over the legal actions at each bar, reproducible from `seed`.

    `hold_probability` > 0: Hold with that probability, otherwise a uniform legal move
    (Buy, Sell or Close): random trades that last ~1 / (1 - p) bars instead of ~1."""

    def __init__(self, seed: int = 0, hold_probability: float = 0.0) -> None:
        if not 0 <= hold_probability < 1:
            raise ValueError(f"hold_probability must be in [0, 1), got {hold_probability}")
        self.rng = np.random.default_rng(seed)
        self.hold_probability = hold_probability

    def __call__(self, env: VecTradingEnv, obs: np.ndarray) -> np.ndarray:
        scores = self.rng.random((env.num_envs, 4))
        legal = env.legal_mask()
        if self.hold_probability == 0:
            return np.argmax(np.where(legal, scores, -1.0), axis=1)
        moves = legal.copy()
        moves[:, 0] = False  # a move: Buy, Sell or Close (one is always legal)
        move = np.argmax(np.where(moves, scores, -1.0), axis=1)
        return np.where(self.rng.random(env.num_envs) < self.hold_probability, 0, move)


class Momentum:
    """Holds the side of the `lookback`-bar momentum: long when close > close[t-L],
    short when below, flat when equal."""

    def __init__(self, lookback: int = 60) -> None:
        self.lookback = lookback

    def __call__(self, env: VecTradingEnv, obs: np.ndarray) -> np.ndarray:
        row = env.row
        momentum = env.close[row] - env.close[np.maximum(row - self.lookback, 0)]
        return _move_to(env.side, np.sign(momentum).astype(np.int8))


class RangeReversion:
    """The contrarian twin of Momentum, the simple rule of a mean-reverting market: long
    when the close sits low in its 60-bar range (feature 0, ``position_in_range_60``,
    below `band`), short when high (above 1 - `band`), the side kept in between."""

    def __init__(self, band: float = 0.3) -> None:
        self.band = band

    def __call__(self, env: VecTradingEnv, obs: np.ndarray) -> np.ndarray:
        where = obs[:, -1, 0]  # [B]: the newest bar's position in its range
        target = np.where(where < self.band, 1, np.where(where > 1 - self.band, -1, env.side))
        return _move_to(env.side, target.astype(np.int8))


class HourOfDay:
    """Intraday seasonality, the simple rule of a market whose drift follows the clock:
    holds the side of the mean move that the coming bar's hour of day (UTC) made over
    the last `days` days (the last `days` x bars-per-hour moves of that hour; on bars of
    an hour or longer, the last `days` of them). Only moves that ended at or before the
    current bar count: causal."""

    def __init__(self, market: MarketData, days: int = 20) -> None:
        if days < 1:
            raise ValueError(f"days must be >= 1, got {days}")
        per_hour = days * max(1, round(3600 / market.bar_seconds))  # moves of one hour of day in `days` days
        moves = np.diff(market.close)  # [T-1]: move j is held from row j to row j + 1
        hour = market.ts[1:].astype("datetime64[h]").astype(np.int64) % 24  # [T-1] the hour each move ends in
        expected = np.zeros(len(market.close))  # [T] row t: mean of the earlier moves of move t's hour
        for h in range(24):
            rows = np.flatnonzero(hour == h)
            total = np.concatenate([[0.0], np.cumsum(moves[rows])])
            k = np.arange(len(rows))
            first = np.maximum(k - per_hour, 0)
            expected[rows] = (total[k] - total[first]) / np.maximum(k - first, 1)
        self.side = np.sign(expected).astype(np.int8)  # [T]

    def __call__(self, env: VecTradingEnv, obs: np.ndarray) -> np.ndarray:
        return _move_to(env.side, self.side[env.row])


class PerfectForesight:
    """The reference ceiling, not a strategy: knows every future close and holds, at
    each bar, the side of a cost-aware optimal path (dynamic programming over
    short/flat/long, paying the spread on every entry)."""

    def __init__(self, close: np.ndarray, pip: float, spread_pips: float) -> None:
        moves = np.diff(close) / pip  # [T-1] pips earned by a long held from t to t+1
        sides = np.array([-1, 0, 1])
        self.entry_cost = spread_pips * ((sides[None, :] != 0) & (sides[None, :] != sides[:, None]))  # [from, to]
        self.value = np.zeros((len(close), 3))  # [t, side held before t]: best pips from t on
        self.best_side = np.zeros((len(close), 3), dtype=np.int8)  # [t, side held before t]
        for t in range(len(moves) - 1, -1, -1):
            gain = sides * moves[t] + self.value[t + 1]  # [to]: hold `to` from t to t+1, then act optimally
            total = gain[None, :] - self.entry_cost  # [from, to]
            choice = np.argmax(total, axis=1)
            self.best_side[t] = sides[choice]
            self.value[t] = total[np.arange(3), choice]

    def __call__(self, env: VecTradingEnv, obs: np.ndarray) -> np.ndarray:
        return _move_to(env.side, self.best_side[env.row, env.side + 1])


BASELINES: dict[str, Callable[[MarketData, int], Policy]] = {
    "flat": lambda market, seed: flat,
    "buy_hold": lambda market, seed: buy_and_hold,
    "random": lambda market, seed: RandomLegal(seed),
    "momentum": lambda market, seed: Momentum(),
    "range": lambda market, seed: RangeReversion(),
    "hour": lambda market, seed: HourOfDay(market),
}
# Reference points that are not tradeable strategies.
REFERENCES: dict[str, Callable[[MarketData, int], Policy]] = {
    "oracle": lambda market, seed: PerfectForesight(market.close, market.pip, market.spread_pips),
}
POLICIES = {**BASELINES, **REFERENCES}


def make_policy(name: str, market: MarketData, seed: int = 0) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    return POLICIES[name](market, seed)


# The rows a comparison scores beside the agents (an experiment's reference rows, a
# learning curve's lines), by policy name, with the label its plots and tables print.
# "flat" is left out: it earns 0 by construction.
COMPARISON_LABELS = {
    "oracle": "perfect foresight",
    "momentum": "momentum (60 bars)",
    "range": "range reversion (60 bars)",
    "hour": "hour of day (20 days)",
    "buy_hold": "buy & hold",
    "random": "random legal",
}


def comparison_policies(market: MarketData, seeds: list[int]) -> dict[str, list[Policy]]:
    """The comparison rows' policies by name: "random" once per seed (it draws its
    actions), every other rule once (it is deterministic)."""
    return {
        name: [make_policy(name, market, seed) for seed in (seeds if name == "random" else seeds[:1])]
        for name in COMPARISON_LABELS
    }
