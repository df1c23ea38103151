"""Synthetic bars with a known, learnable structure, to prove an agent can learn.

``sine``: the drift of each bar's return follows a sine wave, so the price swings up
and down with period ``period`` bars, plus Gaussian noise:
``r_t = drift * sin(2 pi t / period) + noise * N(0, 1)`` (in pips). A trader who
knows the phase earns about ``2 * drift * period / pi`` pips per swing before costs.
``random_walk``: the same noise without drift; nothing to learn (a control).

Timestamps are hourly (or ``bar_minutes``) over the FX week only, Sunday 22:00 to
Friday 22:00 UTC, like real forex bars.
"""

from __future__ import annotations

import numpy as np

from shared.data.bars import Bars

KINDS = ("sine", "random_walk")
_WEEK_ORIGIN = np.datetime64("2020-01-05T22:00", "ns")  # a Sunday, 22:00 UTC


def fx_week_timestamps(n: int, bar_minutes: int = 60) -> np.ndarray:
    """The first `n` bar times from 2020-01-05 22:00 UTC, skipping the weekend."""
    per_week = 120 * 60 // bar_minutes
    k = np.arange(n)
    weeks, within = np.divmod(k, per_week)
    return _WEEK_ORIGIN + weeks * np.timedelta64(7, "D") + within * np.timedelta64(bar_minutes, "m")


def synthetic_bars(
    kind: str = "sine",
    n: int = 20_000,
    *,
    seed: int = 0,
    period: float = 48.0,
    drift_pips: float = 3.0,
    noise_pips: float = 2.0,
    pip: float = 0.0001,
    start_price: float = 1.2,
    bar_minutes: int = 60,
) -> Bars:
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; choose from {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    drift = drift_pips * np.sin(2 * np.pi * np.arange(n) / period) if kind == "sine" else np.zeros(n)
    returns = (drift + noise_pips * rng.standard_normal(n)) * pip
    close = start_price + np.cumsum(returns)
    open_ = np.concatenate([[start_price], close[:-1]])
    # Intrabar extremes a little beyond open and close, as real bars have.
    wick = np.abs(rng.normal(0, noise_pips / 2, (2, n))) * pip
    high = np.maximum(open_, close) + wick[0]
    low = np.minimum(open_, close) - wick[1]
    return Bars.from_arrays(fx_week_timestamps(n, bar_minutes), open_, high, low, close, np.zeros(n))
