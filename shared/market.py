"""Market data as the environment and the models see it: features aligned with prices.

``load_market`` turns a symbol's stored bars into a :class:`MarketData` and caches the
feature matrix per symbol, keyed by a fingerprint of the bars and the feature
definition, so every service rebuilds identical observations cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.config import Config
from shared.data.bars import Bars
from shared.data.store import BarStore
from shared.features import FEATURE_VERSION, compute_features, warmup_bars
from shared.splits import Split, make_splits

_YEAR_BAR_HOURS = 52 * 5 * 24  # hours in an FX trading year, for annualising


@dataclass(frozen=True)
class MarketData:
    """Feature rows of one symbol with the bar each row belongs to.

    Row i describes bar ``bar_offset + i`` of the stored series (warm-up bars dropped).
    """

    symbol: str
    features: np.ndarray  # [T, 9] float32
    close: np.ndarray  # [T] float64
    ts: np.ndarray  # [T] datetime64[ns], UTC
    pip: float
    spread_pips: float
    bar_offset: int

    def __len__(self) -> int:
        return len(self.close)

    @property
    def bar_seconds(self) -> float:
        """The typical bar length: the median spacing of timestamps."""
        return float(np.median(np.diff(self.ts)) / np.timedelta64(1, "s"))

    @property
    def bars_per_year(self) -> float:
        """Bars in an FX trading year (52 weeks x 5 days x 24 h), for annualising."""
        return _YEAR_BAR_HOURS * 3600.0 / self.bar_seconds

    def splits(self, config: Config) -> dict[str, Split]:
        return make_splits(len(self), config.splits, config.env.window)


def market_from_bars(symbol: str, bars: Bars, config: Config) -> MarketData:
    spec = config.market.spec(symbol)
    lookback = config.features.lookback
    offset = warmup_bars(lookback)
    if len(bars) <= offset:
        raise ValueError(f"{symbol} has {len(bars)} bars; the features need more than {offset}")
    features = compute_features(bars, spec.pip, lookback)
    return MarketData(
        symbol=symbol.upper(),
        features=features.astype(np.float32),
        close=bars.close[offset:].copy(),
        ts=bars.ts[offset:].copy(),
        pip=spec.pip,
        spread_pips=spec.spread_pips,
        bar_offset=offset,
    )


def _cache_path(config: Config, symbol: str, fingerprint: str) -> Path:
    key = f"{symbol.upper()}-L{config.features.lookback}-v{FEATURE_VERSION}-{fingerprint[:16]}"
    return Path(config.data.cache_dir) / "features" / f"{key}.npz"


def load_market(config: Config, symbol: str | None = None, store: BarStore | None = None) -> MarketData:
    """Features and prices of `symbol` from the bar store, through the feature cache."""
    symbol = (symbol or config.data.default_symbol).upper()
    store = store or BarStore(config.data.db_path)
    spec = config.market.spec(symbol)
    path = _cache_path(config, symbol, store.content_hash(symbol))
    if path.exists():
        with np.load(path, allow_pickle=False) as cached:
            return MarketData(
                symbol=symbol,
                features=cached["features"],
                close=cached["close"],
                ts=cached["ts"],
                pip=spec.pip,
                spread_pips=spec.spread_pips,
                bar_offset=int(cached["bar_offset"]),
            )
    market = market_from_bars(symbol, store.load(symbol), config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, features=market.features, close=market.close, ts=market.ts, bar_offset=market.bar_offset)
    tmp.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one
    return market
