"""Trading metrics for backtests (ARCHITECTURE.md §8).

All money amounts are in **pips, net of spread costs**. Two inputs are used:

* ``trade_pips`` — net pips of each closed trade, chronological (trade metrics);
* ``bar_pnl``   — the strategy's per-bar P&L in pips (mark-to-market change net of
  costs, one value per decision bar, 0 on flat bars) — equity-curve metrics.

``trade_amddp1`` (optional) is the per-trade AMDDP1 computed by the environment
(= net pips − 0.01 × accumulated drawdown of the trade, §3).

Definitions (N = number of trades, x = trade_pips; r = bar_pnl, n = number of bars;
"None" means *undefined* and is what the field holds in that case):

==========================  ===========================================================
field                       definition
==========================  ===========================================================
trades                      N
wins / losses               #{x > ε} / #{x < -ε}, ε = 1e-9 pips (a break-even trade is neither:
                            float rounding of prices must not make it a loss)
win_rate                    wins / N  (fraction, not %); None if N = 0
expectancy                  mean(x) (pips per trade); None if N = 0
avg_win / avg_loss          mean of the winning / losing trades (avg_loss < 0);
                            None if there are none
best_trade / worst_trade    max(x) / min(x); None if N = 0
total_pips                  sum(x) (0.0 if N = 0)
gross_profit                sum of the wins  (≥ 0; 0.0 if none)
gross_loss                  sum of the losses  (≤ 0, i.e. reported as a negative number)
profit_factor               gross_profit / |gross_loss|; ``float('inf')`` when there are
                            wins and no losses; 0.0 with losses and no wins; None when
                            N = 0 or when every trade breaks even
sqn                         Van Tharp's System Quality Number:
                            sqrt(min(N, 100)) · mean(x) / std(x, ddof=1);
                            None if N < 2 or std = 0 (all trades equal).
                            (backtesting.py uses sqrt(N) with no cap: identical for
                            N ≤ 100.)
amddp1_total                sum(trade_amddp1); None if trade_amddp1 not given
amddp1_per_trade            amddp1_total / N; None if not given or N = 0
bars                        n
max_drawdown_pips           equity E_0 = 0, E_k = r_1 + … + r_k (k = 1..n);
                            max_k (max_{j≤k} E_j − E_k), a positive number (0.0 if the
                            equity never falls below a previous peak or n = 0).
                            E_0 = 0 counts as a peak, so a first losing bar is a drawdown.
max_drawdown_duration_bars  longest drawdown, in bars: for a peak at E_p (E_p ≥ all
                            earlier E_j), the drawdown lasts from bar p+1 to the first
                            bar q > p with E_q ≥ E_p (the recovery bar, *included*), or to
                            the last bar n when it never recovers; duration = q − p
                            (resp. n − p). 0 if there is no drawdown.
                            This is backtesting.py's "Max. Drawdown Duration" in bars
                            (index[recovery] − index[peak]). One difference: backtesting.py
                            ignores a drawdown that consists only of the very last bar
                            (a quirk of its implementation); here it counts as 1.
sharpe                      mean(r) / std(r, ddof=1) · sqrt(bars_per_year);
                            None if n < 2 or std = 0 (constant r, e.g. always flat).
sortino                     mean(r) / DD · sqrt(bars_per_year) with the downside deviation
                            DD = sqrt(mean(min(r, 0)²)) over ALL n bars (target 0);
                            None if n < 2 or DD = 0 (no losing bar).
psr                         Probabilistic Sharpe Ratio (Bailey & López de Prado 2012)
                            against SR* = 0:
                            Φ( (SR − SR*)·sqrt(n − 1) / sqrt(1 − γ3·SR + (γ4 − 1)/4·SR²) )
                            with SR = mean(r)/std(r, ddof=1) the per-bar, NON-annualised
                            Sharpe, and γ3 (skewness), γ4 (kurtosis, NOT excess; normal
                            = 3) the population moments of r (biased estimators:
                            m_k = mean((r − mean r)^k), γ3 = m3/m2^1.5, γ4 = m4/m2²).
                            None where SR is undefined or the radicand is ≤ 0.
deflated_sharpe             Deflated Sharpe Ratio (Bailey & López de Prado 2014): the PSR
                            with SR* = sqrt(V)·((1 − γ)·Φ⁻¹(1 − 1/K) + γ·Φ⁻¹(1 − 1/(K·e))),
                            γ = 0.5772156649 (Euler–Mascheroni), K = n_trials,
                            V = trials_sharpe_variance (variance across trials of the
                            per-bar, non-annualised Sharpe). K = 1 gives SR* = 0, so
                            DSR = PSR. If K > 1 and V is not given, V is approximated by
                            the variance of the SR estimator itself,
                            V = (1 − γ3·SR + (γ4 − 1)/4·SR²) / (n − 1).
bars_per_year, n_trials     the inputs, echoed for reporting
==========================  ===========================================================

Annualisation: an FX trading year is 52 weeks × 5 days × 24 h = 6,240 hours, so
``bars_per_year(3600) == 6240`` (H1), 374,400 for M1 and 260 for D1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from shared.jsonsafe import json_safe

__all__ = [
    "FX_TRADING_HOURS_PER_YEAR",
    "TradingMetrics",
    "bars_per_year",
    "compute_metrics",
    "format_metrics_table",
    "probabilistic_sharpe_ratio",
    "deflated_sharpe_benchmark",
]

FX_TRADING_HOURS_PER_YEAR = 52 * 5 * 24  # 6,240 h
EULER_GAMMA = 0.5772156649015329
SQN_TRADE_CAP = 100
_NORMAL = NormalDist()


BREAK_EVEN_PIPS = 1e-9  # |net pips| below this is a break-even trade (price arithmetic rounding)


def bars_per_year(bar_seconds: float) -> float:
    """Bars in an FX trading year of 52 weeks × 5 days × 24 h = 6,240 hours.

    ``bars_per_year(3600) == 6240.0`` (H1), ``bars_per_year(60) == 374400.0`` (M1),
    ``bars_per_year(86400) == 260.0`` (D1).
    """
    if not (math.isfinite(bar_seconds) and bar_seconds > 0):
        raise ValueError(f"bar_seconds must be a positive finite number, got {bar_seconds!r}")
    return FX_TRADING_HOURS_PER_YEAR * 3600.0 / bar_seconds


@dataclass(frozen=True)
class TradingMetrics:
    """Metrics of one backtest; every field is defined in this module's docstring table.

    Floats are plain Python floats; undefined values are ``None``;
    ``profit_factor`` may be ``float('inf')``.
    """

    trades: int
    wins: int
    losses: int
    win_rate: float | None
    expectancy: float | None
    avg_win: float | None
    avg_loss: float | None
    best_trade: float | None
    worst_trade: float | None
    total_pips: float
    gross_profit: float
    gross_loss: float
    profit_factor: float | None
    sqn: float | None
    amddp1_total: float | None
    amddp1_per_trade: float | None
    bars: int
    max_drawdown_pips: float
    max_drawdown_duration_bars: int
    sharpe: float | None
    sortino: float | None
    psr: float | None
    deflated_sharpe: float | None
    bars_per_year: float
    n_trials: int

    def as_dict(self) -> dict[str, int | float | str | None]:
        """JSON-friendly dict: NaN → None, ±inf → the strings ``"inf"`` / ``"-inf"``.

        The result passes ``json.dumps(..., allow_nan=False)`` (strict JSON has no
        Infinity; an infinite profit factor is reported as ``"inf"``).
        """
        return {k: json_safe(v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- inputs


def _as_finite_1d(name: str, values) -> np.ndarray:
    """Float64 1-D copy of ``values``; ValueError naming the array and the first bad index."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] is {arr[i]!r}: inputs must be finite (no NaN/inf)")
    return arr


def _all_equal(x: np.ndarray) -> bool:
    """True when every element equals the first (std is then exactly 0)."""
    return bool(np.all(x == x[0]))


# --------------------------------------------------------------------------- trades


def _mean_or_none(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def _profit_factor(gross_profit: float, gross_loss: float, n_trades: int) -> float | None:
    if n_trades == 0:
        return None
    if gross_loss < 0:
        return gross_profit / -gross_loss
    return math.inf if gross_profit > 0 else None


def _sqn(x: np.ndarray) -> float | None:
    if x.size < 2 or _all_equal(x):
        return None
    return math.sqrt(min(x.size, SQN_TRADE_CAP)) * float(x.mean()) / float(x.std(ddof=1))


# --------------------------------------------------------------------------- equity


def equity_curve(bar_pnl: np.ndarray) -> np.ndarray:
    """E_0 = 0, E_k = sum of the first k bar P&Ls; shape [n + 1]."""
    return np.concatenate(([0.0], np.cumsum(bar_pnl)))


def max_drawdown(bar_pnl: np.ndarray) -> tuple[float, int]:
    """(max drawdown in pips ≥ 0, longest drawdown duration in bars), see module table."""
    equity = equity_curve(bar_pnl)
    peak = np.maximum.accumulate(equity)
    drawdown = peak - equity  # exactly 0 where equity is at its running maximum
    at_peak = np.flatnonzero(drawdown == 0.0)  # always contains index 0
    gaps = np.diff(at_peak)
    durations = gaps[gaps > 1]  # peak p → recovery q: q − p bars
    longest = int(durations.max()) if durations.size else 0
    last = equity.size - 1
    if drawdown[last] > 0:  # drawdown still open at the end
        longest = max(longest, int(last - at_peak[-1]))
    return float(drawdown.max()), longest


# --------------------------------------------------------------------------- Sharpe family


def _per_bar_sharpe(r: np.ndarray) -> float | None:
    if r.size < 2 or _all_equal(r):
        return None
    return float(r.mean()) / float(r.std(ddof=1))


def _sortino(r: np.ndarray, annualisation: float) -> float | None:
    if r.size < 2:
        return None
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    if downside == 0.0:
        return None
    return float(r.mean()) / downside * annualisation


def _population_skew_kurtosis(r: np.ndarray) -> tuple[float, float]:
    """(γ3, γ4) from biased central moments; γ4 is plain (not excess) kurtosis."""
    d = r - r.mean()
    m2 = float(np.mean(d**2))
    return float(np.mean(d**3)) / m2**1.5, float(np.mean(d**4)) / m2**2


def _sr_variance_factor(sr: float, skew: float, kurt: float) -> float:
    """1 − γ3·SR + (γ4 − 1)/4·SR² (the PSR radicand, times n − 1 the SR variance)."""
    return 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr * sr


def probabilistic_sharpe_ratio(sr: float, n: int, skew: float, kurt: float, sr_benchmark: float = 0.0) -> float | None:
    """PSR = Φ((SR − SR*)·sqrt(n − 1) / sqrt(1 − γ3·SR + (γ4 − 1)/4·SR²)).

    ``sr`` is per-bar (not annualised), ``kurt`` is non-excess kurtosis.
    None when n < 2 or the radicand is not positive.
    """
    factor = _sr_variance_factor(sr, skew, kurt)
    if n < 2 or not factor > 0.0:
        return None
    return _NORMAL.cdf((sr - sr_benchmark) * math.sqrt(n - 1) / math.sqrt(factor))


def deflated_sharpe_benchmark(n_trials: int, sharpe_variance: float) -> float:
    """SR* = sqrt(V)·((1 − γ)·Φ⁻¹(1 − 1/K) + γ·Φ⁻¹(1 − 1/(K·e))); 0 for K = 1."""
    if n_trials <= 1:
        return 0.0
    z1 = _NORMAL.inv_cdf(1.0 - 1.0 / n_trials)
    z2 = _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    return math.sqrt(sharpe_variance) * ((1.0 - EULER_GAMMA) * z1 + EULER_GAMMA * z2)


def _psr_and_dsr(
    r: np.ndarray, sr: float | None, n_trials: int, trials_sharpe_variance: float | None
) -> tuple[float | None, float | None]:
    if sr is None:
        return None, None
    n = r.size
    skew, kurt = _population_skew_kurtosis(r)
    psr = probabilistic_sharpe_ratio(sr, n, skew, kurt)
    if psr is None or n_trials == 1:
        return psr, psr
    variance = trials_sharpe_variance
    if variance is None:
        variance = _sr_variance_factor(sr, skew, kurt) / (n - 1)
    benchmark = deflated_sharpe_benchmark(n_trials, variance)
    return psr, probabilistic_sharpe_ratio(sr, n, skew, kurt, benchmark)


# --------------------------------------------------------------------------- entry point


def compute_metrics(
    trade_pips,
    bar_pnl,
    bars_per_year: float,
    trade_amddp1=None,
    n_trials: int = 1,
    trials_sharpe_variance: float | None = None,
) -> TradingMetrics:
    """All metrics of the module table from per-trade and per-bar pips.

    Raises ValueError for non-finite or non-1-D inputs (naming the array and index),
    a ``trade_amddp1`` whose length differs from ``trade_pips``, a non-positive
    ``bars_per_year``, ``n_trials < 1`` or a negative ``trials_sharpe_variance``.
    """
    x = _as_finite_1d("trade_pips", trade_pips)
    r = _as_finite_1d("bar_pnl", bar_pnl)
    bpy = float(bars_per_year)
    if not (math.isfinite(bpy) and bpy > 0):
        raise ValueError(f"bars_per_year must be positive and finite, got {bars_per_year!r}")
    if int(n_trials) != n_trials or n_trials < 1:
        raise ValueError(f"n_trials must be an integer ≥ 1, got {n_trials!r}")
    n_trials = int(n_trials)
    if trials_sharpe_variance is not None and not (
        math.isfinite(trials_sharpe_variance) and trials_sharpe_variance >= 0
    ):
        raise ValueError(f"trials_sharpe_variance must be ≥ 0, got {trials_sharpe_variance!r}")

    amddp1_total = amddp1_per_trade = None
    if trade_amddp1 is not None:
        a = _as_finite_1d("trade_amddp1", trade_amddp1)
        if a.size != x.size:
            raise ValueError(f"trade_amddp1 has {a.size} values but trade_pips has {x.size}")
        amddp1_total = float(a.sum())
        amddp1_per_trade = amddp1_total / a.size if a.size else None

    winners, losers = x[x > BREAK_EVEN_PIPS], x[x < -BREAK_EVEN_PIPS]
    gross_profit, gross_loss = float(winners.sum()), float(losers.sum())
    annualisation = math.sqrt(bpy)
    sr = _per_bar_sharpe(r)
    psr, dsr = _psr_and_dsr(r, sr, n_trials, trials_sharpe_variance)
    max_dd, max_dd_bars = max_drawdown(r)

    return TradingMetrics(
        trades=int(x.size),
        wins=int(winners.size),
        losses=int(losers.size),
        win_rate=winners.size / x.size if x.size else None,
        expectancy=_mean_or_none(x),
        avg_win=_mean_or_none(winners),
        avg_loss=_mean_or_none(losers),
        best_trade=float(x.max()) if x.size else None,
        worst_trade=float(x.min()) if x.size else None,
        total_pips=float(x.sum()),
        gross_profit=gross_profit,
        gross_loss=gross_loss,
        profit_factor=_profit_factor(gross_profit, gross_loss, x.size),
        sqn=_sqn(x),
        amddp1_total=amddp1_total,
        amddp1_per_trade=amddp1_per_trade,
        bars=int(r.size),
        max_drawdown_pips=max_dd,
        max_drawdown_duration_bars=max_dd_bars,
        sharpe=None if sr is None else sr * annualisation,
        sortino=_sortino(r, annualisation),
        psr=psr,
        deflated_sharpe=dsr,
        bars_per_year=bpy,
        n_trials=n_trials,
    )


# --------------------------------------------------------------------------- table

# (field, row label, format kind) in display order.
TABLE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("trades", "trades", "int"),
    ("wins", "wins", "int"),
    ("losses", "losses", "int"),
    ("win_rate", "win rate", "ratio3"),
    ("expectancy", "expectancy [pips/trade]", "pips"),
    ("avg_win", "avg win [pips]", "pips"),
    ("avg_loss", "avg loss [pips]", "pips"),
    ("best_trade", "best trade [pips]", "pips"),
    ("worst_trade", "worst trade [pips]", "pips"),
    ("total_pips", "total [pips]", "pips"),
    ("gross_profit", "gross profit [pips]", "pips"),
    ("gross_loss", "gross loss [pips]", "pips"),
    ("profit_factor", "profit factor", "ratio2"),
    ("sqn", "SQN", "ratio2"),
    ("amddp1_total", "AMDDP1 total [pips]", "pips"),
    ("amddp1_per_trade", "AMDDP1 per trade [pips]", "pips"),
    ("bars", "bars", "int"),
    ("max_drawdown_pips", "max drawdown [pips]", "pips"),
    ("max_drawdown_duration_bars", "max drawdown duration [bars]", "int"),
    ("sharpe", "Sharpe (ann.)", "ratio2"),
    ("sortino", "Sortino (ann.)", "ratio2"),
    ("psr", "PSR (SR*=0)", "ratio3"),
    ("deflated_sharpe", "deflated Sharpe", "ratio3"),
    ("n_trials", "trials (for DSR)", "int"),
)
_DECIMALS = {"pips": 1, "ratio2": 2, "ratio3": 3}


def format_value(value, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if kind == "int":
        return str(int(value))
    return f"{value:.{_DECIMALS[kind]}f}"


def format_metrics_table(rows: dict[str, TradingMetrics]) -> str:
    """Plain-text table: one column per named strategy, one row per metric.

    Pips with 1 decimal, ratios with 2–3 decimals, undefined as "—", infinity as
    "inf". The header states the units and the annualisation factor(s) used.
    """
    names = list(rows)
    factors = sorted({m.bars_per_year for m in rows.values()})
    factor_text = ", ".join(f"{f:g}" for f in factors) or "n/a"
    header = (
        "Trading metrics — amounts in pips net of spread; Sharpe/Sortino annualised "
        f"by sqrt(bars_per_year), bars_per_year = {factor_text}; PSR/DSR per bar"
    )
    labels = [label for _, label, _ in TABLE_ROWS]
    cells = [[format_value(getattr(rows[n], field), kind) for n in names] for field, _, kind in TABLE_ROWS]
    label_w = max(len(s) for s in ["metric", *labels])
    col_w = [max([len(n)] + [len(row[j]) for row in cells]) for j, n in enumerate(names)]
    lines = [header, "metric".ljust(label_w) + "".join(f"  {n:>{w}}" for n, w in zip(names, col_w))]
    lines.append("-" * len(lines[-1]))
    for label, row in zip(labels, cells):
        lines.append(label.ljust(label_w) + "".join(f"  {c:>{w}}" for c, w in zip(row, col_w)))
    return "\n".join(lines)
