"""The trading environment: vectorised (``VecTradingEnv``) and as a ``gymnasium.Env``."""

from shared.env.vector import NUM_POSITION_FEATURES, StepResult, Trades, VecTradingEnv

__all__ = ["NUM_POSITION_FEATURES", "StepResult", "Trades", "VecTradingEnv"]
