"""The bundled sample: real EURUSD H1 ask bars of 2017 shipped inside ``gym-anytrading``.

It is the default dataset, so a fresh install can train and backtest without
downloading anything. 6,225 bars in Dukascopy format, UTC, from 2017-01-01 22:00 to
2017-12-29 21:00; every row passes the importer's checks (including open and close
within [low, high]).
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from importlib.resources.abc import Traversable

from shared.data.bars import Bars
from shared.data.importers import decode_bytes, parse_bars_text
from shared.data.store import BarStore, ImportSummary

SAMPLE_SYMBOL = "EURUSD"
SAMPLE_BARS = 6225
SAMPLE_FORMAT = "dukascopy"


def sample_path() -> Traversable:
    """The sample CSV inside the installed ``gym_anytrading`` package."""
    return files("gym_anytrading") / "datasets" / "data" / "FOREX_EURUSD_1H_ASK.csv"


def _read() -> tuple[Bars, str]:
    data = sample_path().read_bytes()
    bars = parse_bars_text(decode_bytes(data), SAMPLE_FORMAT, "UTC", "gym_anytrading:FOREX_EURUSD_1H_ASK.csv")
    return bars, hashlib.sha256(data).hexdigest()


def load_sample_bars() -> Bars:
    """The sample as :class:`Bars`, without touching any store."""
    return _read()[0]


def import_sample(store: BarStore, symbol: str = SAMPLE_SYMBOL) -> ImportSummary:
    """Import (idempotently upsert) the sample into ``store`` under ``symbol``."""
    bars, sha256 = _read()
    return store.import_bars(symbol, bars, source=sample_path().name, sha256=sha256)


def ensure_sample(store: BarStore, symbol: str = SAMPLE_SYMBOL) -> bool:
    """Import the sample when ``symbol`` is the sample's and ``store`` does not hold it
    yet; True if it imported. Any other symbol is left alone (its bars are the user's)."""
    symbol = symbol.strip().upper()
    if symbol != SAMPLE_SYMBOL or symbol in store.symbols():
        return False
    import_sample(store, symbol)
    return True
