import dataclasses

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from shared.backtest import backtest, chunk_episodes
from shared.baselines import HourOfDay, Momentum, RandomLegal, buy_and_hold, flat
from shared.config import Config
from shared.env.gym import TradingEnv
from shared.splits import Split
from tests.helpers import random_walk_market


@pytest.fixture(scope="module")
def market():
    return random_walk_market(3000)


def test_chunks_cover_every_decision_bar_once():
    split = Split("validation", 1000, 1500)
    starts, lengths = chunk_episodes(split, 64, 7)
    covered = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
    np.testing.assert_array_equal(covered, np.arange(1063, 1499))


def test_flat_never_trades(market):
    split = market.splits(Config())["test"]
    result = backtest(market, split, flat)
    assert result.metrics.trades == 0 and result.metrics.total_pips == 0
    assert len(result.bar_pnl) == split.decisions(64)


def test_buy_and_hold_earns_the_price_change_minus_one_spread(market):
    split = market.splits(Config())["validation"]
    result = backtest(market, split, buy_and_hold)
    first, last = split.first_decision(64), split.stop - 1
    expected = (market.close[last] - market.close[first]) / market.pip - market.spread_pips
    assert result.metrics.trades == 1
    assert result.metrics.total_pips == pytest.approx(expected)
    assert result.bar_pnl.sum() == pytest.approx(expected)


def test_chunked_backtest_pays_a_spread_per_chunk(market):
    split = market.splits(Config())["validation"]
    one = backtest(market, split, buy_and_hold, chunks=1)
    four = backtest(market, split, buy_and_hold, chunks=4)
    assert four.metrics.trades == 4
    assert four.metrics.total_pips == pytest.approx(one.metrics.total_pips - 3 * market.spread_pips)


def test_random_policy_is_seeded_and_momentum_follows_the_trend(market):
    split = market.splits(Config())["train"]
    a = backtest(market, split, RandomLegal(seed=4))
    b = backtest(market, split, RandomLegal(seed=4))
    assert a.metrics.as_dict() == b.metrics.as_dict() and a.metrics.trades > 100
    # Random trading pays the spread on every trade: on a driftless walk it loses.
    assert a.metrics.total_pips < 0
    momentum = backtest(market, split, Momentum())
    actions = momentum.actions
    assert set(np.unique(actions)) <= {0, 1, 2}  # it only ever reverses, never closes to flat
    assert momentum.metrics.amddp1_total <= momentum.metrics.total_pips


def test_gymnasium_env_passes_the_checker(market):
    env = TradingEnv(market, market.splits(Config())["train"], episode_length=50)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=1)
    assert obs.shape == (64, 15) and info["action_mask"].tolist() == [1, 1, 1, 0]
    total = 0.0
    for k in range(50):
        obs, reward, terminated, truncated, info = env.step(1 if k == 0 else 0)
        total += reward
    assert truncated and not terminated
    obs2, _ = env.reset(seed=1)
    np.testing.assert_array_equal(obs2[:, :9], env.reset(seed=1)[0][:, :9])


def test_perfect_foresight_matches_brute_force_over_every_path():
    import itertools

    from shared.baselines import PerfectForesight
    from shared.env import VecTradingEnv

    rng = np.random.default_rng(7)
    close = 100 + np.cumsum(rng.normal(0, 2, 9))
    spread = 1.5
    best = -np.inf
    for path in itertools.product((-1, 0, 1), repeat=8):  # side held from bar t to t+1
        pips = sum(s * (close[t + 1] - close[t]) for t, s in enumerate(path))
        entries = sum(1 for t, s in enumerate(path) if s != 0 and s != (path[t - 1] if t else 0))
        best = max(best, pips - spread * entries)
    env = VecTradingEnv(np.zeros((9, 9), np.float32), close, num_envs=1, pip=1.0, spread_pips=spread, window=1)
    obs = env.reset(starts=np.array([0]), lengths=np.array([8]))
    oracle = PerfectForesight(close, 1.0, spread)
    total = sum(env.step(oracle(env, obs)).pnl[0] for _ in range(8))
    assert total == pytest.approx(best)


def _hour_rule_by_hand(close: np.ndarray, ts: np.ndarray, last: int) -> np.ndarray:
    """At row t: the sign of the mean of the last `last` moves close[j] -> close[j + 1]
    with j + 1 <= t that ended in the hour of day of ts[t + 1]; 0 without any."""
    hour = ts.astype("datetime64[h]").astype(np.int64) % 24
    side = np.zeros(len(close), dtype=np.int8)
    for t in range(len(close) - 1):
        past = [close[j + 1] - close[j] for j in range(t) if hour[j + 1] == hour[t + 1]][-last:]
        side[t] = np.sign(np.mean(past)) if past else 0
    return side


@pytest.mark.parametrize("days", [1, 3, 20])
def test_hour_of_day_rule_is_the_mean_of_each_hours_past_moves_and_never_reads_the_future(market, days):
    keep = np.ones(1200, dtype=bool)
    keep[[100, 101, 102, 503, 777]] = False  # missing bars: the rule goes by the clock, not by bar counts
    rows = np.flatnonzero(keep)
    gappy = dataclasses.replace(market, close=market.close[rows], ts=market.ts[rows], features=market.features[rows])
    rule = HourOfDay(gappy, days=days)
    np.testing.assert_array_equal(rule.side, _hour_rule_by_hand(gappy.close, gappy.ts, days))
    t = 500
    future = dataclasses.replace(gappy, close=np.concatenate([gappy.close[: t + 1], gappy.close[t + 1 :] * 1.01]))
    np.testing.assert_array_equal(HourOfDay(future, days=days).side[: t + 1], rule.side[: t + 1])


def test_hour_of_day_rule_counts_days_not_bars_on_shorter_bars(market):
    quarter_hours = market.ts[0] + np.arange(len(market)) * np.timedelta64(15, "m")
    m15 = dataclasses.replace(market, ts=quarter_hours)
    np.testing.assert_array_equal(HourOfDay(m15, days=5).side, _hour_rule_by_hand(m15.close, m15.ts, 5 * 4))
    with pytest.raises(ValueError, match="days"):
        HourOfDay(market, days=0)
