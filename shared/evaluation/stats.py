"""Is the agent's expectancy distinguishable from zero? A percentile bootstrap.

Pure functions of the per-trade net pips, so the verdict is testable on constructed
trade lists and reproducible from a seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from shared.jsonsafe import json_safe

MIN_TRADES = 10  # below this a bootstrap of the mean says more about luck than skill
RESAMPLES = 10_000
CONFIDENCE = 0.95
_BATCH = 1_000  # resamples drawn at once: bounds memory at _BATCH x trades floats

TOO_FEW = "too few trades to judge"
NO_EVIDENCE = "no evidence of skill"
POSITIVE = "evidence of positive edge"
NEGATIVE = "evidence of negative edge"


@dataclass(frozen=True)
class ExpectancyInterval:
    """Mean net pips per trade with its bootstrap interval (NaN bounds when undefined)."""

    trades: int
    mean: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int

    def as_dict(self) -> dict:
        return {k: json_safe(v) for k, v in asdict(self).items()}


def bootstrap_mean_ci(
    values, *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> ExpectancyInterval:
    """Percentile bootstrap interval of the mean of `values` (a seeded numpy Generator:
    the same inputs and seed give the same interval)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or not np.isfinite(x).all():
        raise ValueError("values must be a 1-D array of finite numbers")
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and resamples >= 1, got {confidence}, {resamples}")
    if x.size == 0:
        return ExpectancyInterval(0, math.nan, math.nan, math.nan, confidence, resamples, seed)
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            x[rng.integers(0, x.size, size=(min(_BATCH, resamples - done), x.size))].mean(axis=1)
            for done in range(0, resamples, _BATCH)
        ]
    )
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return ExpectancyInterval(int(x.size), float(x.mean()), float(low), float(high), confidence, resamples, seed)


def verdict(interval: ExpectancyInterval, min_trades: int = MIN_TRADES) -> str:
    """The plain-language reading of the interval."""
    if interval.trades < min_trades:
        return TOO_FEW
    if interval.low > 0:
        return POSITIVE
    if interval.high < 0:
        return NEGATIVE
    return NO_EVIDENCE
