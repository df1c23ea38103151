"""Tests of shared/metrics.py against values worked out by hand (arithmetic in comments)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from shared.metrics import (
    TradingMetrics,
    bars_per_year,
    compute_metrics,
    format_metrics_table,
)

H1 = 6240.0


def approx(x, rel=1e-9, abs=1e-12):
    return pytest.approx(x, rel=rel, abs=abs)


def phi(z: float) -> float:
    """Standard normal cdf via erf (independent of statistics.NormalDist)."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def phi_inv(p: float) -> float:
    """Inverse of phi by bisection (independent of NormalDist.inv_cdf)."""
    lo, hi = -10.0, 10.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if phi(mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def loop_moments(r):
    """Mean, sample std (ddof=1), population skewness and (non-excess) kurtosis by loops."""
    n = len(r)
    mean = 0.0
    for v in r:
        mean += v
    mean /= n
    s2 = s3 = s4 = 0.0
    for v in r:
        d = v - mean
        s2 += d * d
        s3 += d * d * d
        s4 += d * d * d * d
    m2, m3, m4 = s2 / n, s3 / n, s4 / n
    return mean, math.sqrt(s2 / (n - 1)), m3 / m2**1.5, m4 / m2**2


# --------------------------------------------------------------------------- bars per year


def test_bars_per_year_is_6240_hours_over_bar_length():
    assert bars_per_year(3600) == 6240.0  # 52 weeks * 5 days * 24 h
    assert bars_per_year(60) == 374400.0  # 6240 * 60
    assert bars_per_year(86400) == 260.0  # 6240 / 24
    with pytest.raises(ValueError):
        bars_per_year(0)


# --------------------------------------------------------------------------- trade metrics


def test_trade_metrics_by_hand():
    m = compute_metrics([10, -5, 20, -5], [], H1, trade_amddp1=[9.5, -6, 19, -5.5])
    assert (m.trades, m.wins, m.losses) == (4, 2, 2)
    assert m.win_rate == 0.5  # 2 / 4
    assert m.total_pips == 20.0  # 10 - 5 + 20 - 5
    assert m.expectancy == 5.0  # 20 / 4
    assert m.avg_win == 15.0  # (10 + 20) / 2
    assert m.avg_loss == -5.0  # (-5 - 5) / 2
    assert (m.best_trade, m.worst_trade) == (20.0, -5.0)
    assert (m.gross_profit, m.gross_loss) == (30.0, -10.0)
    assert m.profit_factor == 3.0  # 30 / |-10|
    # deviations from 5: 5, -10, 15, -10 -> squares 25 + 100 + 225 + 100 = 450
    # sample variance 450 / 3 = 150; sqn = sqrt(4) * 5 / sqrt(150) = 10 / 12.2474... = 0.81650
    assert m.sqn == approx(10 / math.sqrt(150))
    assert m.sqn == approx(0.8164965809)
    # AMDDP1: 9.5 - 6 + 19 - 5.5 = 17.0; per trade 17 / 4 = 4.25
    assert m.amddp1_total == 17.0
    assert m.amddp1_per_trade == 4.25


def test_sqn_caps_trade_count_at_100():
    pips = [3.0, -1.0] * 200  # N = 400, mean 1
    # deviations +-2 -> sum of squares 400 * 4 = 1600; sample var 1600 / 399
    std = math.sqrt(1600 / 399)
    m = compute_metrics(pips, [], H1)
    assert m.sqn == approx(math.sqrt(100) * 1.0 / std)  # not sqrt(400)
    assert m.sqn == approx(4.993746, rel=1e-6)  # 10 / 2.0025


def test_amddp1_absent_is_none_and_length_checked():
    m = compute_metrics([1, 2], [], H1)
    assert m.amddp1_total is None and m.amddp1_per_trade is None
    with pytest.raises(ValueError, match="trade_amddp1"):
        compute_metrics([1, 2], [], H1, trade_amddp1=[1.0])


def test_no_trades():
    m = compute_metrics([], [], H1, trade_amddp1=[])
    assert (m.trades, m.wins, m.losses, m.bars) == (0, 0, 0, 0)
    for field in (
        "win_rate",
        "expectancy",
        "avg_win",
        "avg_loss",
        "best_trade",
        "worst_trade",
        "profit_factor",
        "sqn",
        "amddp1_per_trade",
        "sharpe",
        "sortino",
        "psr",
        "deflated_sharpe",
    ):
        assert getattr(m, field) is None, field
    assert (m.total_pips, m.gross_profit, m.gross_loss, m.amddp1_total) == (0.0, 0.0, 0.0, 0.0)
    assert (m.max_drawdown_pips, m.max_drawdown_duration_bars) == (0.0, 0)


def test_one_trade():
    m = compute_metrics([7.0], [7.0], H1)
    assert m.trades == 1 and m.win_rate == 1.0 and m.expectancy == 7.0
    assert m.sqn is None  # sample std undefined for N = 1
    assert m.profit_factor == math.inf
    assert m.sharpe is None and m.psr is None  # a single bar


def test_all_wins_profit_factor_inf():
    m = compute_metrics([1.0, 2.0, 3.0], [], H1)
    assert m.profit_factor == math.inf
    assert m.avg_loss is None and m.losses == 0 and m.gross_loss == 0.0
    # mean 2, deviations -1 0 1, sample var 2/2 = 1 -> sqn = sqrt(3) * 2 / 1
    assert m.sqn == approx(2 * math.sqrt(3))
    d = m.as_dict()
    assert d["profit_factor"] == "inf" and d["avg_loss"] is None
    json.dumps(d, allow_nan=False)  # strict JSON


def test_all_losses_and_zero_trades():
    m = compute_metrics([-1.0, -3.0], [], H1)
    assert m.profit_factor == 0.0 and m.avg_win is None and m.win_rate == 0.0
    z = compute_metrics([0.0, 0.0], [], H1)
    assert (z.wins, z.losses, z.win_rate) == (0, 0, 0.0)
    assert z.profit_factor is None  # 0 / 0
    assert z.sqn is None  # std == 0


# --------------------------------------------------------------------------- drawdown


def test_drawdown_hand_drawn_curve():
    pnl = [-2, 1, 3, -1, -1, 0.5, 1.5, 2, -4, 1]
    # equity E0..E10: 0, -2, -1, 2, 1, 0, 0.5, 2, 4, 0, 1
    # peak 0 @0 -> below at bars 1-2, regained at bar 3: duration 3 - 0 = 3, depth 2
    # peak 2 @3 -> below at bars 4-6, regained (== 2) at bar 7: duration 7 - 3 = 4, depth 2
    # peak 4 @8 -> below at bars 9-10 until the end: duration 10 - 8 = 2, depth 4
    m = compute_metrics([], pnl, H1)
    assert m.max_drawdown_pips == 4.0
    assert m.max_drawdown_duration_bars == 4


def test_drawdown_lasting_until_the_end():
    # equity 0, 1, 0, -1, -2, -1.5: peak 1 @1 never regained; bars 2..5 -> 5 - 1 = 4
    m = compute_metrics([], [1, -1, -1, -1, 0.5], H1)
    assert m.max_drawdown_pips == 3.0  # 1 - (-2)
    assert m.max_drawdown_duration_bars == 4


def test_drawdown_from_zero_when_first_bar_loses():
    # equity 0, -3, -2, -1, 0: the starting 0 is a peak; regained at bar 4 -> 4 bars
    m = compute_metrics([], [-3, 1, 1, 1], H1)
    assert m.max_drawdown_pips == 3.0
    assert m.max_drawdown_duration_bars == 4
    # a single losing bar: drawdown of 1 pip lasting 1 bar (to the end)
    one = compute_metrics([], [-1.0], H1)
    assert (one.max_drawdown_pips, one.max_drawdown_duration_bars) == (1.0, 1)


def test_no_drawdown_on_rising_equity():
    m = compute_metrics([], [1, 0, 2, 0.5], H1)
    assert (m.max_drawdown_pips, m.max_drawdown_duration_bars) == (0.0, 0)


# --------------------------------------------------------------------------- Sharpe / Sortino


def test_sharpe_and_sortino_by_hand():
    r = [1, -1, 2, 0]
    # mean 0.5; deviations .5 -1.5 1.5 -.5 -> squares sum 5; sample var 5/3
    # per-bar SR = 0.5 / sqrt(5/3) = 0.3872983; x sqrt(100) = 3.872983
    m = compute_metrics([], r, 100.0)
    assert m.sharpe == approx(0.5 / math.sqrt(5 / 3) * 10)
    assert m.sharpe == approx(3.872983346)
    # downside: min(r, 0) = 0 -1 0 0 -> mean of squares 1/4 -> DD 0.5; 0.5/0.5*10 = 10
    assert m.sortino == approx(10.0)


def test_sharpe_scales_with_sqrt_bars_per_year():
    r = [1, -1, 2, 0, 3, -2]
    h1 = compute_metrics([], r, bars_per_year(3600))
    d1 = compute_metrics([], r, bars_per_year(86400))
    assert h1.sharpe / d1.sharpe == approx(math.sqrt(24))  # sqrt(6240 / 260)
    assert h1.sortino / d1.sortino == approx(math.sqrt(24))
    assert h1.psr == d1.psr  # PSR is per bar, not annualised


def test_all_zero_bar_pnl():
    m = compute_metrics([], [0.0] * 10, H1)
    assert m.sharpe is None and m.sortino is None
    assert m.psr is None and m.deflated_sharpe is None
    assert (m.max_drawdown_pips, m.max_drawdown_duration_bars) == (0.0, 0)


def test_constant_nonzero_bar_pnl():
    up = compute_metrics([], [0.1] * 50, H1)
    assert up.sharpe is None  # std == 0
    assert up.sortino is None  # no downside
    assert up.psr is None
    down = compute_metrics([], [-0.1] * 4, 100.0)
    assert down.sharpe is None
    # downside deviation sqrt(mean(0.01)) = 0.1 -> -0.1 / 0.1 * sqrt(100) = -10
    assert down.sortino == approx(-10.0)
    # equity 0, -.1, -.2, -.3, -.4 -> drawdown 0.4 over 4 bars
    assert down.max_drawdown_pips == approx(0.4)
    assert down.max_drawdown_duration_bars == 4


# --------------------------------------------------------------------------- PSR / DSR


def test_psr_symmetric_example_by_hand():
    r = [-1.0, 1.0, 3.0]
    # mean 1; sample var (4 + 0 + 4) / 2 = 4 -> SR = 1 / 2 = 0.5
    # symmetric -> skew 0; m2 = 8/3, m4 = 32/3 -> kurt = (32/3) / (64/9) = 1.5
    # radicand 1 - 0 + (1.5 - 1)/4 * 0.25 = 1.03125
    # z = 0.5 * sqrt(2) / sqrt(1.03125) = 0.70711 / 1.01550 = 0.696311
    # table: Phi(0.69) = 0.75490, Phi(0.70) = 0.75804 -> 0.75490 + 0.6311 * 0.00314 = 0.75688
    z = 0.5 * math.sqrt(2) / math.sqrt(1.03125)
    m = compute_metrics([], r, H1)
    assert m.psr == approx(phi(z))
    assert m.psr == approx(0.75688, rel=2e-5)
    assert m.deflated_sharpe == m.psr


def test_psr_against_loop_moments():
    r = [3.0, -1.0, 2.0, -2.0, 5.0, 0.0, -1.0, 4.0, -6.0, 1.5, 2.5, 0.5]
    mean, std, skew, kurt = loop_moments(r)
    sr = mean / std
    n = len(r)
    expected = phi(sr * math.sqrt(n - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    m = compute_metrics([], r, H1)
    assert m.psr == approx(expected, rel=1e-9)
    assert m.sharpe == approx(sr * math.sqrt(H1))


def _dsr_expected(r, n_trials, variance):
    mean, std, skew, kurt = loop_moments(r)
    sr = mean / std
    n = len(r)
    radicand = 1 - skew * sr + (kurt - 1) / 4 * sr**2
    if variance is None:
        variance = radicand / (n - 1)
    g = 0.5772156649
    sr_star = math.sqrt(variance) * ((1 - g) * phi_inv(1 - 1 / n_trials) + g * phi_inv(1 - 1 / (n_trials * math.e)))
    return phi((sr - sr_star) * math.sqrt(n - 1) / math.sqrt(radicand))


def test_dsr_equals_psr_for_one_trial_and_is_lower_for_many():
    rng = np.random.default_rng(0)
    r = rng.normal(0.05, 1.0, 500)
    one = compute_metrics([], r, H1, n_trials=1)
    assert one.deflated_sharpe == one.psr
    many = compute_metrics([], r, H1, n_trials=50, trials_sharpe_variance=0.002)
    assert many.psr == one.psr
    assert many.deflated_sharpe < many.psr
    assert many.deflated_sharpe == approx(_dsr_expected(list(r), 50, 0.002), rel=1e-7)
    # more trials -> higher benchmark -> lower DSR
    more = compute_metrics([], r, H1, n_trials=500, trials_sharpe_variance=0.002)
    assert more.deflated_sharpe < many.deflated_sharpe


def test_dsr_default_variance_is_sr_standard_error():
    r = [3.0, -1.0, 2.0, -2.0, 5.0, 0.0, -1.0, 4.0, -6.0, 1.5, 2.5, 0.5]
    m = compute_metrics([], r, H1, n_trials=10)
    assert m.deflated_sharpe < m.psr
    assert m.deflated_sharpe == approx(_dsr_expected(r, 10, None), rel=1e-7)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(trade_pips=[1.0, float("nan")], bar_pnl=[]), r"trade_pips\[1\]"),
        (dict(trade_pips=[], bar_pnl=[0.0, 1.0, float("nan")]), r"bar_pnl\[2\]"),
        (dict(trade_pips=[1.0], bar_pnl=[], trade_amddp1=[float("nan")]), r"trade_amddp1\[0\]"),
        (dict(trade_pips=[], bar_pnl=[float("inf")]), r"bar_pnl\[0\]"),
    ],
)
def test_non_finite_inputs_raise_naming_array_and_index(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        compute_metrics(bars_per_year=H1, **kwargs)


def test_bad_parameters_raise():
    with pytest.raises(ValueError):
        compute_metrics([], [], 0.0)
    with pytest.raises(ValueError):
        compute_metrics([], [], H1, n_trials=0)
    with pytest.raises(ValueError):
        compute_metrics([], [], H1, n_trials=3, trials_sharpe_variance=-1.0)
    with pytest.raises(ValueError):
        compute_metrics([[1.0]], [], H1)


# --------------------------------------------------------------------------- output


def test_as_dict_is_json_friendly_and_frozen():
    m = compute_metrics([10, -5, 20, -5], [10, -5, 20, -5], H1)
    d = m.as_dict()
    assert set(d) == {f.name for f in dataclasses.fields(TradingMetrics)}
    assert all(type(v) in (int, float, str, type(None)) for v in d.values())
    json.dumps(d, allow_nan=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.trades = 3  # type: ignore[misc]
    nan_field = dataclasses.replace(m, sharpe=float("nan"))
    assert nan_field.as_dict()["sharpe"] is None


def test_format_metrics_table():
    rows = {
        "agent": compute_metrics([10, -5, 20, -5], [10, -5, 20, -5], H1, trade_amddp1=[9, -6, 19, -6]),
        "flat": compute_metrics([], [0.0] * 4, H1),
        "buy_hold": compute_metrics([3.0], [1.0, 1.0, 1.0], H1),
    }
    text = format_metrics_table(rows)
    lines = text.splitlines()
    assert "pips" in lines[0] and "6240" in lines[0]
    assert all(name in lines[1] for name in rows)
    table = {line[:30].strip(): line[30:].split() for line in lines[3:]}
    assert table["trades"] == ["4", "0", "1"]
    assert table["total [pips]"] == ["20.0", "0.0", "3.0"]
    assert table["win rate"] == ["0.500", "—", "1.000"]
    assert table["profit factor"] == ["3.00", "—", "inf"]
    assert table["SQN"] == ["0.82", "—", "—"]
    assert table["max drawdown [pips]"] == ["5.0", "0.0", "0.0"]
    assert table["AMDDP1 total [pips]"] == ["16.0", "—", "—"]
