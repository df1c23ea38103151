"""The in-memory form of a bar series, shared by importers, the store and features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OHLCV = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class Bars:
    """OHLCV bars of one symbol, oldest first.

    ``ts`` is ``datetime64[ns]`` in UTC (naive numpy values that mean UTC); prices and
    volume are float64 arrays of the same length.
    """

    ts: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.ts)
        if self.ts.dtype != np.dtype("datetime64[ns]"):
            raise TypeError(f"Bars.ts must be datetime64[ns], got {self.ts.dtype}")
        for name in OHLCV:
            column = getattr(self, name)
            if column.shape != (n,):
                raise ValueError(f"Bars.{name} has shape {column.shape}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.ts)

    def slice(self, start: int, stop: int) -> Bars:
        return Bars(*(getattr(self, f)[start:stop] for f in ("ts", *OHLCV)))

    @classmethod
    def from_arrays(cls, ts, open, high, low, close, volume=None) -> Bars:
        """Build bars from array-likes, converting dtypes (volume defaults to zeros)."""
        close = np.asarray(close, dtype=np.float64)
        if volume is None:
            volume = np.zeros_like(close)
        return cls(
            ts=np.asarray(ts, dtype="datetime64[ns]"),
            open=np.asarray(open, dtype=np.float64),
            high=np.asarray(high, dtype=np.float64),
            low=np.asarray(low, dtype=np.float64),
            close=close,
            volume=np.asarray(volume, dtype=np.float64),
        )
