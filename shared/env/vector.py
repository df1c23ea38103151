"""A trading environment vectorised over B lock-stepped episodes (ARCHITECTURE §3).

Timing. At decision k of an episode starting at feature row ``s`` the agent sees the
window of rows ``s+k-W+1 .. s+k`` and acts; the order fills at ``close[s+k]``; the step
then marks the position to ``close[s+k+1]``. After ``length`` decisions any open trade
is closed at ``close[s+length]`` (no extra cost: the spread of a round trip is paid
when the trade is opened).

Reward of one step, in pips: the mark-to-market change of the position held after the
action, minus the spread if the action opened a trade (a reversal closes one trade and
opens another, so it pays the new trade's spread; the old one paid at its own entry),
minus ``drawdown_penalty`` times the increase of the open trade's drawdown. Summed
over the steps of a trade this is exactly the trade's AMDDP1 = net pips -
``drawdown_penalty`` x accumulated drawdown, where the drawdown is the distance of the
trade's net P&L below its running peak (the peak starts at the entry value, -spread)
and the accumulated drawdown is the sum of the drawdown's increases.

Position state (6 columns of the observation, all 0 when flat), for a bar t at which a
trade is open, marked at ``close[t]`` before the decision at t: side, tanh(pnl/100),
tanh(bars_held/100), tanh(-drawdown/100), tanh(-max_drawdown/100),
tanh(accumulated_drawdown/100); pnl is net of the spread, bars_held = t - entry row.

All episodes advance together, so the step is pure array arithmetic over B; episodes
may have different lengths (backtest chunks): a finished episode ignores further
actions and earns 0 until every episode is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shared.actions import LEGAL_BY_SIDE, SIDE_AFTER, Action

if TYPE_CHECKING:  # a type only: the market module does not need the env at import
    from shared.market import MarketData

NUM_POSITION_FEATURES = 6
POSITION_SCALE = 100.0  # pips (or bars) at which the position features saturate via tanh


@dataclass(frozen=True)
class Trades:
    """Closed trades, one entry per trade, in the order they closed."""

    env: np.ndarray  # [N] int64: which environment
    side: np.ndarray  # [N] int8: +1 long, -1 short
    entry_row: np.ndarray  # [N] int64: feature row of the entry fill
    exit_row: np.ndarray  # [N] int64: feature row of the exit fill
    net_pips: np.ndarray  # [N] float64: side x (exit - entry) / pip - spread
    accumulated_drawdown: np.ndarray  # [N] float64, pips
    amddp1: np.ndarray  # [N] float64: net_pips - penalty x accumulated_drawdown

    def __len__(self) -> int:
        return len(self.env)


@dataclass(frozen=True)
class StepResult:
    reward: np.ndarray  # [B] float64: shaped reward (AMDDP1 increments)
    pnl: np.ndarray  # [B] float64: mark-to-market change net of costs, no penalty
    done: np.ndarray  # [B] bool: the episode has ended (now or before)


class VecTradingEnv:
    """B trading episodes over one feature matrix, stepped together.

    ``features`` [T, 9] and ``close`` [T] are row-aligned (see ``shared.market``).
    ``strict`` raises on an illegal action; otherwise an illegal action is a Hold.
    """

    def __init__(
        self,
        features: np.ndarray,
        close: np.ndarray,
        *,
        num_envs: int,
        pip: float,
        spread_pips: float,
        window: int = 64,
        episode_length: int = 360,
        drawdown_penalty: float = 0.01,
        strict: bool = True,
    ) -> None:
        if features.ndim != 2 or len(features) != len(close):
            raise ValueError(f"features {features.shape} and close {close.shape} must be row-aligned [T, F] and [T]")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.features = np.ascontiguousarray(features, dtype=np.float32)
        self.close = np.ascontiguousarray(close, dtype=np.float64)
        self.num_envs, self.window, self.episode_length = num_envs, window, episode_length
        self.pip, self.spread, self.penalty, self.strict = pip, spread_pips, drawdown_penalty, strict
        self._window_offsets = np.arange(1 - window, 1)
        self._rng = np.random.default_rng()
        self.k = 0
        self.start = np.zeros(num_envs, dtype=np.int64)
        self.length = np.zeros(num_envs, dtype=np.int64)

    @classmethod
    def for_market(
        cls,
        market: MarketData,
        *,
        num_envs: int,
        window: int = 64,
        episode_length: int = 360,
        drawdown_penalty: float = 0.01,
        strict: bool = True,
    ) -> VecTradingEnv:
        """Episodes over `market`'s features and closes, at its pip size and spread."""
        return cls(
            market.features,
            market.close,
            num_envs=num_envs,
            pip=market.pip,
            spread_pips=market.spread_pips,
            window=window,
            episode_length=episode_length,
            drawdown_penalty=drawdown_penalty,
            strict=strict,
        )

    # ------------------------------------------------------------------ reset
    def reset(
        self,
        *,
        seed: int | None = None,
        low: int | None = None,
        high: int | None = None,
        starts: np.ndarray | None = None,
        lengths: np.ndarray | None = None,
    ) -> np.ndarray:
        """Start B new episodes and return the first observation [B, W, 15].

        Either ``starts`` (decision rows) and optional ``lengths`` are given, or starts
        are drawn uniformly so that whole episodes fit in feature rows [low, high).
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        B, W = self.num_envs, self.window
        if starts is None:
            low = W - 1 if low is None else low + W - 1
            high = len(self.close) if high is None else high
            last = high - 1 - self.episode_length
            if last < low:
                raise ValueError(
                    f"rows [{low - W + 1}, {high}) are too few for {self.episode_length}-step episodes "
                    f"with a {W}-bar window"
                )
            starts = self._rng.integers(low, last + 1, size=B)
        starts = np.broadcast_to(np.asarray(starts, dtype=np.int64), (B,)).copy()
        lengths = np.broadcast_to(
            np.asarray(self.episode_length if lengths is None else lengths, dtype=np.int64), (B,)
        ).copy()
        if (starts < W - 1).any() or (starts + lengths > len(self.close) - 1).any() or (lengths < 1).any():
            raise ValueError(
                f"episodes must start at row >= {W - 1} and end by row {len(self.close) - 1}; "
                f"got starts {starts.min()}..{starts.max()} with lengths {lengths.min()}..{lengths.max()}"
            )
        self.start, self.length, self.k = starts, lengths, 0
        self.side = np.zeros(B, dtype=np.int8)
        self.entry_price = np.zeros(B)
        self.entry_row = np.zeros(B, dtype=np.int64)
        self.unrealised = np.zeros(B)  # net pips of the open trade, marked at the current bar
        self.peak = np.zeros(B)
        self.drawdown = np.zeros(B)
        self.max_drawdown = np.zeros(B)
        self.accumulated_drawdown = np.zeros(B)
        # Position state by episode bar; rows before the episode stay 0 (flat).
        self._history = np.zeros((B, W + int(lengths.max()), NUM_POSITION_FEATURES), dtype=np.float32)
        self._trades: list[tuple[np.ndarray, ...]] = []
        return self.observe()

    # ------------------------------------------------------------- queries
    @property
    def done(self) -> np.ndarray:
        return self.k >= self.length

    @property
    def row(self) -> np.ndarray:
        """[B] feature row of the current decision bar."""
        return self.start + np.minimum(self.k, self.length)

    def legal_mask(self) -> np.ndarray:
        """[B, 4] legal actions; a finished episode may only Hold."""
        mask = LEGAL_BY_SIDE[self.side + 1]
        return np.where(self.done[:, None], np.array([True, False, False, False]), mask)

    def observe(self, out: np.ndarray | None = None) -> np.ndarray:
        """[B, W, 15] float32: market features then position state, oldest bar first."""
        B, W = self.num_envs, self.window
        if out is None:
            out = np.empty((B, W, self.features.shape[1] + NUM_POSITION_FEATURES), dtype=np.float32)
        rows = self.row[:, None] + self._window_offsets
        out[:, :, : self.features.shape[1]] = self.features[rows]
        k = np.minimum(self.k, self.length)  # finished episodes show their last state
        if (k == self.k).all():
            out[:, :, self.features.shape[1] :] = self._history[:, self.k : self.k + W]
        else:
            out[:, :, self.features.shape[1] :] = self._history[np.arange(B)[:, None], k[:, None] + np.arange(W)]
        return out

    def position_history(self) -> np.ndarray:
        """[B, W + L, 6] position state by episode bar: row W-1+k is the state before
        decision k; the W-1 rows before the episode are flat. A view: copy to keep."""
        return self._history

    def trades(self) -> Trades:
        """Every trade closed since the last reset."""
        if not self._trades:
            empty_i, empty_f = np.zeros(0, dtype=np.int64), np.zeros(0)
            return Trades(empty_i, np.zeros(0, dtype=np.int8), empty_i, empty_i, empty_f, empty_f, empty_f)
        return Trades(*(np.concatenate(column) for column in zip(*self._trades)))

    # ---------------------------------------------------------------- step
    def step(self, actions: np.ndarray) -> StepResult:
        """Apply one action per environment; returns reward, pnl and done, all [B]."""
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"expected {self.num_envs} actions, got shape {actions.shape}")
        if not np.issubdtype(actions.dtype, np.integer) or (actions < 0).any() or (actions > 3).any():
            raise ValueError(f"actions must be integers in 0..3, got {actions}")
        active = ~self.done
        if not active.any():
            raise RuntimeError("every episode is done; call reset()")
        actions = np.where(active, actions, Action.HOLD)
        side = self.side
        illegal = ~LEGAL_BY_SIDE[side + 1, actions]
        if illegal.any():
            if self.strict:
                i = int(np.flatnonzero(illegal)[0])
                raise ValueError(
                    f"illegal action {Action(int(actions[i])).name} in env {i} holding side {int(side[i])}"
                )
            actions = np.where(illegal, Action.HOLD, actions)

        # Finished episodes hold flat; clamp their row so it stays inside the data.
        row = self.start + np.minimum(self.k, self.length - 1)
        price = self.close[row]
        new_side = SIDE_AFTER[side + 1, actions]
        closing = (side != 0) & (new_side != side)
        opening = (new_side != 0) & (new_side != side)
        if closing.any():
            self._record_trades(closing, price, row)
        if opening.any():
            self.entry_price = np.where(opening, price, self.entry_price)
            self.entry_row = np.where(opening, row, self.entry_row)
        fresh = opening | closing  # a new trade, or none: the trade statistics start over
        if fresh.any():
            np.copyto(self.peak, np.where(opening, -self.spread, 0.0), where=fresh)
            for stat in (self.drawdown, self.max_drawdown, self.accumulated_drawdown):
                np.copyto(stat, 0.0, where=fresh)
        self.side = new_side

        next_price = self.close[row + 1]
        holding = new_side != 0
        pnl = new_side * (next_price - price) / self.pip - self.spread * opening
        unrealised = np.where(holding, new_side * (next_price - self.entry_price) / self.pip - self.spread, 0.0)
        self.peak = np.maximum(self.peak, unrealised)
        drawdown = self.peak - unrealised
        increase = np.maximum(drawdown - self.drawdown, 0.0)
        self.accumulated_drawdown += increase
        self.max_drawdown = np.maximum(self.max_drawdown, drawdown)
        self.drawdown, self.unrealised = drawdown, unrealised
        reward = np.where(active, pnl - self.penalty * increase, 0.0)
        pnl = np.where(active, pnl, 0.0)

        self.k += 1
        ending = active & (self.k == self.length)
        if ending.any():
            self._force_close(ending, row + 1)
        self._write_position_state(self.k)
        return StepResult(reward=reward, pnl=pnl, done=self.done)

    # ------------------------------------------------------------ helpers
    def _record_trades(self, closing: np.ndarray, price: np.ndarray, row: np.ndarray) -> None:
        idx = np.flatnonzero(closing)
        side = self.side[idx]
        net = side * (price[idx] - self.entry_price[idx]) / self.pip - self.spread
        acc = self.accumulated_drawdown[idx]
        self._trades.append(
            (idx, side.copy(), self.entry_row[idx], row[idx], net, acc.copy(), net - self.penalty * acc)
        )

    def _force_close(self, ending: np.ndarray, row: np.ndarray) -> None:
        closing = ending & (self.side != 0)
        if closing.any():
            self._record_trades(closing, self.close[row], row)
        self.side = np.where(ending, 0, self.side).astype(np.int8)
        for stat in (self.unrealised, self.peak, self.drawdown, self.max_drawdown, self.accumulated_drawdown):
            np.copyto(stat, 0.0, where=ending)

    def _write_position_state(self, k: int) -> None:
        held = self.side != 0
        state = self._history[:, self.window - 1 + k]
        state[:, 0] = self.side
        state[:, 1] = np.tanh(self.unrealised / POSITION_SCALE)
        state[:, 2] = np.tanh((self.start + k - self.entry_row) / POSITION_SCALE) * held
        state[:, 3] = np.tanh(-self.drawdown / POSITION_SCALE)
        state[:, 4] = np.tanh(-self.max_drawdown / POSITION_SCALE)
        state[:, 5] = np.tanh(self.accumulated_drawdown / POSITION_SCALE)
