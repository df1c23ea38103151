"""The quality score of a validated checkpoint: THE definition (ARCHITECTURE §8)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from shared.config import Config, PipelineConfig
from shared.metrics import TradingMetrics


def quality_score(metrics: TradingMetrics | Mapping[str, Any], config: Config | PipelineConfig) -> float:
    """The quality score of a validated checkpoint; higher is better. THE definition.

    ``score = score_sqn_weight * SQN + score_amddp1_weight * AMDDP1_per_trade / 10``

    * SQN — Van Tharp's System Quality Number of the trades (``TradingMetrics.sqn``:
      sqrt(min(N, 100)) * mean / std of the net pips per trade);
    * AMDDP1 per trade — mean net pips per trade minus 0.01 x the drawdown accumulated
      during the trade (``TradingMetrics.amddp1_per_trade``); divided by 10 so that
      a few pips per trade weigh about as much as one unit of SQN.
    * No trades -> ``-inf``: a checkpoint that never trades is never the best.
    * With trades, an undefined SQN (one trade, or all trades equal) counts as 0, and so
      does an undefined AMDDP1 per trade.

    The weights are ``pipeline.score_sqn_weight`` / ``pipeline.score_amddp1_weight``
    (both 1.0 by default). `metrics` is a :class:`TradingMetrics` or its ``as_dict()``
    (where infinities are the strings "inf"/"-inf").
    """
    pipe = config.pipeline if isinstance(config, Config) else config
    values = metrics.as_dict() if isinstance(metrics, TradingMetrics) else metrics
    trades = int(values.get("trades") or 0)
    if trades <= 0:
        return -math.inf
    sqn = _number(values.get("sqn"))
    amddp1 = _number(values.get("amddp1_per_trade"))
    return pipe.score_sqn_weight * sqn + pipe.score_amddp1_weight * amddp1 / 10.0


def _number(value: Any) -> float:
    """A metric as a float; undefined (None/NaN) -> 0."""
    if value is None:
        return 0.0
    value = float(value)  # also parses "inf" / "-inf"
    return 0.0 if math.isnan(value) else value
