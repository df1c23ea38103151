"""Stochastic MuZero networks (ARCHITECTURE.md §4): see networks.py, top to bottom."""

from shared.model.config import ModelConfig
from shared.model.networks import SearchModel, StochasticMuZeroNet
from shared.model.support import h, h_inverse, scalar_to_support, support, support_to_scalar
from shared.model.tcn import TCN

__all__ = [
    "ModelConfig",
    "SearchModel",
    "StochasticMuZeroNet",
    "TCN",
    "h",
    "h_inverse",
    "scalar_to_support",
    "support",
    "support_to_scalar",
]
