"""Small builders shared by tests: markets from synthetic closes, no database needed."""

from __future__ import annotations

import socket

import numpy as np

from shared.config import Config
from shared.data.bars import Bars
from shared.market import MarketData, market_from_bars


def random_walk_bars(n: int = 3000, seed: int = 0, step_pips: float = 5.0, start="2020-01-05T22:00") -> Bars:
    rng = np.random.default_rng(seed)
    close = 1.1 + np.cumsum(rng.normal(0, step_pips * 1e-4, n))
    ts = np.datetime64(start, "ns") + np.arange(n) * np.timedelta64(1, "h")
    return Bars.from_arrays(ts, close, close, close, close)


def random_walk_market(n: int = 3000, seed: int = 0, config: Config | None = None) -> MarketData:
    return market_from_bars("EURUSD", random_walk_bars(n, seed), config or Config())


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
