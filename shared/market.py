"""Market data as the environment and the models see it: features aligned with prices.

``load_market`` turns a symbol's stored bars into a :class:`MarketData` and caches the
feature matrix per symbol, keyed by a fingerprint of the bars and the feature
definition, so every service rebuilds identical observations cheaply.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from shared.config import Config
from shared.data.bars import Bars
from shared.data.store import BarStore, bars_fingerprint
from shared.features import (
    FEATURE_VERSION,
    compute_features,
    warmup_bars,
    without_time_features,
)
from shared.metrics import bars_per_year
from shared.splits import Split, make_splits


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
        return bars_per_year(self.bar_seconds)

    def splits(self, config: Config) -> dict[str, Split]:
        return make_splits(len(self), config.splits, config.env.window)


def restrict_to_split(market: MarketData, split: Split) -> tuple[MarketData, Split]:
    """Only the rows of `split` (its warm-up window included), re-based to row 0.

    Structural isolation for held-out evaluation: nothing given the result (policy,
    environment, oracle) can index a bar outside the split, because no such bar is left.
    The arrays are read-only copies; ``bar_offset`` keeps row i mapped to its stored bar.
    Do not call ``.splits()`` on the result: it is one split, not a whole series.
    """
    if not 0 <= split.start < split.stop <= len(market):
        raise ValueError(
            f"split {split.name} rows [{split.start}, {split.stop}) lie outside the market's {len(market)} rows"
        )
    rows = slice(split.start, split.stop)
    arrays = {name: getattr(market, name)[rows].copy() for name in ("features", "close", "ts")}
    for array in arrays.values():
        array.flags.writeable = False
    restricted = replace(market, **arrays, bar_offset=market.bar_offset + split.start)
    return restricted, Split(split.name, 0, len(split))


def market_from_bars(symbol: str, bars: Bars, config: Config, features: np.ndarray | None = None) -> MarketData:
    """Align `bars` with their feature rows (computed unless `features` are given)."""
    spec = config.market.spec(symbol)
    lookback = config.features.lookback
    offset = warmup_bars(lookback)
    if len(bars) <= offset:
        raise ValueError(f"{symbol} has {len(bars)} bars; the features need more than {offset}")
    if features is None:
        features = compute_features(bars, spec.pip, lookback).astype(np.float32)
    if not config.features.time_features:
        # The ablation is applied here, the one place every feature matrix passes
        # (computed, cached or given), so no caller can see the calendar by accident.
        features = without_time_features(features)
    return MarketData(
        symbol=symbol.upper(),
        features=features,
        close=bars.close[offset:].copy(),
        ts=bars.ts[offset:].copy(),
        pip=spec.pip,
        spread_pips=spec.spread_pips,
        bar_offset=offset,
    )


def _cache_path(config: Config, symbol: str, fingerprint: str) -> Path:
    spec = config.market.spec(symbol)
    # Every switch that changes the matrix is part of the key, so a variant is never
    # served another variant's features.
    variant = "" if config.features.time_features else "-notime"
    key = f"{symbol.upper()}-L{config.features.lookback}-pip{spec.pip:g}-v{FEATURE_VERSION}{variant}-{fingerprint[:16]}"
    return Path(config.data.cache_dir) / "features" / f"{key}.npy"


def load_market(config: Config, symbol: str | None = None, store: BarStore | None = None) -> MarketData:
    """Features and prices of `symbol` from the bar store, through the feature cache."""
    symbol = (symbol or config.data.default_symbol).upper()
    bars = (store or BarStore(config.data.db_path)).load(symbol)
    path = _cache_path(config, symbol, bars_fingerprint(bars))
    if path.exists():
        return market_from_bars(symbol, bars, config, np.load(path, allow_pickle=False))
    market = market_from_bars(symbol, bars, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, market.features)
    tmp.replace(path)  # atomic: a concurrent reader sees no file or the whole file
    return market


def open_market(
    config: Config,
    symbol: str | None = None,
    *,
    store: BarStore | None = None,
    db_path: str | os.PathLike[str] | None = None,
    on_import: Callable[[str], None] | None = None,
) -> MarketData:
    """This symbol's market, the way every command and service opens it: the bar store
    (`store`, else `db_path`, else ``data.db_path``), the bundled EURUSD sample imported
    first if the symbol is the sample's and missing (``on_import(message)`` is told),
    then :func:`load_market` through the feature cache."""
    from shared.data.sample import ensure_sample

    symbol = (symbol or config.data.default_symbol).upper()
    store = store or BarStore(db_path or config.data.db_path)
    if ensure_sample(store, symbol) and on_import is not None:
        on_import("imported the bundled EURUSD H1 2017 sample bars (gym-anytrading)")
    return load_market(config, symbol, store)
