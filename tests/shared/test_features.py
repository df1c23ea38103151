import numpy as np
import pytest

from shared.data.bars import Bars
from shared.features import FEATURE_NAMES, compute_features, time_features, warmup_bars


def _bars(close, start="2017-01-02T00:00", step_minutes=60):
    close = np.asarray(close, dtype=np.float64)
    ts = np.datetime64(start, "ns") + np.arange(len(close)) * np.timedelta64(step_minutes, "m")
    return Bars.from_arrays(ts, close, close, close, close)


def test_hand_computed_values_with_lookback_3():
    # L = 3, so rows t >= 2L-1 = 5 survive the warm-up. Integer prices keep the
    # arithmetic exact (pip = 1).
    close = [10, 12, 11, 15, 13, 14, 18, 16]
    f = compute_features(_bars(close), pip=1.0, lookback=3)
    assert f.shape == (3, 9)
    # 0: position in the 3-bar range: t5 [15,13,14] -> (14-13)/2; t6 [13,14,18] -> 5/5;
    #    t7 [14,18,16] -> 2/4
    np.testing.assert_allclose(f[:, 0], [0.5, 1.0, 0.5])
    # m3 = close - close[t-3]: t3 5, t4 1, t5 3, t6 3, t7 3.
    # 1: t5 window [5,1,3] -> (3-1)/4; t6 [1,3,3] -> 2/2; t7 [3,3,3] flat -> 0.5
    np.testing.assert_allclose(f[:, 1], [0.5, 1.0, 0.5])
    # rr = max3 - min3: t2 2, t3 4, t4 4, t5 2, t6 5, t7 4.
    # 2: t5 window [4,4,2] -> 0; t6 [4,2,5] -> 3/3; t7 [2,5,4] -> 2/3
    np.testing.assert_allclose(f[:, 2], [0.0, 1.0, 2 / 3])
    # m5 = close - close[t-5]: t5 4, t6 6, t7 5, placed in m3's window range:
    # t5 [1,5] -> 3/4; t6 [1,3] -> 5/2 clipped to 1; t7 [3,3] flat -> 0.5
    np.testing.assert_allclose(f[:, 3], [0.75, 1.0, 0.5])
    # 4: tanh(change / pip / 10): +1, +4, -2
    np.testing.assert_allclose(f[:, 4], np.tanh([0.1, 0.4, -0.2]))


def test_time_features_follow_the_fx_week_and_the_clock():
    ts = np.array(
        ["2017-01-01T22:00", "2017-01-04T22:00", "2017-01-06T06:30", "2017-01-06T21:00"], dtype="datetime64[ns]"
    )
    f = time_features(ts)
    # Sunday 22:00 UTC opens the FX week: h = 0. Wednesday 22:00: h = 72.
    # Friday 06:30: h = 4 days 8.5 h = 104.5. Friday 21:00: h = 119.
    hours = np.array([0.0, 72.0, 104.5, 119.0])
    np.testing.assert_allclose(f[:, 0], np.cos(2 * np.pi * hours / 120), atol=1e-12)
    np.testing.assert_allclose(f[:, 1], np.sin(2 * np.pi * hours / 120), atol=1e-12)
    clock = np.array([22.0, 22.0, 6.5, 21.0])
    np.testing.assert_allclose(f[:, 2], np.cos(2 * np.pi * clock / 24), atol=1e-12)
    np.testing.assert_allclose(f[:, 3], np.sin(2 * np.pi * clock / 24), atol=1e-12)


def test_features_are_causal():
    rng = np.random.default_rng(0)
    close = 1.1 + np.cumsum(rng.normal(0, 0.001, 600))
    base = compute_features(_bars(close), pip=1e-4, lookback=60)
    offset = warmup_bars(60)
    for t in (offset, 250, 599):
        changed = close.copy()
        changed[t + 1 :] *= rng.uniform(0.9, 1.1, size=len(close) - t - 1)
        after = compute_features(_bars(changed), pip=1e-4, lookback=60)
        np.testing.assert_array_equal(after[: t - offset + 1], base[: t - offset + 1])
        if t + 1 < len(close):
            assert not np.array_equal(after[t - offset + 1 :], base[t - offset + 1 :])


def test_warmup_rows_are_dropped_not_zero_filled():
    close = 1.1 + np.cumsum(np.random.default_rng(1).normal(0, 0.001, 300))
    full = compute_features(_bars(close), pip=1e-4, lookback=60, drop_warmup=False)
    dropped = compute_features(_bars(close), pip=1e-4, lookback=60)
    assert len(dropped) == 300 - 119 and not np.isnan(dropped).any()
    assert np.isnan(full[118]).any() and not np.isnan(full[119]).any()
    np.testing.assert_array_equal(full[119:], dropped)


@pytest.mark.parametrize("pip", [1e-4, 1e-2])
def test_price_change_uses_the_pip_of_the_symbol(pip):
    close = np.full(130, 100.0)
    close[-1] += 5 * pip  # a 5-pip move on the last bar
    f = compute_features(_bars(close), pip=pip, lookback=60)
    assert f[-1, 4] == pytest.approx(np.tanh(0.5))
    assert len(FEATURE_NAMES) == f.shape[1]
