"""The 9 causal market features per bar (ARCHITECTURE §2), vectorised with numpy.

Every feature at bar t uses only bars <= t. With lookback L (60):

====  ============================  ==============================================================
col   name                          definition
====  ============================  ==============================================================
0     position_in_range_60          (close - min_L close) / (max_L close - min_L close), clip [0, 1]
1     min_max_scaled_momentum_60    m60 = close - close[t-L], min-max scaled over its last L values
2     min_max_scaled_rolling_range  rr = max_L close - min_L close, min-max scaled over its last L values
3     min_max_scaled_momentum_5     m5 = close - close[t-5], placed in m60's last-L [min, max], clip [0, 1]
4     price_change_pips             tanh((close - close[t-1]) / pip / 10)
5, 6  dow_cos, dow_sin              cos, sin of 2*pi*h/120, h = hours since Sunday 22:00 UTC (FX week)
7, 8  hour_cos, hour_sin            cos, sin of 2*pi*(hour + minute/60)/24, UTC
====  ============================  ==============================================================

"max_L" / "min_L" are over the L bars ending at t (t-L+1 .. t). A min-max scaling whose
window is flat (max == min) has no defined position; it is reported as 0.5, the middle.
Rows before every feature is defined (the first 2L-1 bars) are dropped, never zero-filled.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from shared.data.bars import Bars

FEATURE_NAMES = (
    "position_in_range_60",
    "min_max_scaled_momentum_60",
    "min_max_scaled_rolling_range",
    "min_max_scaled_momentum_5",
    "price_change_pips",
    "dow_cos",
    "dow_sin",
    "hour_cos",
    "hour_sin",
)
NUM_MARKET_FEATURES = len(FEATURE_NAMES)
TIME_FEATURE_COLUMNS = slice(5, 9)  # dow_cos, dow_sin, hour_cos, hour_sin
# Bump when a definition changes, so cached feature matrices are rebuilt.
FEATURE_VERSION = 1

_FX_WEEK_HOURS = 120.0
# 1970-01-04 was a Sunday; 22:00 UTC that day starts an FX week.
_FX_WEEK_ORIGIN = np.datetime64("1970-01-04T22:00:00", "ns")


def warmup_bars(lookback: int) -> int:
    """Leading bars without every feature defined (the scaled momentum needs 2L-1)."""
    return 2 * lookback - 1


def _rolling(values: np.ndarray, window: int, reducer) -> np.ndarray:
    """reducer over the `window` values ending at each t; NaN where fewer exist."""
    out = np.full(len(values), np.nan)
    if len(values) >= window:
        out[window - 1 :] = reducer(sliding_window_view(values, window), axis=1)
    return out


def _lag_diff(values: np.ndarray, lag: int) -> np.ndarray:
    out = np.full(len(values), np.nan)
    out[lag:] = values[lag:] - values[:-lag]
    return out


def _scale(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(values - low) / (high - low), clipped to [0, 1]; 0.5 where high == low."""
    span = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(span > 0, (values - low) / np.where(span > 0, span, 1.0), 0.5)
    scaled = np.clip(scaled, 0.0, 1.0)
    scaled[np.isnan(values) | np.isnan(low) | np.isnan(high)] = np.nan
    return scaled


def _rolling_min_max_scale(values: np.ndarray, window: int) -> np.ndarray:
    return _scale(values, _rolling(values, window, np.min), _rolling(values, window, np.max))


def time_features(ts: np.ndarray) -> np.ndarray:
    """[T, 4]: dow_cos, dow_sin, hour_cos, hour_sin for UTC datetime64 timestamps."""
    ts = ts.astype("datetime64[ns]")
    week_hours = ((ts - _FX_WEEK_ORIGIN) / np.timedelta64(1, "h")) % 168.0
    day_hours = (ts - ts.astype("datetime64[D]")) / np.timedelta64(1, "h")
    dow = 2 * np.pi * week_hours / _FX_WEEK_HOURS
    hour = 2 * np.pi * day_hours / 24.0
    return np.stack([np.cos(dow), np.sin(dow), np.cos(hour), np.sin(hour)], axis=1)


def without_time_features(features: np.ndarray) -> np.ndarray:
    """A copy of `features` [T, 9] with the 4 time columns set to 0 (the
    ``features.time_features = False`` ablation: constant inputs carry no information,
    and the shape the model expects is kept)."""
    out = features.copy()
    out[:, TIME_FEATURE_COLUMNS] = 0.0
    return out


def compute_features(bars: Bars, pip: float, lookback: int = 60, drop_warmup: bool = True) -> np.ndarray:
    """The [T, 9] float64 feature matrix of `bars` (warm-up rows dropped by default)."""
    close = bars.close
    low = _rolling(close, lookback, np.min)
    high = _rolling(close, lookback, np.max)
    momentum_long = _lag_diff(close, lookback)
    momentum_long_low = _rolling(momentum_long, lookback, np.min)
    momentum_long_high = _rolling(momentum_long, lookback, np.max)
    rolling_range = high - low

    features = np.empty((len(close), NUM_MARKET_FEATURES))
    features[:, 0] = _scale(close, low, high)
    features[:, 1] = _scale(momentum_long, momentum_long_low, momentum_long_high)
    features[:, 2] = _rolling_min_max_scale(rolling_range, lookback)
    features[:, 3] = _scale(_lag_diff(close, 5), momentum_long_low, momentum_long_high)
    features[:, 4] = np.tanh(_lag_diff(close, 1) / pip / 10.0)
    features[:, 5:9] = time_features(bars.ts)
    if drop_warmup:
        features = features[warmup_bars(lookback) :]
        if len(features) and np.isnan(features).any():
            raise AssertionError("a feature is undefined after the warm-up; a definition is wrong")
    return features
