"""Observations as the agent saw them in training, built from what a caller has.

* :func:`observation_from_bars` turns raw OHLC bars and a position into the exact
  ``[W, 15]`` observation: the market features come from
  :func:`shared.market.market_from_bars` and the 6 position columns from
  :func:`position_states`: the arithmetic of :class:`shared.env.VecTradingEnv`'s steps
  for a Buy/Sell at the entry bar and Holds since, applied to all the held bars at once
  (a test replays the environment step by step and compares bit for bit).
* :func:`observation_from_window` checks a ready ``[W, 15]`` observation.

A problem with the input raises :class:`ObservationError`, which names the field
(``loc``, e.g. ``("bars",)`` or ``("position", "bars_held")``); the API answers it
with a 422 under ``body``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.actions import legal_mask
from shared.config import Config
from shared.data.bars import Bars
from shared.env import NUM_POSITION_FEATURES
from shared.env.vector import POSITION_SCALE
from shared.features import NUM_MARKET_FEATURES, warmup_bars
from shared.market import market_from_bars

OBS_FEATURES = NUM_MARKET_FEATURES + NUM_POSITION_FEATURES  # 15
_SIDE_COLUMN = NUM_MARKET_FEATURES  # column 9: the position side


class ObservationError(ValueError):
    """An input that cannot become an observation; `loc` names the field."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc, self.msg = loc, msg

    def at(self, *prefix: str | int) -> ObservationError:
        """The same error located under `prefix` (e.g. ``("items", 3)`` of a batch)."""
        return ObservationError((*prefix, *self.loc), self.msg)


@dataclass(frozen=True)
class Observation:
    obs: np.ndarray  # [W, 15] float32, oldest bar first
    side: int  # -1, 0, 1
    legal: np.ndarray  # [4] bool


def bars_needed(config: Config) -> int:
    """Bars a request must send: the features' warm-up (2L-1) plus one window."""
    return warmup_bars(config.features.lookback) + config.env.window


def observation_from_bars(bars: Bars, side: int, bars_held: int, symbol: str, config: Config) -> Observation:
    """The observation at the newest bar of `bars` while holding `side` for `bars_held` bars.

    The trade (if any) was filled at the close of bar ``n - 1 - bars_held``. Bars
    before the entry (inside the window) show a flat position, as in training, where
    the position state before an episode is flat.
    """
    W = config.env.window
    n, need = len(bars), bars_needed(config)
    if n < need:
        raise ObservationError(
            ("bars",),
            f"{n} bars sent; at least {need} are needed ({need - W} warm-up bars for the features + a {W}-bar window)",
        )
    if side not in (-1, 0, 1):
        raise ObservationError(("position", "side"), f"side must be -1, 0 or 1, got {side}")
    if (side == 0) != (bars_held == 0) or bars_held < 0:
        raise ObservationError(("position", "bars_held"), "bars_held must be >= 1 when side != 0, else 0")
    if bars_held > n - 1:
        raise ObservationError(
            ("position", "bars_held"),
            f"bars_held {bars_held} puts the entry before the first of the {n} bars sent; send at least "
            f"{bars_held + 1} bars so the entry price and the trade's path are known",
        )
    spec = config.market.spec(symbol)
    # The newest W feature rows depend only on the last `need` bars.
    try:
        with np.errstate(all="ignore"):
            market = market_from_bars(symbol, bars.slice(n - need, n), config)
    except (ValueError, ArithmeticError, AssertionError) as exc:
        raise ObservationError(("bars",), f"the features cannot be computed from these bars: {exc}") from exc
    obs = np.zeros((W, OBS_FEATURES), dtype=np.float32)
    obs[:, :NUM_MARKET_FEATURES] = market.features  # [W, 9], rows = bars n-W .. n-1
    if side != 0:
        with np.errstate(all="ignore"):
            state = position_states(bars.close[n - 1 - bars_held :], side, spec.pip, spec.spread_pips)
        shown = min(bars_held, W)  # bars up to the entry show a flat position
        obs[W - shown :, NUM_MARKET_FEATURES:] = state[bars_held - shown :]
    if not np.isfinite(obs).all():
        raise ObservationError(("bars",), "the observation built from these bars is not finite (extreme prices?)")
    return Observation(obs=obs, side=side, legal=_legal(side))


def position_states(close: np.ndarray, side: int, pip: float, spread_pips: float) -> np.ndarray:
    """[h, 6] float32: the position columns of the h bars after an entry, as
    :class:`shared.env.VecTradingEnv` writes them for a Buy/Sell at the close of
    ``close[0]`` followed by h Holds (``close`` holds the entry bar and the h bars since).

    The environment's step arithmetic, as whole-array operations in the same order
    (maxima and running sums are accumulated bar by bar, as the steps do), so every
    value equals the step-by-step replay's bit for bit (tested against it).
    """
    unrealised = side * (close[1:] - close[0]) / pip - spread_pips  # marked at each bar's close
    peak = np.maximum.accumulate(np.concatenate([[-spread_pips], unrealised]))[1:]  # from the entry value
    drawdown = peak - unrealised
    increase = np.maximum(np.diff(drawdown, prepend=0.0), 0.0)
    accumulated = np.cumsum(increase)
    max_drawdown = np.maximum.accumulate(np.concatenate([[0.0], drawdown]))[1:]
    held = np.arange(1, len(unrealised) + 1)
    state = np.empty((len(unrealised), NUM_POSITION_FEATURES), dtype=np.float32)
    state[:, 0] = side
    state[:, 1] = np.tanh(unrealised / POSITION_SCALE)
    state[:, 2] = np.tanh(held / POSITION_SCALE)
    state[:, 3] = np.tanh(-drawdown / POSITION_SCALE)
    state[:, 4] = np.tanh(-max_drawdown / POSITION_SCALE)
    state[:, 5] = np.tanh(accumulated / POSITION_SCALE)
    return state


def observation_from_window(window: list[list[float]], config: Config, side: int | None = None) -> Observation:
    """A ready [W, 15] observation; every value in [-1, 1], the newest row's side in {-1, 0, 1}."""
    W = config.env.window
    if len(window) != W:
        raise ObservationError(("window",), f"window has {len(window)} rows; expected {W} (oldest bar first)")
    for i, row in enumerate(window):
        if len(row) != OBS_FEATURES:
            hint = (
                " (the 9 market features alone are not enough: send the 6 position columns too, or send bars)"
                if len(row) == NUM_MARKET_FEATURES
                else ""
            )
            raise ObservationError(("window", i), f"window[{i}] has {len(row)} values; expected {OBS_FEATURES}{hint}")
    obs = np.asarray(window, dtype=np.float64)
    bad = np.argwhere(~(np.abs(obs) <= 1.0 + 1e-6))
    if len(bad):
        i, j = (int(x) for x in bad[0])
        raise ObservationError(
            ("window", i, j), f"window[{i}][{j}] = {obs[i, j]!r} is outside [-1, 1], the range of every column"
        )
    newest_side = obs[-1, _SIDE_COLUMN]
    if newest_side not in (-1.0, 0.0, 1.0):
        raise ObservationError(
            ("window", W - 1, _SIDE_COLUMN),
            f"window[{W - 1}][{_SIDE_COLUMN}] (the position side) must be -1, 0 or 1, got {newest_side!r}",
        )
    if side is not None and side != int(newest_side):
        raise ObservationError(
            ("position", "side"),
            f"position.side {side} disagrees with the window's newest side column ({int(newest_side)})",
        )
    side = int(newest_side)
    return Observation(obs=obs.astype(np.float32), side=side, legal=_legal(side))


def _legal(side: int) -> np.ndarray:
    return legal_mask(np.array(side)).copy()
