"""The held-out backtests: the agent and every baseline on one split, in isolation.

Isolation is structural: the market is cut to the split's rows before any policy,
environment or oracle is built, so no bar outside the split exists for them to read.
(Feature values are causal and were computed over the stored series, so a split's
first rows summarise earlier bars' prices exactly as live trading would see them.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.backtest import BacktestResult, backtest
from shared.baselines import BASELINES, REFERENCES, Policy, make_policy
from shared.market import MarketData, restrict_to_split
from shared.splits import Split

AGENT = "agent"


@dataclass(frozen=True)
class Evaluation:
    market: MarketData  # only the split's rows
    split: Split  # the split re-based to row 0 of `market`
    source_split: Split  # the split's rows in the full series
    window: int
    chunks: int
    results: dict[str, BacktestResult]  # agent, the baselines, then the references (oracle)

    @property
    def decision_rows(self) -> np.ndarray:
        """Row of each decision bar in `market`, aligned with every result's bar_pnl."""
        first = self.split.first_decision(self.window)
        return np.arange(first, first + self.split.decisions(self.window))


def evaluate_split(
    market: MarketData,
    split: Split,
    agent: Policy,
    *,
    window: int,
    drawdown_penalty: float,
    chunks: int,
    seed: int,
    n_trials: int,
    progress: bool = False,
) -> Evaluation:
    """Backtest `agent` (scored with `n_trials` for the deflated Sharpe) and the
    baselines (one trial each: they were not selected) over every decision bar of `split`."""
    local, local_split = restrict_to_split(market, split)
    _check_isolated(market, split, local, local_split)
    run: dict[str, Any] = dict(window=window, drawdown_penalty=drawdown_penalty, chunks=chunks)
    results = {
        AGENT: backtest(local, local_split, agent, n_trials=n_trials, progress="agent" if progress else False, **run)
    }
    for name in (*BASELINES, *REFERENCES):
        results[name] = backtest(local, local_split, make_policy(name, local, seed), **run)
    for name, result in results.items():
        rows = np.concatenate([result.trades.entry_row, result.trades.exit_row])
        if rows.size and not (0 <= rows.min() and rows.max() < len(local)):
            raise AssertionError(f"{name} traded at a row outside the {split.name} split")
        if len(result.bar_pnl) != local_split.decisions(window):
            raise AssertionError(
                f"{name} played {len(result.bar_pnl)} bars, not the split's {local_split.decisions(window)}"
            )
    return Evaluation(local, local_split, split, window, chunks, results)


def _check_isolated(market: MarketData, split: Split, local: MarketData, local_split: Split) -> None:
    """The restricted market is exactly the split's rows, and nothing more."""
    if not (
        len(local) == len(split) == len(local_split)
        and local_split.start == 0
        and local.ts[0] == market.ts[split.start]
        and local.ts[-1] == market.ts[split.stop - 1]
    ):
        raise AssertionError(f"the {split.name} split was not isolated: rows [{split.start}, {split.stop})")
