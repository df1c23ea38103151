"""Observations as the agent saw them in training, built from what a caller has.

* :func:`observation_from_bars` turns raw OHLC bars and a position into the exact
  ``[W, 15]`` observation: the market features come from
  :func:`shared.market.market_from_bars` and the 6 position columns from replaying
  :class:`shared.env.VecTradingEnv` (a Buy/Sell at the entry bar, then Holds), so no
  position math is re-derived here.
* :func:`observation_from_window` checks a ready ``[W, 15]`` observation.

A problem with the input raises :class:`ObservationError`, which names the field
(``loc``, e.g. ``("bars",)`` or ``("position", "bars_held")``); the API answers it
with a 422 under ``body``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.actions import Action, legal_mask
from shared.config import Config
from shared.data.bars import Bars
from shared.env import NUM_POSITION_FEATURES, VecTradingEnv
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
    features = market.features  # [W, 9], rows = bars n-W .. n-1

    # Row space of the replay: W-1 flat padding rows (so an episode may start at the
    # entry bar whatever its index), bars first..n-1, and one copy of the newest bar
    # (the environment ends an episode one row before its data ends; the replay stops
    # before it is ever reached).
    entry = n - 1 - bars_held  # bar index of the entry fill (the newest bar when flat)
    first = min(entry, n - W)
    pad = W - 1
    span = n - first
    rows = pad + span + 1
    feat = np.zeros((rows, NUM_MARKET_FEATURES), dtype=np.float32)
    feat[pad + span - W : pad + span] = features
    close = np.empty(rows)
    close[:pad] = bars.close[first]
    close[pad : pad + span] = bars.close[first:]
    close[pad + span] = bars.close[-1]
    env = VecTradingEnv(
        feat,
        close,
        num_envs=1,
        pip=spec.pip,
        spread_pips=spec.spread_pips,
        window=W,
        episode_length=bars_held + 1,
        drawdown_penalty=config.env.drawdown_penalty,
        strict=True,
    )
    with np.errstate(all="ignore"):
        env.reset(starts=np.array([pad + entry - first]), lengths=np.array([bars_held + 1]))
        if side != 0:
            env.step(np.array([Action.BUY if side == 1 else Action.SELL]))
            hold = np.array([Action.HOLD])
            for _ in range(bars_held - 1):
                env.step(hold)
        obs = env.observe()[0].copy()
    if int(env.side[0]) != side or int(env.row[0]) != pad + span - 1:
        raise AssertionError(f"replay ended holding {int(env.side[0])} at row {int(env.row[0])}")  # a bug, not input
    if not np.isfinite(obs).all():
        raise ObservationError(("bars",), "the observation built from these bars is not finite (extreme prices?)")
    return Observation(obs=obs, side=side, legal=env.legal_mask()[0].copy())


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
