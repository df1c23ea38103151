"""``microzero evaluate``: a held-out backtest of a checkpoint against the baselines,
written as a self-contained HTML report, trades.csv and metrics.json.

Modules, one job each: ``stats`` (bootstrap interval and verdict), ``checkpoints``
(resolve, load, count trials), ``run`` (the isolated backtests), ``plots`` (PNG
figures), ``report`` (HTML / CSV / JSON files), ``cli`` (the command).
"""
