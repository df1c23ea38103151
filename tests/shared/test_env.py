import numpy as np
import pytest

from shared.actions import Action, legal_mask
from shared.env import VecTradingEnv

H, B_, S, C = Action.HOLD, Action.BUY, Action.SELL, Action.CLOSE


def make_env(close, num_envs=1, window=2, spread=1.0, length=None, strict=True):
    close = np.asarray(close, dtype=np.float64)
    features = np.tile(np.arange(len(close), dtype=np.float32)[:, None], (1, 9))  # row id in every column
    return VecTradingEnv(
        features,
        close,
        num_envs=num_envs,
        pip=1.0,
        spread_pips=spread,
        window=window,
        episode_length=length or len(close) - window,
        strict=strict,
    )


def play(env, actions, start=1):
    env.reset(starts=np.array([start]), lengths=np.array([len(actions)]))
    return [env.step(np.array([a])) for a in actions]


def test_reward_of_a_trade_sums_to_its_amddp1():
    # Long from 100; net P&L marked each bar: 103 -> +2, 101 -> 0 (dd 2), 99 -> -2
    # (dd 4), 104 -> +3 (new peak). Closed at 104: net = 4 - 1 spread = 3 pips,
    # accumulated drawdown = 2 + 2 = 4, AMDDP1 = 3 - 0.01 * 4 = 2.96.
    env = make_env([0, 100, 103, 101, 99, 104, 104])
    results = play(env, [B_, H, H, H, C])
    rewards = [r.reward[0] for r in results]
    np.testing.assert_allclose(rewards, [3 - 1, -2 - 0.02, -2 - 0.02, 5, 0])
    trades = env.trades()
    assert len(trades) == 1
    assert trades.net_pips[0] == pytest.approx(3.0)
    assert trades.accumulated_drawdown[0] == pytest.approx(4.0)
    assert trades.amddp1[0] == pytest.approx(2.96)
    assert sum(rewards) == pytest.approx(trades.amddp1[0])
    assert sum(r.pnl[0] for r in results) == pytest.approx(trades.net_pips[0])


def test_reversal_closes_and_opens_paying_the_spread_on_each_trade():
    env = make_env([0, 100, 100, 100, 100, 100], spread=1.5)
    results = play(env, [B_, S, C, H])
    np.testing.assert_allclose([r.reward[0] for r in results], [-1.5, -1.5, 0, 0])
    trades = env.trades()
    np.testing.assert_array_equal(trades.side, [1, -1])
    np.testing.assert_allclose(trades.net_pips, [-1.5, -1.5])  # two trades, two spreads
    np.testing.assert_array_equal(trades.entry_row, [1, 2])
    np.testing.assert_array_equal(trades.exit_row, [2, 3])


def test_short_profits_when_price_falls():
    env = make_env([0, 100, 95, 90, 90])
    results = play(env, [S, H, C])
    assert sum(r.pnl[0] for r in results) == pytest.approx(10 - 1)
    assert env.trades().net_pips[0] == pytest.approx(9.0)


def test_open_trade_is_force_closed_at_the_end_of_the_episode():
    env = make_env([0, 100, 102, 107, 50])
    results = play(env, [B_, H])
    assert results[-1].done[0]
    trades = env.trades()
    # Closed at close[start + length] = close[3] = 107, not at the later crash.
    assert trades.exit_row[0] == 3 and trades.net_pips[0] == pytest.approx(7 - 1)
    assert env.side[0] == 0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([H]))


def test_legal_masks_and_illegal_actions():
    np.testing.assert_array_equal(legal_mask(np.array([-1, 0, 1])), [[1, 1, 0, 1], [1, 1, 1, 0], [1, 0, 1, 1]])
    env = make_env([0, 100, 101, 102, 103, 104])
    env.reset(starts=np.array([1]), lengths=np.array([4]))
    np.testing.assert_array_equal(env.legal_mask(), [[True, True, True, False]])
    with pytest.raises(ValueError, match="illegal action CLOSE in env 0 holding side 0"):
        env.step(np.array([C]))
    env.step(np.array([B_]))
    np.testing.assert_array_equal(env.legal_mask(), [[True, False, True, True]])
    with pytest.raises(ValueError, match="illegal action BUY"):
        env.step(np.array([B_]))
    # Non-strict environments play an illegal action as Hold.
    lax = make_env([0, 100, 101, 102], strict=False)
    results = play(lax, [C, H])
    assert [r.reward[0] for r in results] == [0, 0] and len(lax.trades()) == 0


def test_position_state_in_the_observation():
    env = make_env([0, 100, 103, 101, 99, 104, 104], window=4)
    obs = env.reset(starts=np.array([3]), lengths=np.array([3]))
    assert obs.shape == (1, 4, 15)
    np.testing.assert_array_equal(obs[0, :, 0], [0, 1, 2, 3])  # market rows, oldest first
    assert not obs[0, :, 9:].any()  # flat before the episode
    env.step(np.array([B_]))  # long at 101 (row 3); bar 4 closes 99: pnl -3, dd 2
    env.step(np.array([H]))  # bar 5 closes 104: pnl +2, peak 2, dd 0; max dd 2, acc 2
    obs = env.observe()
    np.testing.assert_array_equal(obs[0, :, 0], [2, 3, 4, 5])
    state = obs[0, :, 9:]
    assert not state[:2].any()  # bars 2 and 3: flat (the buy happened at bar 3's close)
    t = np.tanh
    np.testing.assert_allclose(state[2], [1, t(-0.03), t(0.01), t(-0.02), t(-0.02), t(0.02)], rtol=1e-6)
    np.testing.assert_allclose(state[3], [1, t(0.02), t(0.02), 0, t(-0.02), t(0.02)], rtol=1e-6)


def test_environments_in_a_batch_are_independent():
    rng = np.random.default_rng(0)
    close = 100 + np.cumsum(rng.normal(0, 2, 400))
    B = 6
    batch = make_env(close, num_envs=B, window=8, length=50)
    starts = rng.integers(10, 300, size=B)
    batch.reset(starts=starts)
    singles = [make_env(close, window=8, length=50) for _ in range(B)]
    for i, env in enumerate(singles):
        env.reset(starts=starts[i : i + 1])
    policy_rng = np.random.default_rng(1)
    for _ in range(50):
        mask = batch.legal_mask()
        actions = np.argmax(np.where(mask, policy_rng.random((B, 4)), -1), axis=1)
        result = batch.step(actions)
        obs = batch.observe()
        for i, env in enumerate(singles):
            single = env.step(actions[i : i + 1])
            assert single.reward[0] == pytest.approx(result.reward[i])
            np.testing.assert_array_equal(env.observe()[0], obs[i])
    assert len(batch.trades()) == sum(len(e.trades()) for e in singles)


def test_total_reward_equals_total_amddp1_over_random_play():
    rng = np.random.default_rng(2)
    close = 100 + np.cumsum(rng.normal(0, 3, 2000))
    env = make_env(close, num_envs=32, window=16, length=360)
    env.reset(seed=5)
    total_reward = total_pnl = 0.0
    while not env.done.all():
        actions = np.argmax(np.where(env.legal_mask(), rng.random((32, 4)), -1), axis=1)
        result = env.step(actions)
        total_reward += result.reward.sum()
        total_pnl += result.pnl.sum()
    trades = env.trades()
    assert len(trades) > 100
    assert total_reward == pytest.approx(trades.amddp1.sum())
    assert total_pnl == pytest.approx(trades.net_pips.sum())
    assert (trades.accumulated_drawdown >= 0).all()


def test_random_starts_fit_the_range_and_repeat_with_a_seed():
    env = make_env(np.arange(1000.0), num_envs=64, window=64, length=360)
    env.reset(seed=3, low=100, high=800)
    first = env.start.copy()
    assert first.min() >= 100 + 63 and first.max() + 360 <= 800 - 1
    env.reset(seed=3, low=100, high=800)
    np.testing.assert_array_equal(env.start, first)
    with pytest.raises(ValueError, match="too few"):
        env.reset(low=0, high=300)


def test_chunks_of_different_lengths_finish_independently():
    env = make_env(np.arange(100.0) + 100, num_envs=2, window=4)
    env.reset(starts=np.array([3, 40]), lengths=np.array([2, 5]))
    for k in range(5):
        result = env.step(np.array([B_ if k == 0 else H, B_ if k == 0 else H]))
    assert result.done.all()
    trades = env.trades()
    np.testing.assert_array_equal(trades.env, [0, 1])
    np.testing.assert_allclose(trades.net_pips, [2 - 1, 5 - 1])


def test_bad_actions_are_refused():
    env = make_env(np.arange(20.0), num_envs=2)
    env.reset(starts=np.array([2, 3]), lengths=np.array([3, 3]))
    with pytest.raises(ValueError, match="expected 2 actions"):
        env.step(np.array([0]))
    with pytest.raises(ValueError, match="integers in 0..3"):
        env.step(np.array([0, 7]))
