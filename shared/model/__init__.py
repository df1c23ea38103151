"""Stochastic MuZero networks (ARCHITECTURE.md §4): see networks.py, top to bottom.

Names are resolved lazily so that reading the config (which holds ``ModelConfig``)
does not import torch.
"""

from importlib import import_module

from shared.model.config import ModelConfig

_LAZY = {
    "StochasticMuZeroNet": "networks",
    "TCN": "tcn",
    "h": "support",
    "h_inverse": "support",
    "scalar_to_support": "support",
    "support": "support",
    "support_to_scalar": "support",
}

__all__ = ["ModelConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"shared.model.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'shared.model' has no attribute {name!r}")
