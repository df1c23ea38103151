"""Confidence intervals for experiment results.

* :func:`t_interval` - mean and 95 % Student-t interval across independent runs (seeds):
  ``mean +- t_{0.975, n-1} * sd / sqrt(n)``. It treats each seed's number as one draw;
  with 3 seeds the interval is wide (t = 4.30), which is the honest width.
* :func:`bootstrap_mean_interval` - percentile bootstrap of the mean of pooled values
  (e.g. every trade of every seed). It measures trade-to-trade noise only, not
  seed-to-seed variation, so it is narrower than the t-interval and is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import t as student_t

from shared.evaluation.stats import bootstrap_mean_ci


@dataclass(frozen=True)
class Interval:
    mean: float | None
    low: float | None  # None when undefined (fewer than 2 values)
    high: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean and two-sided t-interval of `values`; None entries are dropped (e.g. the
    expectancy of a run without trades)."""
    x = np.array([v for v in values if v is not None], dtype=np.float64)
    if len(x) == 0:
        return Interval(None, None, None, 0)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, None, None, 1)
    half = float(student_t.ppf(0.5 + confidence / 2, len(x) - 1)) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half, len(x))


def bootstrap_mean_interval(values, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Interval:
    """Mean and percentile-bootstrap interval of the mean of `values` (reproducible):
    the evaluation report's bootstrap, as an :class:`Interval`."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return Interval(float(x[0]) if len(x) else None, None, None, len(x))
    ci = bootstrap_mean_ci(x, resamples=resamples, confidence=confidence, seed=seed)
    return Interval(ci.mean, ci.low, ci.high, ci.trades)
