"""The served observation equals the environment's step-by-step replay, bit for bit.

``observation_from_bars`` computes the position columns with whole-array arithmetic
(:func:`shared.serving.observation.position_states`); the reference here is what it did
before: a :class:`VecTradingEnv` episode over the bars, a Buy/Sell at the entry bar and
a Hold per bar since, observed at the newest bar.
"""

from __future__ import annotations

import numpy as np
import pytest

from shared.actions import Action
from shared.config import Config
from shared.data.bars import Bars
from shared.data.sample import load_sample_bars
from shared.data.synthetic import synthetic_bars
from shared.env import VecTradingEnv
from shared.features import NUM_MARKET_FEATURES
from shared.market import market_from_bars
from shared.serving.observation import bars_needed, observation_from_bars


def replayed_observation(
    bars: Bars, side: int, bars_held: int, symbol: str, config: Config
) -> tuple[np.ndarray, np.ndarray]:
    """([W, 15], legal [4]): the market features of the last `need` bars and an environment episode
    opened at the entry bar and held since, stepped one bar at a time."""
    W, n, need = config.env.window, len(bars), bars_needed(config)
    spec = config.market.spec(symbol)
    features = market_from_bars(symbol, bars.slice(n - need, n), config).features
    entry = n - 1 - bars_held
    first = min(entry, n - W)
    pad, span = W - 1, n - first
    feat = np.zeros((pad + span + 1, NUM_MARKET_FEATURES), dtype=np.float32)
    feat[pad + span - W : pad + span] = features
    close = np.empty(pad + span + 1)
    close[:pad] = bars.close[first]
    close[pad : pad + span] = bars.close[first:]
    close[pad + span] = bars.close[-1]
    env = VecTradingEnv(
        feat,
        close,
        num_envs=1,
        pip=spec.pip,
        spread_pips=spec.spread_pips,
        window=W,
        episode_length=bars_held + 1,
        drawdown_penalty=config.env.drawdown_penalty,
    )
    env.reset(starts=np.array([pad + entry - first]), lengths=np.array([bars_held + 1]))
    if side != 0:
        env.step(np.array([Action.BUY if side == 1 else Action.SELL]))
        for _ in range(bars_held - 1):
            env.step(np.array([Action.HOLD]))
    assert int(env.side[0]) == side and int(env.row[0]) == pad + span - 1
    return env.observe()[0].copy(), env.legal_mask()[0].copy()


def _sample_bars() -> Bars:
    b = load_sample_bars()
    return Bars.from_arrays(b.ts, b.open, b.high, b.low, b.close, b.volume)


@pytest.mark.parametrize(
    ("source", "symbol", "n"),
    [("sine", "EURUSD", 400), ("random_walk", "USDJPY", 900), ("sample", "EURUSD", 2500)],
)
def test_observation_equals_the_environments_replay(source, symbol, n):
    config = Config()
    bars = _sample_bars().slice(1000, 1000 + n) if source == "sample" else synthetic_bars(source, n, seed=3)
    rng = np.random.default_rng(n)
    holds = [1, 2, 5, 12, 63, 64, 65, 200, n - 1, *rng.integers(1, n - 1, size=12).tolist()]
    for held in holds:
        for side in (-1, 1):
            got = observation_from_bars(bars, side, held, symbol, config)
            want, legal = replayed_observation(bars, side, held, symbol, config)
            assert got.obs.dtype == want.dtype and got.obs.shape == want.shape
            assert np.array_equal(got.obs.view(np.uint32), want.view(np.uint32)), (source, side, held)
            assert got.legal.tolist() == legal.tolist()
    flat = observation_from_bars(bars, 0, 0, symbol, config)
    want, legal = replayed_observation(bars, 0, 0, symbol, config)
    assert np.array_equal(flat.obs.view(np.uint32), want.view(np.uint32)) and flat.legal.tolist() == legal.tolist()
