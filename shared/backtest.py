"""Run a policy over a whole split and score it with the trading metrics.

The split's decision bars are cut into `chunks` contiguous pieces played as parallel
episodes (1 chunk = one continuous run). Each chunk starts flat and is closed at its
end, so more chunks means a few more trades; the equity curve is the chunks' per-bar
P&L laid end to end in time order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from shared.baselines import Policy
from shared.env import Trades, VecTradingEnv
from shared.market import MarketData
from shared.metrics import TradingMetrics, compute_metrics
from shared.splits import Split


@dataclass(frozen=True)
class BacktestResult:
    split: Split
    trades: Trades  # in order of exit
    bar_pnl: np.ndarray  # [decisions] pips per decision bar, in time order
    actions: np.ndarray  # [decisions] action taken at each decision bar
    metrics: TradingMetrics


def chunk_episodes(split: Split, window: int, chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Start rows and lengths of `chunks` contiguous episodes covering the split."""
    decisions = split.decisions(window)
    chunks = max(1, min(chunks, decisions))
    bounds = np.linspace(0, decisions, chunks + 1).round().astype(np.int64)
    return split.first_decision(window) + bounds[:-1], np.diff(bounds)


def backtest(
    market: MarketData,
    split: Split,
    policy: Policy,
    *,
    window: int = 64,
    drawdown_penalty: float = 0.01,
    chunks: int = 1,
    n_trials: int = 1,
    progress: bool | str = False,
) -> BacktestResult:
    """Play `policy` greedily over every decision bar of `split` and compute metrics.

    `progress`: a tqdm bar on stderr, one tick per step of the lock-stepped chunks
    (True, or a label for the bar); off by default so library callers stay silent.
    """
    starts, lengths = chunk_episodes(split, window, chunks)
    env = VecTradingEnv.for_market(
        market,
        num_envs=len(starts),
        window=window,
        episode_length=int(lengths.max()),
        drawdown_penalty=drawdown_penalty,
    )
    obs = env.reset(starts=starts, lengths=lengths)
    steps = int(lengths.max())
    pnl = np.zeros((len(starts), steps))
    actions = np.zeros((len(starts), steps), dtype=np.int8)
    label = progress if isinstance(progress, str) else f"backtest {split.name}"
    for k in tqdm(range(steps), desc=label, unit="step", disable=not progress, leave=False):
        act = np.asarray(policy(env, obs))
        actions[:, k] = act
        pnl[:, k] = env.step(act).pnl
        obs = env.observe(out=obs)
    played = np.arange(steps)[None, :] < lengths[:, None]
    trades = env.trades()
    order = np.argsort(trades.exit_row, kind="stable")
    trades = Trades(*(getattr(trades, f)[order] for f in Trades.__dataclass_fields__))
    bar_pnl = pnl[played]  # row-major over chunks in time order = chronological
    metrics = compute_metrics(
        trades.net_pips,
        bar_pnl,
        market.bars_per_year,
        trade_amddp1=trades.amddp1,
        n_trials=n_trials,
    )
    return BacktestResult(split, trades, bar_pnl, actions[played], metrics)
